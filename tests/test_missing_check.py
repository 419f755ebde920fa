"""The missing-class check of the ImageNet-100 protocol: a head cut with --head-subset, images of the classes cut
away scored with the original full head before and after each task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gslora import RunConfig, run_forgetting
from gslora.errors import GsloraError
from gslora.missing import NO_FOLDER, NO_SUBSET
from gslora.models import create_model
from gslora.models.importers import align_classes, full_head, import_model

SIZE = 16
ALL = ["a", "b", "c", "d", "e", "f"]  # the original 6-way head
SUBSET, CUT = ALL[:4], ALL[4:]  # the data's 4 classes; the 2 cut away
RUN = dict(tasks="a;b", max_steps=2, eval_every=0, target="", max_trials=1, batch_size=4, replay_ratio=1.0,
           device="cpu", save_adapters=False)


def _write_images(root, classes, per_class, seed, look_like=None):
    """Per class a base colour plus noise (so each class is a cluster of embeddings), non-square PNGs;
    ``look_like[c] = (other, n)``: the last n images of c have the colour of class ``other``."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        other, n_other = (look_like or {}).get(c, (c, 0))
        for i in range(per_class):
            j = ALL.index(other if i >= per_class - n_other else c)
            base = np.array([(37 * j) % 256, (91 * j + 40) % 256, (151 * j) % 256])
            img = np.clip(base + rng.normal(0, 40, (20, 18, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{k}-{i}.png")


def _pixels(paths):
    """The images as the run loads them for a model without a preprocessor config: straight bilinear resize."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An HF ViT with a 6-way head whose rows are its classes' mean embeddings (so the full head recognises the cut
    classes), the 4-class data folder and a folder of the 2 other classes."""
    import transformers

    root = tmp_path_factory.mktemp("missing")
    for split, n, seed in (("train", 6, 0), ("test", 3, 1)):
        _write_images(root / "data" / split, SUBSET, n, seed)
    _write_images(root / "missing", CUT, 5, 2, look_like={"f": ("a", 2)})  # 2 images of f look like a
    conf = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=SIZE, patch_size=4, num_labels=6, id2label=dict(enumerate(ALL)),
                                  label2id={c: i for i, c in enumerate(ALL)})
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(conf).eval()
    classifier = hf.classifier
    hf.classifier = torch.nn.Identity()
    with torch.no_grad():
        for i, c in enumerate(ALL):
            files = sorted((root / ("missing" if c in CUT else "data/train") / c).iterdir())
            emb = hf(pixel_values=_pixels(files[:3])).logits  # f's rows from its own-looking images
            classifier.weight[i] = 3 * torch.nn.functional.normalize(emb.mean(0), dim=0)
        classifier.bias.zero_()
    hf.classifier = classifier
    hf.save_pretrained(root / "hf")
    paths = sorted((root / "missing").glob("*/*.png"))
    labels = torch.tensor([ALL.index(p.parent.name) for p in paths])
    with torch.no_grad():  # the original, uncut model on the missing-class images, computed by transformers
        pred = hf(pixel_values=_pixels(paths)).logits.argmax(-1)
    return {"root": root, "hf": hf, "paths": paths, "labels": labels, "acc": 100.0 * (pred == labels).float().mean()}


def _cut_model(setup):
    model, names = import_model(setup["root"] / "hf")
    classes, _ = align_classes(model, names, SUBSET, head_subset=True)
    return model, classes


def test_missing_check_before_and_after_each_task_via_the_cli(setup, tmp_path, capsys):
    from gslora.cli import main
    from gslora.data import load_data
    from gslora.models import load_checkpoint

    assert setup["acc"] == pytest.approx(80.0)  # the full head knows the cut classes; 2 images look like class a
    out = tmp_path / "run"
    args = ["forget", "--checkpoint", setup["root"] / "hf", "--data", setup["root"] / "data", "--head-subset",
            "--missing-check-data", setup["root"] / "missing", "--tasks", "a;b", "--out", out, "--no-progress",
            "--device", "cpu"] + [a for k in ("max_steps=2", "eval_every=0", "target=", "max_trials=1",
                                              "batch_size=4", "replay_ratio=1.0") for a in ("--set", k)]
    code = main([str(a) for a in args])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    check = results["missing_check"]
    assert check["images"] == len(setup["paths"]) == 10 and check["classes"] == 2 and check["head_classes"] == 6
    assert check["before"]["acc"] == pytest.approx(float(setup["acc"]))  # = the uncut model, by transformers
    assert [r["missing_check"]["images"] for r in results["tasks"]] == [10, 10]
    for r in results["tasks"]:
        assert r["missing_check"]["change"] == pytest.approx(r["missing_check"]["acc"] - check["before"]["acc"])
    # after the last task: the final backbone under the original classifier, computed apart from gslora's check
    final, _ = load_checkpoint(out / "final.safetensors")
    final.eval()
    with torch.no_grad():
        logits = final.backbone(_pixels(setup["paths"])) @ setup["hf"].classifier.weight.T + setup["hf"].classifier.bias
    acc = 100.0 * float((logits.argmax(-1) == setup["labels"]).float().mean())
    assert results["tasks"][-1]["missing_check"]["acc"] == pytest.approx(acc)
    md = (out / "results.md").read_text()
    assert "Missing-class check: 10 images of 2 classes" in md and "after task 2" in md
    assert "missing_check_acc" in (out / "results.csv").read_text().splitlines()[0]
    # the run's data is the 4 subset classes; the model's head is cut to them
    assert load_data(str(setup["root"] / "data"), SIZE).classes == SUBSET and final.config["num_classes"] == 4


def test_missing_check_is_skipped_without_a_folder(setup, micro_model, micro_data):
    model, classes = _cut_model(setup)
    from gslora.data import load_data

    data = load_data(str(setup["root"] / "data"), SIZE)
    res = run_forgetting(model, classes, data, RunConfig(**RUN))
    assert res.results["missing_check"] == {"skipped": NO_FOLDER}
    assert all("missing_check" not in r for r in res.rows)
    from gslora.report import results_markdown

    assert f"Missing-class check: skipped ({NO_FOLDER})" in results_markdown(res.results)
    # a model whose head was not cut: the check does not apply, and results.md does not mention it
    res = run_forgetting(micro_model, micro_data.classes, micro_data, RunConfig(**{**RUN, "tasks": "1x1"}))
    assert res.results["missing_check"] == {"skipped": NO_SUBSET}
    assert "Missing-class check" not in results_markdown(res.results)


def test_missing_check_errors_are_one_sentence_before_anything_is_written(setup, tmp_path, micro_model,
                                                                           micro_data):
    from gslora.data import load_data

    data = load_data(str(setup["root"] / "data"), SIZE)
    bad = tmp_path / "bad"
    _write_images(bad, ["e"], 2, 3)
    (bad / "e").rename(bad / "zebra")
    model, classes = _cut_model(setup)
    out = tmp_path / "run"
    with pytest.raises(GsloraError, match=r"1 class folder\(s\) .* are not classes of the original 6-way head "
                                          r"\(e.g. 'zebra'"):
        run_forgetting(model, classes, data, RunConfig(**RUN, missing_check_data=str(bad)), out_dir=out)
    assert not out.exists()
    only_subset = tmp_path / "subset"
    _write_images(only_subset, ["a"], 2, 3)
    with pytest.raises(GsloraError, match="holds only classes of the head subset"):
        run_forgetting(model, classes, data, RunConfig(**RUN, missing_check_data=str(only_subset)), out_dir=out)
    with pytest.raises(GsloraError, match="needs a model whose head was cut with --head-subset"):
        run_forgetting(micro_model, micro_data.classes, micro_data,
                       RunConfig(**{**RUN, "tasks": "1x1"}, missing_check_data=str(setup["root"] / "missing")))
    assert not out.exists()


def test_the_full_head_is_kept_beside_the_model_not_in_it(setup):
    model, _ = _cut_model(setup)
    head = full_head(model)
    assert head.weight.shape == (6, 32) and model.head.weight.shape == (4, 32)
    assert torch.equal(head.weight[:4], model.head.weight) and not any(p.requires_grad for p in head.parameters())
    assert not any("full_head" in k for k in model.state_dict())
    import copy

    assert torch.equal(full_head(copy.deepcopy(model)).weight, head.weight)
    assert full_head(create_model("vit_face_micro", 3)) is None
