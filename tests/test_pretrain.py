"""Pre-training defaults: a budget sized by the data, early stopping that keeps the best-validation weights, batch
augmentation, the exact fold of the input standardisation, and the loud "did not learn" report."""

import json
import logging
import math

import pytest
import torch

import gslora.pretrain as pretrain_module
from gslora.cli import main
from gslora.config import PretrainConfig, build_config
from gslora.data.augment import augment_batch
from gslora.data.faces import bundled_faces
from gslora.errors import GsloraError
from gslora.models import create_model, load_checkpoint
from gslora.pretrain import fold_standardisation, learned_check, pretrain


@pytest.fixture(scope="module")
def small_data():
    """8 classes of the bundled faces, 16 px: fast enough for a few pre-training runs per test."""
    return bundled_faces(image_size=16, seed=5, views={"train": 12, "val": 3, "test": 4}, num_faces=8)


def test_derived_budget_grows_with_the_data_and_stays_within_its_bounds():
    cfg = PretrainConfig()
    sizes = [10, 200, 1000, 2000, 3000, 5000, 8000, 10**6]
    budgets = [cfg.schedule(n)["max_steps"] for n in sizes]
    assert budgets == sorted(budgets)  # never shrinks as the data grows
    assert budgets[0] == budgets[1] == cfg.budget_min_steps  # small folders get the floor
    assert budgets[-1] == cfg.budget_max_steps  # huge ones the ceiling
    assert cfg.schedule(2000)["max_steps"] == math.ceil(cfg.budget_passes * 2000 / cfg.batch_size) == 1563
    assert len(set(budgets)) >= 4  # in between it is sized by the data
    plan = cfg.schedule(2000)
    assert plan["warmup_steps"] == int(0.05 * 1563) and plan["eval_every"] == 1563 // 20
    # other bounds and batch sizes follow the same rule
    custom = PretrainConfig(budget_passes=10, budget_min_steps=50, budget_max_steps=300, batch_size=10)
    assert [custom.schedule(n)["max_steps"] for n in (10, 100, 200, 1000)] == [50, 100, 200, 300]


def test_explicit_steps_and_epochs_override_the_rule():
    assert PretrainConfig(max_steps=77).schedule(10**6)["max_steps"] == 77
    plan = PretrainConfig(epochs=40, batch_size=32, warmup_epochs=3).schedule(600)  # 19 batches per epoch
    assert plan["max_steps"] == 40 * 19 and plan["warmup_steps"] == 3 * 19
    assert build_config(PretrainConfig, None, [], epochs=3).schedule(64)["warmup_steps"] == 0
    assert PretrainConfig(max_steps=100, warmup_steps=7, eval_every=9).schedule(5)["warmup_steps"] == 7
    for bad in (dict(max_steps=0), dict(patience=-1), dict(warmup_epochs=2), dict(max_steps=10, warmup_steps=10),
                dict(budget_min_steps=10, budget_max_steps=5), dict(margin_warmup=1.5)):
        with pytest.raises(GsloraError):
            PretrainConfig(**bad).validate()


def test_early_stopping_stops_after_patience_and_returns_the_best_validation_weights(small_data, monkeypatch):
    script = iter([10.0, 40.0, 30.0, 40.0, 20.0, 35.0, 90.0, 95.0])  # best at the 2nd check (step 8)
    seen = []

    def fake_validate(model, data, norm, device, batch_size=256):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return next(script), 1.0

    monkeypatch.setattr(pretrain_module, "_validate", fake_validate)
    model = create_model("vit_face_micro", small_data.num_classes, seed=0)
    cfg = PretrainConfig(max_steps=40, eval_every=4, patience=3, standardize=False, device="cpu")
    stats = pretrain(model, small_data, cfg)
    # checks at steps 4, 8, 12, 16, 20: three non-improving checks after step 8 (a tie is no improvement), and
    # step 20 is half the budget, the earliest an early stop may happen
    assert [c["step"] for c in stats["checks"]] == [4, 8, 12, 16, 20]
    assert stats["stopped_early"] and stats["steps"] == 20 and stats["best_step"] == 8
    final = model.state_dict()
    assert all(torch.equal(final[k], seen[1][k]) for k in final)
    assert not all(torch.equal(final[k], seen[-1][k]) for k in final)  # the weights did move after the best check


def test_early_stopping_waits_for_half_the_budget(small_data, monkeypatch):
    monkeypatch.setattr(pretrain_module, "_validate", lambda *a, **k: (5.0, 1.0))  # a plateau from the start
    model = create_model("vit_face_micro", small_data.num_classes, seed=0)
    stats = pretrain(model, small_data, PretrainConfig(max_steps=30, eval_every=2, patience=1, device="cpu"))
    assert stats["stopped_early"] and stats["steps"] == 16  # the first check at or after step 15
    stats = pretrain(model, small_data, PretrainConfig(max_steps=12, eval_every=2, patience=0, device="cpu"))
    assert not stats["stopped_early"] and stats["steps"] == 12  # patience 0: never stop early


def test_augmentation_changes_the_batch_but_keeps_its_shape(small_data):
    x = small_data.train.images[:16].float() / 255
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert (out - x).abs().mean() > 0.01  # really changed
    assert out.min() >= 0 and out.max() <= 1  # border padding keeps the value range
    again = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # reproducible from the generator
    assert not torch.equal(out, augment_batch(x, torch.Generator().manual_seed(1)))


def test_pretraining_feeds_augmented_batches_only_when_asked(small_data, monkeypatch):
    calls = []
    real = pretrain_module.augment_batch
    monkeypatch.setattr(pretrain_module, "augment_batch", lambda x, g: calls.append(x.shape) or real(x, g))
    for augment in (True, False):
        model = create_model("vit_face_micro", small_data.num_classes, seed=0)
        pretrain(model, small_data, PretrainConfig(max_steps=6, batch_size=8, augment=augment, device="cpu"))
    assert calls == [torch.Size([8, 3, 16, 16])] * 6


def test_standardisation_folds_exactly_into_the_patch_embedding(small_data):
    model = create_model("vit_face_micro", small_data.num_classes, seed=1).eval()
    x = small_data.test.images[:10].float() / 255
    mean, std = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.2, 0.3, 0.05])
    with torch.no_grad():
        expected = model((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
        fold_standardisation(model, mean, std)
        assert torch.allclose(model(x), expected, atol=1e-4, rtol=1e-4)


def test_default_pretraining_learns_and_says_so(small_data):
    model = create_model("vit_face_micro", small_data.num_classes, seed=0)
    stats = pretrain(model, small_data, PretrainConfig(max_steps=150, batch_size=32, lr=3e-3, device="cpu"))
    assert stats["learned"] and "not_learned_reason" not in stats
    assert stats["train_acc"] >= 50 and stats["val_acc"] >= 40, {k: stats[k] for k in ("train_acc", "val_acc")}
    assert stats["standardization"] is not None and stats["steps"] <= 150


def test_learned_check_thresholds():
    assert learned_check(90.0, 80.0, 40) is None
    assert "training accuracy 30.0%" in learned_check(30.0, 80.0, 40)
    assert "near chance" in learned_check(90.0, 5.0, 40)  # 3 x chance = 7.5%
    assert learned_check(90.0, None, 40) is None


def test_a_model_that_cannot_learn_is_reported(small_data, caplog):
    model = create_model("vit_face_micro", small_data.num_classes, seed=0)
    with caplog.at_level(logging.WARNING, logger="gslora.pretrain"):
        stats = pretrain(model, small_data, PretrainConfig(max_steps=10, lr=1e-9, device="cpu"))
    assert stats["learned"] is False and "training accuracy" in stats["not_learned_reason"]
    assert any("did not learn" in r.getMessage() for r in caplog.records)


def test_cli_marks_a_model_that_did_not_learn_and_forget_warns(tmp_path, micro_folder, capsys):
    out = tmp_path / "bad.safetensors"
    code = main(["pretrain", "--data", str(micro_folder), "--model", "vit_face_micro", "--out", str(out),
                 "--max-steps", "5", "--lr", "1e-9", "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "WARNING" in captured.err and "did NOT learn" in captured.err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["pretrain"]["learned"] is False and meta["pretrain"]["not_learned_reason"]
    load_checkpoint(out)  # still a valid checkpoint, only marked
    code = main(["forget", "--checkpoint", str(out), "--data", str(micro_folder), "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--no-progress", "--set", "batch_size=8", "--device", "cpu", "--tasks", "1x2"])
    err = capsys.readouterr().err
    assert "did NOT learn" in err and str(out) in err


def test_cli_pretrain_prints_the_budget_and_exits_0_when_the_model_learned(tmp_path, micro_folder, capsys):
    out = tmp_path / "ok.safetensors"
    code = main(["pretrain", "--data", str(micro_folder), "--model", "vit_face_micro", "--out", str(out),
                 "--max-steps", "300", "--lr", "3e-3", "--device", "cpu", "--no-progress", "--set", "batch_size=32",
                 "--set", "augment=false"])  # 5 images per class: memorised fast without augmentation
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "budget 300 steps" in captured.out and "WARNING" not in captured.err
    assert json.loads(out.with_suffix(".json").read_text())["pretrain"]["learned"] is True


def test_bf16_precision_runs_the_forward_under_autocast_and_bad_precision_is_refused(small_data, monkeypatch):
    seen = []
    model = create_model("vit_face_micro", small_data.num_classes, seed=0)
    real_forward = model.forward

    def forward(x, *a, **k):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_forward(x, *a, **k)

    monkeypatch.setattr(model, "forward", forward)
    pretrain(model, small_data, PretrainConfig(max_steps=3, batch_size=8, device="cpu", precision="bf16",
                                               eval_every=100))
    assert seen[:3] == [True, True, True]  # the three training steps
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(GsloraError, match="precision"):
        PretrainConfig(precision="fp16").validate()


def test_still_improving_needs_a_higher_accuracy_in_the_last_checks():
    checks = [{"val_acc": a} for a in (10, 50, 50, 50, 50)]
    assert not pretrain_module.still_improving(checks, 3)  # the best is older than the last 3 checks
    assert pretrain_module.still_improving(checks + [{"val_acc": 51}], 3)
    assert pretrain_module.still_improving(checks[:2], 3)  # fewer checks than the window: rising from nothing


def _rising(monkeypatch, values):
    script = iter(values)
    monkeypatch.setattr(pretrain_module, "_validate", lambda *a, **k: (next(script), 1.0))


def test_pretraining_goes_on_past_the_budget_while_validation_improves_and_stops_at_the_cap(small_data, monkeypatch,
                                                                                            capsys):
    # derived budget 40 steps (budget_min_steps), checks every 4: 10 checks, then extensions of 20 steps (5 checks)
    base = dict(budget_min_steps=40, budget_max_steps=40, eval_every=4, patience=3, standardize=False, device="cpu")
    _rising(monkeypatch, [float(i) for i in range(1, 100)])  # always improving
    model = create_model("vit_face_micro", small_data.num_classes, seed=0)
    stats = pretrain(model, small_data, PretrainConfig(extend_cap=2.0, **base))
    assert stats["max_steps"] == 40 and stats["steps"] == 80 and stats["extensions"] == 2
    assert stats["stopped_at_cap"] and stats["cap_steps"] == 80 and stats["best_step"] == 80
    assert [p["peak_lr"] for p in stats["phases"]] == [1e-3, 5e-4, 5e-4]
    # validation that stops rising inside the first extension: no second extension, stopped early on the plateau
    _rising(monkeypatch, [float(i) for i in range(1, 11)] + [11.0] + [5.0] * 20)
    stats = pretrain(create_model("vit_face_micro", small_data.num_classes, seed=0), small_data,
                     PretrainConfig(extend_cap=3.0, **base))
    assert stats["extensions"] == 1 and stats["steps"] == 56 and stats["best_step"] == 44
    assert stats["stopped_early"] and not stats["stopped_at_cap"]
    # a plateau at the end of the budget: no extension
    _rising(monkeypatch, [float(i) for i in range(1, 6)] + [5.0] * 10)
    stats = pretrain(create_model("vit_face_micro", small_data.num_classes, seed=0), small_data,
                     PretrainConfig(extend_cap=3.0, patience=0, **{k: v for k, v in base.items() if k != "patience"}))
    assert stats["extensions"] == 0 and stats["steps"] == 40 and not stats["still_improving"]
    # an explicit budget (max_steps) is never extended, but the stats say validation was still improving
    _rising(monkeypatch, [float(i) for i in range(1, 100)])
    stats = pretrain(create_model("vit_face_micro", small_data.num_classes, seed=0), small_data,
                     PretrainConfig(max_steps=20, eval_every=4, standardize=False, device="cpu"))
    assert stats["extensions"] == 0 and stats["steps"] == 20 and stats["still_improving"]


def test_cli_says_when_the_cap_stopped_a_model_still_improving(tmp_path, micro_folder, capsys, monkeypatch):
    _rising(monkeypatch, [float(i) for i in range(1, 1000)])  # validation rises at every check
    out = tmp_path / "capped.safetensors"
    code = main(["pretrain", "--data", str(micro_folder), "--model", "vit_face_micro", "--out", str(out),
                 "--device", "cpu", "--no-progress", "--set", "budget_min_steps=20", "--set", "budget_max_steps=20",
                 "--set", "eval_every=5", "--set", "extend_cap=2", "--set", "standardize=false"])
    printed = capsys.readouterr().out
    assert code in (0, 3)
    assert "40 steps, budget 20" in printed and "2 extension(s) past the 20-step budget" in printed
    assert "stopped at the cap (40 steps) while validation was STILL IMPROVING" in printed
    stats = json.loads(out.with_suffix(".json").read_text())["pretrain"]
    assert stats["stopped_at_cap"] and stats["extensions"] == 2
