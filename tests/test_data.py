"""Task plans, subsets and data sources."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from gslora.data import load_data, make_plan, select_per_class
from gslora.data.plan import default_class_order
from gslora.errors import GsloraError

NAMES = [f"c{i}" for i in range(100)]


def test_default_order_is_the_authors_shuffle():
    expected = list(range(100))
    state = random.getstate()
    try:
        random.seed(1337)
        random.shuffle(expected)  # what the authors' scripts do
    finally:
        random.setstate(state)
    assert default_class_order(100, 1337) == expected


def test_continual_plan_forgets_backwards_through_the_order():
    plan = make_plan(NAMES, "4x20", seed=1337)
    order = plan.class_order
    for i, task in enumerate(plan.tasks):
        assert task.index == i + 1
        assert set(task.forget) == set(order[80 - 20 * i : 100 - 20 * i])
        assert set(task.remain) == set(order[: 80 - 20 * i])
        assert set(task.old) == set(order[100 - 20 * i :])
    assert make_plan(NAMES, "4x20", seed=1337).to_dict() == plan.to_dict()  # same seed, same plan
    assert make_plan(NAMES, "4x20", seed=1).class_order != order


def test_single_step_and_explicit_plans():
    single = make_plan(NAMES, "1x10")
    assert len(single.tasks) == 1 and len(single.tasks[0].forget) == 10 and len(single.tasks[0].remain) == 90
    explicit = make_plan(NAMES, [["c3", 5], ["c7"]])
    assert explicit.tasks[0].forget == (3, 5) and explicit.tasks[1].forget == (7,)
    assert explicit.tasks[1].old == (3, 5) and 3 not in explicit.tasks[1].remain
    assert make_plan(NAMES, "c1,c2;c3").tasks[1].forget == (3,)


def test_subsets_are_seeded_per_class_and_never_empty():
    targets = [c for c in range(5) for _ in range(12)] + [5]  # class 5 has one image
    sub = select_per_class(targets, range(6), seed=1, ratio=0.1)
    counts = {c: sum(1 for i in sub if targets[i] == c) for c in range(6)}
    assert counts == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert select_per_class(targets, range(6), seed=1, ratio=0.5) != select_per_class(targets, range(6), seed=2,
                                                                                        ratio=0.5)
    half = select_per_class(targets, [0, 1], seed=1, ratio=0.5)
    assert len(half) == 12 and half == select_per_class(targets, [0, 1], seed=1, ratio=0.5)
    shots = select_per_class(targets, [0, 5], seed=1, shots=4)
    assert sum(targets[i] == 0 for i in shots) == 4 and sum(targets[i] == 5 for i in shots) == 1
    # a class keeps the same images whatever other classes are asked for
    assert [i for i in select_per_class(targets, [0, 1, 2], seed=1, ratio=0.25) if targets[i] == 1] == [
        i for i in select_per_class(targets, [1], seed=1, ratio=0.25)]


def test_bundled_faces_are_deterministic_and_shaped(micro_data):
    assert micro_data.num_classes == 20
    x, y = micro_data.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    from gslora.data.faces import bundled_faces

    again = bundled_faces(image_size=16, seed=3, views={"train": 30, "val": 4, "test": 8}, num_faces=20)
    assert torch.equal(again.train.images, micro_data.train.images)
    assert not torch.equal(again.test.images[:8], again.train.images[:8])  # different views per split


def test_one_root_folder_is_split_per_class(tmp_path):
    for c in ("alice", "bob"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.new("L", (30, 20), color=i * 20).save(tmp_path / c / f"{i}.pgm")
    data = load_data(str(tmp_path), image_size=8, seed=1, split_ratio=0.7, val_ratio=0.2)
    assert data.classes == ["alice", "bob"]
    assert len(data.train) + len(data.val) == 14 and len(data.test) == 6
    assert len(data.val) == 2  # round(0.2 * 7) per class, at least 1
    x, y = data.test[0]
    assert x.shape == (3, 8, 8)  # grey became 3 channels and was resized
    assert torch.equal(x[0], x[1])
    train_paths = set(data.train.paths) | set(data.val.paths)
    assert not train_paths & set(data.test.paths)


def test_decoded_images_are_cached_within_the_budget(tmp_path, monkeypatch):
    from gslora.data import folder

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    monkeypatch.setattr(folder, "DECODED", folder._DecodedCache())
    monkeypatch.setenv("GSLORA_IMAGE_CACHE_MB", str(2 * 3 * 8 * 8 / 2**20))  # room for two 8 px images
    first = [folder.load_image(p, 8) for p in paths]
    assert len(folder.DECODED.images) == 2 and folder.DECODED.nbytes == 2 * 3 * 8 * 8
    for p, x in zip(paths, first):  # a cached read equals a fresh decode, and hands out its own tensor
        fresh = folder._decode(p, 8, None).float().div_(255.0)
        again = folder.load_image(p, 8)
        assert torch.equal(again, fresh) and torch.equal(x, fresh)
        again.zero_()
        assert torch.equal(folder.load_image(p, 8), fresh)
    assert not torch.equal(folder.load_image(paths[0], 8, {"resize": 12, "crop": 8}), first[0])  # policy in the key
    monkeypatch.setenv("GSLORA_IMAGE_CACHE_MB", "0")
    folder.DECODED.clear()
    folder.load_image(paths[0], 8)
    assert folder.DECODED.nbytes == 0
    monkeypatch.setenv("GSLORA_IMAGE_CACHE_MB", "lots")
    with pytest.raises(GsloraError, match="GSLORA_IMAGE_CACHE_MB"):
        folder.load_image(paths[1], 8)


def test_folder_test_class_without_train_folder_is_an_error(tmp_path):
    for split, c in (("train", "a"), ("test", "a"), ("test", "b")):
        (tmp_path / split / c).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / split / c / "x.png")
    with pytest.raises(GsloraError, match="test class 'b'"):
        load_data(str(tmp_path), image_size=4)


def test_config_reads_numbers_without_a_dot_and_rejects_words(tmp_path):
    from gslora.presets import load_run_config

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("lr: 3e-3\nmethod_args:\n  bound: 60\n")
    cfg = load_run_config(cfg_file, ["min_lr=1e-6"])
    assert cfg.lr == 0.003 and cfg.min_lr == 1e-6 and cfg.method_args == {"bound": 60}
    with pytest.raises(GsloraError, match="lr must be a number"):
        load_run_config(None, ["lr=fast"])
