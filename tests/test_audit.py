"""Audit on a tiny run: head forgetting recovers faster than GS-LoRA, the probe sees the original's classes, the
membership attack finds training members and nothing in random labels, outputs are complete, bad folders are errors."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from gslora import GsloraError, RunConfig, run_forgetting, save_checkpoint
from gslora.audit import (
    AuditConfig,
    audit_markdown,
    audit_run,
    embed_dataset,
    membership_inference,
    per_sample_loss,
    retrain_gap,
    run_classes,
)
from gslora.cli import main


def mask_head(model, forget):
    """Head forgetting by masking: zero the forgotten classes' CosFace rows (cos = 0 for them; the backbone is
    untouched)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.head.weight[list(forget)] = 0.0
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, _micro_pretrained, micro_data):
    root = tmp_path_factory.mktemp("audit")
    original = copy.deepcopy(_micro_pretrained[0])
    ckpt = save_checkpoint(original, root / "original.safetensors", micro_data.classes)
    cfg = RunConfig(tasks="2x4", epochs=8, batch_size=16, replay_ratio=0.3, lr=3e-3, device="cpu", save_adapters=False,
                    method_args={"lora_alpha": 8.0, "bound": 60.0, "beta": 1.0})  # as in test_end_to_end
    run_forgetting(copy.deepcopy(original), micro_data.classes, micro_data, cfg, out_dir=root / "run",
                   source_checkpoint=ckpt)
    return root / "run"


@pytest.fixture(scope="module")
def report(run_dir, _micro_pretrained, micro_data):
    forget, _ = run_classes(json.loads((run_dir / "results.json").read_text()))
    head = mask_head(_micro_pretrained[0], forget)
    cfg = AuditConfig(epochs=6, relearn_epochs=3, device="cpu")
    # The original stands in for a retrained model here: only the gap arithmetic is under test.
    return audit_run(run_dir, data=micro_data, compare={"head": head}, config=cfg,
                     retrained=run_dir.parent / "original.safetensors")


def test_head_forgetting_recovers_faster_than_gslora(report):
    gs, head = report["models"]["forgotten"]["recovery"], report["models"]["head"]["recovery"]
    orig = report["models"]["original"]["accuracy"]["acc_f"]
    assert orig > 50
    assert head["acc_f"][0] < 10 and gs["acc_f"][0] < 0.5 * orig  # both forgot before retraining the head
    # head masking comes back within a couple of epochs, GS-LoRA later or not at all
    assert head["recovered_at_epoch"] is not None and head["recovered_at_epoch"] <= 2, head["acc_f"]
    assert gs["recovered_at_epoch"] is None or gs["recovered_at_epoch"] > head["recovered_at_epoch"], gs["acc_f"]
    assert sum(head["acc_f"][1:4]) > sum(gs["acc_f"][1:4]) + 30, (head["acc_f"], gs["acc_f"])
    assert len(gs["acc_f"]) == len(gs["acc_r"]) == 7 and gs["epochs"] == list(range(7))
    assert "train split" in gs["split"] and "test split" in gs["split"]


def test_probe_on_original_is_well_above_chance(report, micro_data):
    chance = 100.0 / micro_data.num_classes
    probe = report["models"]["original"]["probe"]
    assert probe["acc_f"] > max(50.0, 8 * chance)
    assert "train split" in probe["split"] and "test split" in probe["split"]


def test_membership_inference_finds_members_and_not_random_labels(_micro_pretrained, micro_data):
    model = _micro_pretrained[0]
    tr_e, tr_y = embed_dataset(model, micro_data.train, "cpu")
    te_e, te_y = embed_dataset(model, micro_data.test, "cpu")
    members, held_out = per_sample_loss(model.head, tr_e, tr_y, "cpu"), per_sample_loss(model.head, te_e, te_y, "cpu")
    real = membership_inference(members, held_out, folds=5, seed=0)
    assert real["members"] == real["non_members"] == len(held_out)  # balanced: members subsampled
    assert real["auc"] > 0.55 and real["accuracy"] > 0.53, real
    pool = np.random.default_rng(0).permutation(members)  # random membership labels over training images
    fake = membership_inference(pool[: len(pool) // 2], pool[len(pool) // 2:], folds=5, seed=0)
    assert abs(fake["auc"] - 0.5) < 0.08 and abs(fake["accuracy"] - 0.5) < 0.08, fake


def test_membership_inference_needs_enough_samples():
    with pytest.raises(GsloraError, match="at least 5 members"):
        membership_inference([1.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0], folds=5)


def test_audit_writes_json_markdown_and_plots(report, run_dir):
    out = run_dir / "audit"
    for name in ("audit.json", "audit.md", "recovery.png", "probe_mia.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "audit.json").read_text())
    assert set(saved["models"]) == {"original", "forgotten", "head", "retrained"}
    for m in saved["models"].values():  # every number says which split it came from
        for key in ("accuracy", "probe", "mia") + (("recovery", "relearn") if "recovery" in m else ()):
            assert m[key]["split"], key
    assert saved["classes"]["n_forget"] == 8 and saved["classes"]["n_remain"] == 12
    rel = saved["models"]["head"]["relearn"]
    assert len(rel["acc_f"]) <= 4 and rel["max_epochs"] == 3
    md = (out / "audit.md").read_text()
    assert "Recovery test" in md and "Gap to the retrained model" in md and "| head" in md
    assert audit_markdown(saved) == md


def test_retrain_gap_is_absolute_difference(report):
    f, r, g = report["models"]["forgotten"], report["models"]["retrained"], report["retrain_gap"]
    assert g["acc_f"] == pytest.approx(abs(f["accuracy"]["acc_f"] - r["accuracy"]["acc_f"]))
    assert g["mia"] == pytest.approx(100 * abs(f["mia"]["accuracy"] - r["mia"]["accuracy"]))
    assert g["average"] == pytest.approx((g["acc_f"] + g["acc_r"] + g["mia"] + g["probe_acc_f"]) / 4)
    assert g["acc_f"] > 30  # the forgotten model is far from the original on the forgotten classes
    same = retrain_gap(f, f)
    assert same["average"] == 0.0


def test_audit_of_run_without_final_model_is_a_clear_error(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("audit", "final.*"))
    with pytest.raises(GsloraError, match="no final model"):
        audit_run(broken)
    assert main(["audit", str(broken), "--no-progress"]) == 2
    assert "no final model (final.safetensors)" in capsys.readouterr().err
    assert not (broken / "audit").exists()
    assert main(["audit", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_audit_config_is_validated():
    with pytest.raises(GsloraError, match="threshold"):
        AuditConfig(threshold=1.5).validate()
    with pytest.raises(GsloraError, match="mia_folds"):
        AuditConfig(mia_folds=1).validate()
