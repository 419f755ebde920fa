"""The pre-trained demo model shipped with the package: made by the current demo recipe, and a model that learned."""

from __future__ import annotations

import shutil

from gslora.cli import BUNDLED_DIR, demo_checkpoint_name, demo_checkpoint_source
from gslora.config import PretrainConfig, from_dict
from gslora.data import load_data
from gslora.evaluate import accuracy, class_counts
from gslora.models import load_checkpoint, read_sidecar
from gslora.presets import demo_preset


def _current_name() -> str:
    demo = demo_preset()
    return demo_checkpoint_name(demo["model"], from_dict(PretrainConfig, demo["pretrain"], where="demo pretrain"))


def test_the_bundled_demo_model_is_the_current_recipes():
    # a changed pre-training recipe (configs/demo.yaml, PretrainConfig defaults, the version) changes the name: the
    # bundled file must then be made again with `gslora demo --retrain` and copied to src/gslora/pretrained/
    name = _current_name()
    assert (BUNDLED_DIR / name).is_file(), f"no bundled demo model {name}: run `gslora demo --retrain` and copy it"
    assert sorted(p.name for p in BUNDLED_DIR.glob("*.safetensors")) == [name]  # no stale copies shipped


def test_the_bundled_demo_model_learned_the_bundled_faces():
    demo = demo_preset()
    path = BUNDLED_DIR / _current_name()
    model, meta = load_checkpoint(path)
    assert meta["model"]["arch"] == demo["model"]
    pre = read_sidecar(path)["pretrain"]
    assert pre["learned"] and pre["test_acc"] >= 90.0
    data = load_data("faces", image_size=model.image_size, seed=1337)
    assert meta["classes"] == data.classes
    correct, total = class_counts(model.eval(), data.test, data.num_classes)
    acc = accuracy(correct, total, range(data.num_classes))
    assert abs(acc - pre["test_acc"]) <= 0.5  # what its sidecar says, on this machine's kernels


def test_demo_checkpoint_source_prefers_the_cache(tmp_path):
    name = _current_name()
    cache, bundled = tmp_path / "cache", tmp_path / "bundled"
    cache.mkdir()
    bundled.mkdir()
    assert demo_checkpoint_source(name, cache, bundled) is None  # nothing anywhere: pre-train
    for suffix in (".safetensors", ".json"):
        shutil.copy(BUNDLED_DIR / name.replace(".safetensors", suffix), bundled)
    assert demo_checkpoint_source(name, cache, bundled) == bundled / name
    shutil.copy(BUNDLED_DIR / name, cache)  # weights without their sidecar are not a checkpoint
    assert demo_checkpoint_source(name, cache, bundled) == bundled / name
    shutil.copy(BUNDLED_DIR / name.replace(".safetensors", ".json"), cache)
    assert demo_checkpoint_source(name, cache, bundled) == cache / name
    assert demo_checkpoint_source("demo-other-000000000000.safetensors", cache, bundled) is None
