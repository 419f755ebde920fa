"""Detection (issue 12): locator, data restriction, the bounded forgetting term, AP against pycocotools, COCO errors."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from gslora.detection.data import DetectionSet, DetImage, coco_folder, digits_images, targets_from_tensor, write_coco
from gslora.detection.evaluate import coco_eval, set_ap, sets_from_classes
from gslora.detection.losses import bounded_detection_forget, forget_loss, set_criterion
from gslora.detection.models import attach_detr_lora, build_detector, group_names, locate_detr_ffn
from gslora.errors import GsloraError

CLASSES = ["a", "b", "c"]


def _six_six(arch: str = "deformable_detr_micro"):
    return build_detector(arch, CLASSES, encoder_layers=6, decoder_layers=6)


@pytest.mark.parametrize("arch", ["deformable_detr_micro", "detr_tiny"])
def test_locator_finds_one_group_per_layer(arch):
    model = _six_six(arch)
    blocks = locate_detr_ffn(model)
    assert len(blocks) == 12
    assert group_names(model) == [f"enc{i}" for i in range(6)] + [f"dec{i}" for i in range(6)]
    assert all(".encoder." in b.fc1 for b in blocks[:6]) and all(".decoder." in b.fc2 for b in blocks[6:])
    peft_model, groups = attach_detr_lora(model, rank=8)
    assert [b.fc1 for b in groups.blocks] == [b.fc1 for b in blocks]
    assert len(groups.params) == 12 and all(len(ps) == 4 for ps in groups.params)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # heads, attention, backbone frozen
    assert len(trainable) == 12 * 4


def _image(i, labels, size=40):
    boxes = np.asarray([[2 + 10 * k, 3, 8, 9] for k in range(len(labels))], dtype=np.float64).reshape(-1, 4)
    return DetImage(image_id=i, width=size, height=size, boxes=boxes, labels=np.asarray(labels, dtype=np.int64),
                    array=np.zeros((size, size, 3), np.uint8))


def test_restrict_keeps_only_the_sets_boxes():
    ds = DetectionSet([_image(1, [0, 2]), _image(2, [2]), _image(3, [0, 1]), _image(4, [1, 1, 0])], CLASSES, 32)
    remain, forget = ds.restrict([0, 1]), ds.restrict([2])
    assert [im.image_id for im in remain.images] == [1, 3, 4]
    assert [im.image_id for im in forget.images] == [1, 2]
    assert all(set(im.labels.tolist()) <= {0, 1} for im in remain.images)
    assert all(set(im.labels.tolist()) == {2} for im in forget.images)
    _, y = remain[0]  # image 1 lost its class-2 box: one real row, the rest padding
    labels = y[:, 0]
    assert labels[0] == 0 and (labels[1:] == -1).all()
    t = targets_from_tensor(y[None])[0]
    assert t["class_labels"].tolist() == [0]
    assert torch.allclose(t["boxes"][0], torch.tensor([(2 + 4) / 40, (3 + 4.5) / 40, 8 / 40, 9 / 40]))
    assert len(ds.images[0].labels) == 2  # the source is untouched


def test_bounded_forgetting_term():
    assert float(bounded_detection_forget(torch.tensor(8.0), 15.0)) == 0.0  # 2·8 = 16 ≥ 15
    assert float(bounded_detection_forget(torch.tensor(7.5), 15.0)) == 0.0
    assert float(bounded_detection_forget(torch.tensor(3.0), 15.0)) == pytest.approx(9.0)
    # on model outputs: one target box, matched to query 0 (exact box); L_cls = α(1−p)²·(−log p) of its class logit
    model = build_detector("deformable_detr_micro", CLASSES)
    crit = set_criterion(model)
    box = torch.tensor([0.5, 0.5, 0.2, 0.2])
    logits = torch.full((1, 3, 3), -4.0)
    logits[0, 0, 1] = 0.3
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05], [0.9, 0.9, 0.05, 0.05]]])
    out = {"logits": logits, "pred_boxes": boxes}
    targets = [{"class_labels": torch.tensor([1]), "boxes": box[None]}]
    p = torch.sigmoid(torch.tensor(0.3))
    l_cls = 0.25 * (1 - p) ** 2 * -torch.log(p)
    total, logs = forget_loss(crit, [out, out], targets, bound=15.0, focal=True)  # two decoder layers
    assert logs["forget_cls"] == pytest.approx(float(2 * l_cls), rel=1e-5)
    assert logs["forget_hinge"] == pytest.approx(float(15.0 - 2 * 2 * l_cls), rel=1e-5)
    assert logs["forget_box"] == pytest.approx(0.0, abs=1e-5)  # the matched box is exact
    assert float(total) == pytest.approx(logs["forget_hinge"], rel=1e-5)
    _, high = forget_loss(crit, [out], targets, bound=float(l_cls), focal=True)  # 2·L_cls > bound
    assert high["forget_hinge"] == 0.0
    # "overlapping": every query whose box overlaps the forget box (IoU ≥ 0.5) adds its term; here query 2 as well
    boxes2 = boxes.clone()
    boxes2[0, 2] = torch.tensor([0.51, 0.5, 0.2, 0.2])
    logits2 = logits.clone()
    logits2[0, 2, 1] = -1.0
    _, both = forget_loss(crit, [{"logits": logits2, "pred_boxes": boxes2}], targets, bound=15.0, focal=True,
                          queries="overlapping")
    p2 = torch.sigmoid(torch.tensor(-1.0))
    assert both["forget_cls"] == pytest.approx(float(l_cls + 0.25 * (1 - p2) ** 2 * -torch.log(p2)), rel=1e-5)


def test_set_ap_equals_pycocotools_on_two_images():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [{"id": 1, "width": 100, "height": 80}, {"id": 2, "width": 100, "height": 80}],
          "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}, {"id": 9, "name": "c"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 40, 20, 30], "area": 600, "iscrowd": 0},
              {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 40, 40], "area": 1600, "iscrowd": 0},
              {"id": 4, "image_id": 2, "category_id": 9, "bbox": [60, 10, 30, 50], "area": 1500, "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": 3, "bbox": [12, 11, 28, 20], "score": 0.9},
            {"image_id": 1, "category_id": 3, "bbox": [60, 50, 10, 10], "score": 0.95},
            {"image_id": 1, "category_id": 7, "bbox": [52, 45, 20, 25], "score": 0.6},
            {"image_id": 2, "category_id": 3, "bbox": [8, 2, 40, 42], "score": 0.3},
            {"image_id": 2, "category_id": 9, "bbox": [0, 0, 20, 20], "score": 0.8},
            {"image_id": 2, "category_id": 7, "bbox": [60, 10, 30, 50], "score": 0.7}]
    ev = coco_eval(gt, dets)
    for cats in ([3], [3, 7], [7, 9], [3, 7, 9]):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = json.loads(json.dumps(gt))
            coco_gt.createIndex()
            ref = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(dets))), "bbox")
            ref.params.catIds = cats
            ref.evaluate()
            ref.accumulate()
            ref.summarize()
        ours = set_ap(ev, cats)
        assert ours["ap"] == pytest.approx(100 * ref.stats[0], abs=1e-9)
        assert ours["ap50"] == pytest.approx(100 * ref.stats[1], abs=1e-9)
        per_class = [set_ap(ev, [c]) for c in (3, 7, 9)]
        via_classes = sets_from_classes(per_class, {"s": [(3, 7, 9).index(c) for c in cats]})["s"]
        assert via_classes["ap"] == pytest.approx(100 * ref.stats[0], abs=1e-9)
    assert 0 < set_ap(ev, [3])["ap"] < 100  # the example is not trivial


def _coco(tmp_path, n=6):
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 17, size=(20, 8, 8)).astype(np.float64)
    images = digits_images(n, digits, np.arange(20) % 3, [np.full((64, 64, 3), 120, np.uint8)], 48, rng)
    write_coco(images, CLASSES, tmp_path / "train.json", tmp_path / "train")
    return tmp_path


def test_coco_folder_loads(tmp_path):
    data = coco_folder(_coco(tmp_path, 10), image_size=32)
    assert data.classes == CLASSES
    assert len(data.train) + len(data.val) + len(data.test) == 10
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and y.shape[1] == 5


@pytest.mark.parametrize("damage, words", [
    ("missing_image", "missing"),
    ("box_outside", "outside its image"),
    ("unknown_category", "category_id 99"),
])
def test_coco_errors_are_clear(tmp_path, damage, words):
    folder = _coco(tmp_path)
    doc = json.loads((folder / "train.json").read_text())
    if damage == "missing_image":
        (folder / "train" / doc["images"][2]["file_name"]).unlink()
    elif damage == "box_outside":
        doc["annotations"][1]["bbox"] = [40.0, 40.0, 30.0, 30.0]
    else:
        doc["annotations"][0]["category_id"] = 99
    (folder / "train.json").write_text(json.dumps(doc))
    with pytest.raises(GsloraError, match=words):
        coco_folder(folder, image_size=32)
    from gslora.cli import main

    out = tmp_path / "det"
    assert main(["pretrain", "--detection", "--data", str(folder), "--model", "deformable_detr_micro",
                 "--out", str(out), "--max-steps", "1", "--no-progress"]) == 2  # the damaged data, before training
    assert not (out / "config.json").exists()


def test_detr_runs_through_the_same_runner():
    """DetrForObjectDetection (softmax classes + no-object) takes the same path: losses, AP, LoRA groups, merge."""
    from gslora.detection.config import detection_config
    from gslora.detection.data import digits_data
    from gslora.detection.problem import Detection
    from gslora.forget import run_forgetting

    data = digits_data(image_size=32, n_train=40, n_val=10, n_test=10, max_objects=1, scale=(0.5, 0.7))
    model = build_detector("detr_tiny", data.classes, encoder_layers=1, decoder_layers=2, d_model=32,
                           encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5, backbone_width=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = detection_config(tasks=[[data.classes[int(data.train.images[0].labels[0])]]], max_steps=3, batch_size=4,
                           replay_ratio=1.0, eval_every=0, image_size=32, device="cpu",
                           method_args={"beta": 1.0, "alpha": 0.0})
    result = run_forgetting(model, data.classes, data, cfg, problem=Detection())
    row = result.rows[0]
    assert row["method_info"]["groups"] == ["enc0", "dec0", "dec1"]
    assert row["steps"] == 3 and row["ap_f_before"] is not None
    changed = {n for n, p in result.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".fc1." in n or ".fc2." in n for n in changed)  # LoRA merged into the FFNs only


def test_scratch_backbone_trains_then_freezes_back(tmp_path):
    """transformers freezes a ResNet backbone by a name pattern that matches none of its own layers and swaps its
    batch norms for frozen ones; a from-scratch detector gets a trainable backbone with live batch norms, and
    freeze_batch_norm turns them back without changing eval outputs (and the folder loads as plain transformers)."""
    import math

    from torch import nn

    from gslora.detection.models import backbone_network, freeze_batch_norm, load_detector, save_detector

    model = build_detector("deformable_detr_micro", CLASSES)
    net = backbone_network(model)
    assert all(p.requires_grad for p in net.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert torch.allclose(model.class_embed[0].bias, torch.full((3,), -math.log(99)))  # focal prior 0.01
    x = torch.randn(2, 3, 32, 32)
    model.train()
    model(pixel_values=x)  # one train-mode pass moves the running statistics away from (0, 1)
    model.eval()
    with torch.no_grad():
        before = model(pixel_values=x).logits
    freeze_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=x).logits, before, atol=1e-5)
    save_detector(model, tmp_path / "det", CLASSES)
    loaded, _ = load_detector(tmp_path / "det")
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=x).logits, before, atol=1e-5)


def test_backbone_warmup_and_cls_weight_in_pretraining():
    from gslora.detection.data import digits_data
    from gslora.detection.pretrain import DetPretrainConfig, pretrain_detector

    data = digits_data(image_size=32, n_train=24, n_val=8, n_test=8, max_objects=1, scale=(0.5, 0.7))
    model = build_detector("deformable_detr_micro", data.classes)
    backbone_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".backbone." in n}
    cfg = DetPretrainConfig(max_steps=2, batch_size=8, warmup_steps=1, backbone_warmup_steps=3,
                            backbone_warmup_batch_size=8, cls_weight=5.0, device="cpu")
    stats = pretrain_detector(model, data, cfg)
    assert stats["backbone_warmup"]["steps"] == 3 and 0.0 <= stats["backbone_warmup"]["val_accuracy"] <= 1.0
    named = dict(model.named_parameters())
    assert any(not torch.equal(named[n], p) for n, p in backbone_before.items())  # the backbone trained
    assert stats["config"]["cls_weight"] == 5.0
    with pytest.raises(GsloraError, match="cls_weight"):
        DetPretrainConfig(cls_weight=0.0).validate()


def test_demo_run_config_takes_the_methods_own_section():
    from gslora.detection.cli import demo_run_config

    demo = {"run": {"tasks": "4x2", "batch_size": 4, "eval_every": 0},
            "methods": {"gslora": {"lr": 2e-3, "method_args": {"bound": 5.0}}, "finetune": {"lr": 2e-4}}}
    cfg = demo_run_config(demo, [])
    assert cfg.method == "gslora" and cfg.lr == 2e-3 and cfg.method_args == {"bound": 5.0} and cfg.batch_size == 4
    cfg = demo_run_config(demo, ["method=finetune"])
    assert cfg.method == "finetune" and cfg.lr == 2e-4 and cfg.method_args == {}
    cfg = demo_run_config(demo, ["method_args.beta=0.5", "lr=1e-3"])
    assert cfg.method_args == {"bound": 5.0, "beta": 0.5} and cfg.lr == 1e-3


def test_detection_config_is_runconfig_plus_two_fields_and_refuses_classification_settings():
    import dataclasses

    from gslora.config import RunConfig
    from gslora.detection.config import DetectionConfig, detection_config

    own = {f.name for f in dataclasses.fields(DetectionConfig)} - {f.name for f in dataclasses.fields(RunConfig)}
    assert own == {"grad_clip", "image_size"}
    assert DetectionConfig.__dataclass_fields__["lr"] is RunConfig.__dataclass_fields__["lr"]  # inherited, not copied
    cfg = detection_config()
    assert (cfg.target, cfg.max_trials, cfg.augment, cfg.max_steps, cfg.lr) == ("ap_f_share<=20", 1, False, 150, 1e-3)
    with pytest.raises(GsloraError, match="shots = 4 does not apply to detection runs"):
        detection_config(shots=4)
    with pytest.raises(GsloraError, match="detection target 'acc_f<=2'"):
        detection_config(target="acc_f<=2")


def test_detection_trials_follow_the_policy():
    """Targets and trials on AP: a forgetting target no trial can meet (AP_f below 0) makes the policy try a second
    trial at twice the lr, and the rows record both; the check ran on validation AP_f."""
    from gslora.detection.config import detection_config
    from gslora.detection.data import digits_data
    from gslora.detection.problem import Detection
    from gslora.forget import run_forgetting

    data = digits_data(image_size=32, n_train=40, n_val=10, n_test=10, max_objects=1, scale=(0.5, 0.7))
    model = build_detector("detr_tiny", data.classes, encoder_layers=1, decoder_layers=1, d_model=32,
                           encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5, backbone_width=8)
    cfg = detection_config(tasks=[[data.classes[int(data.train.images[0].labels[0])]]], max_steps=2, batch_size=4,
                           replay_ratio=1.0, eval_every=1, image_size=32, device="cpu", target="ap_f<=-1",
                           max_trials=2, method_args={"beta": 1.0, "alpha": 0.0})
    row = run_forgetting(model, data.classes, data, cfg, problem=Detection()).rows[0]
    assert [t["lr_scale"] for t in row["trials"]] == [1.0, 2.0]
    assert [t["targets_met"] for t in row["trials"]] == [{"ap_f": False}, {"ap_f": False}]
    assert row["trials"][0]["checks"] == 2 and "ap_f" in row["checks"][0]["metrics"]
    assert row["targets"] == {"spec": "ap_f<=-1", "val": {"ap_f": False}, "test": {"ap_f": False}}


def test_build_detector_seeds_locally():
    """The initialisation is seeded (the same weights for the same seed) without touching the caller's global RNG."""
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = build_detector("deformable_detr_micro", CLASSES, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_detector("deformable_detr_micro", CLASSES, seed=3)
    c = build_detector("deformable_detr_micro", CLASSES, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_every_detection_method_has_a_search_space_around_its_packaged_values(monkeypatch):
    """configs/detection_tune.yaml: every detection method has a space over its own arguments, and each knob's range
    holds the packaged value (trial 1 of `gslora tune --detection`); a knob on an unknown argument is one error."""
    from dataclasses import asdict

    from gslora.detection import methods as det_methods
    from gslora.detection.config import detection_defaults
    from gslora.methods import REGISTRY

    assert sorted(REGISTRY["detection"]) == ["finetune", "gslora", "l2"]
    for name, cls in REGISTRY["detection"].items():
        space = det_methods.tune_space(name)
        assert space["run"], name
        packaged = {**{k: detection_defaults()[k] for k in space["run"]}, **asdict(cls.Args())}
        for key, spec in {**space["run"], **space["args"]}.items():
            kind, values = next(iter(spec.items()))
            value = packaged[key]
            assert value in values if kind == "choice" else values[0] <= value <= values[1], (name, key)
    monkeypatch.setattr(det_methods, "packaged_yaml", lambda name: {"l2": {"args": {"bound": {"log": [1, 2]}}}})
    with pytest.raises(GsloraError, match="varies 'bound', which is not an argument of the method"):
        det_methods.tune_space("l2")
    assert det_methods.tune_space("finetune") == {}
