"""Shared fixtures: a micro face ViT pre-trained in seconds on 20 of the bundled faces."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from gslora.data.faces import bundled_faces
from gslora.models import create_model, save_checkpoint
from gslora.pretrain import PretrainConfig, pretrain

torch.set_num_threads(1)  # tiny models gain nothing from more threads; avoids oversubscribing shared cores

NUM_FACES = 20


@pytest.fixture(scope="session")
def micro_data():
    """20 classes, 30 train / 4 val / 8 test views each, 16 px."""
    return bundled_faces(image_size=16, seed=3, views={"train": 30, "val": 4, "test": 8}, num_faces=NUM_FACES)


@pytest.fixture(scope="session")
def _micro_pretrained(micro_data):
    torch.manual_seed(0)
    model = create_model("vit_face_micro", micro_data.num_classes)
    stats = pretrain(model, micro_data, PretrainConfig(epochs=40, batch_size=32, lr=3e-3, warmup_epochs=3,
                                                       device="cpu"))
    return model, stats


@pytest.fixture()
def micro_model(_micro_pretrained):
    """A fresh copy of the pre-trained micro model (tests may modify it)."""
    return copy.deepcopy(_micro_pretrained[0])


@pytest.fixture(scope="session")
def micro_stats(_micro_pretrained):
    return _micro_pretrained[1]


@pytest.fixture()
def micro_checkpoint(tmp_path, micro_model, micro_data):
    return save_checkpoint(micro_model, tmp_path / "micro.safetensors", micro_data.classes)


@pytest.fixture()
def micro_folder(tmp_path, micro_data):
    """The micro data written as an image folder with train/ and test/ (a few images per class)."""
    root = tmp_path / "faces"
    for split, ds, per_class in (("train", micro_data.train, 6), ("test", micro_data.test, 3)):
        seen = {}
        for i, t in enumerate(ds.targets):
            if seen.get(t, 0) >= per_class:
                continue
            seen[t] = seen.get(t, 0) + 1
            img = (ds[i][0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            d = root / split / ds.classes[t]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def _strict_comparisons(monkeypatch):
    """Every comparison and tuning in the tests runs strict: a method that raises stops the test (a bug in the code
    is not a "failed" row). A test of the failure handling passes ``strict=False``."""
    from gslora import compare, tune

    for fn in (compare.run_comparison, tune.run_tuning):
        assert fn.__code__.co_varnames[fn.__code__.co_argcount - 1] == "strict"  # the last parameter
        monkeypatch.setattr(fn, "__defaults__", (*fn.__defaults__[:-1], True))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own gslora cache (demo models, retrained references): nothing is read from or written to
    the user's ~/.cache, and no test sees another's cached files."""
    monkeypatch.setenv("GSLORA_CACHE", str(tmp_path_factory.mktemp("gslora-cache")))
