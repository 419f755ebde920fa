"""Audit on a tiny run: head forgetting recovers faster than GS-LoRA, the probe sees the original's classes, the
membership attack finds training members and nothing in random labels, outputs are complete, bad folders are errors."""

import copy
import json
import re
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
from gslora.data.base import DataBundle, TensorImages
from gslora.data.faces import bundled_faces


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
        for key in ("accuracy", "probe", "mia", "recovery") + (("relearn",) if m.get("relearn") else ()):
            assert m[key]["split"], key
    assert saved["classes"]["n_forget"] == 8 and saved["classes"]["n_remain"] == 12
    rel = saved["models"]["head"]["relearn"]
    assert len(rel["acc_f"]) <= 4 and rel["max_epochs"] == 3
    md = (out / "audit.md").read_text()
    assert "Recovery test" in md and "Gap to the retrained model" in md and "| head" in md
    assert saved["audit_images"]["classes_without_unseen"] == 0 and "Every class had unseen training images" in md
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


# ---------------------------------------------------------------------------------------------------------------------
# Audit images the forgetting never saw; retrain-full as the reference


def test_recovery_and_relearn_images_are_outside_the_runs_subsets(tmp_path, micro_model, micro_data, monkeypatch):
    import gslora.audit
    import gslora.forget
    import gslora.pretrain
    from gslora.audit import run_subset_indices, run_tasks

    used, real_ctx = set(), gslora.forget.TaskContext

    def recording_ctx(**kw):  # every image the run's subsets hold, as the runner built them
        used.update(kw["remain_data"].indices)
        used.update(kw["forget_data"].indices)
        return real_ctx(**kw)

    monkeypatch.setattr(gslora.forget, "TaskContext", recording_ctx)
    ckpt = save_checkpoint(micro_model, tmp_path / "original.safetensors", micro_data.classes)
    cfg = RunConfig(tasks="2x2", method="head", method_args={"mode": "mask"}, replay_ratio=0.3, old_forget_shots=3,
                    device="cpu", save_adapters=False)
    res = run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data, cfg, out_dir=tmp_path / "run",
                         source_checkpoint=ckpt)
    assert used  # the spy saw the run
    rcfg = res.results["config"]
    assert run_subset_indices(micro_data.train.targets, run_tasks(res.results), rcfg["seed"], rcfg["replay_ratio"],
                              rcfg["shots"], rcfg["min_replay"], rcfg["old_forget_shots"]) == used

    drawn, pretrained_on = {}, []
    real_rec, real_rel, real_pre = gslora.audit.recovery_test, gslora.audit.relearn_time, gslora.pretrain.pretrain

    def rec(model, tr_e, tr_y, te_e, te_y, subset_idx, *a, **k):
        drawn.setdefault("recovery", set()).update(subset_idx)
        return real_rec(model, tr_e, tr_y, te_e, te_y, subset_idx, *a, **k)

    def rel(model, data, forget_idx, *a, **k):
        drawn.setdefault("relearn", set()).update(forget_idx)
        return real_rel(model, data, forget_idx, *a, **k)

    def pre(model, data, cfg, progress=False):
        pretrained_on.append(data)
        return real_pre(model, data, cfg, progress=progress)

    monkeypatch.setattr(gslora.audit, "recovery_test", rec)
    monkeypatch.setattr(gslora.audit, "relearn_time", rel)
    monkeypatch.setattr(gslora.pretrain, "pretrain", pre)
    report = audit_run(tmp_path / "run", data=micro_data, write=False,
                       config=AuditConfig(epochs=1, relearn_epochs=1, device="cpu"),
                       retrain_full={"max_steps": 30, "batch_size": 32, "lr": 3e-3})
    forget, remain = run_classes(res.results)
    targets = micro_data.train.targets
    assert drawn["recovery"] and not drawn["recovery"] & used  # none of the images the run trained on
    assert drawn["relearn"] and not drawn["relearn"] & used
    assert {targets[i] for i in drawn["relearn"]} == set(forget)
    assert {targets[i] for i in drawn["recovery"]} == set(forget) | set(remain)
    images = report["audit_images"]
    assert images["classes_without_unseen"] == 0 and images["run_images"] == len(used)
    assert "outside the forgetting run's replay / forget subsets" in images["source"]
    assert "unseen by the forgetting run" in report["models"]["forgotten"]["recovery"]["split"]
    # the retrain gap's reference: retrain-full, trained here on every remaining-class image and no forgotten one
    (bundle,) = pretrained_on
    assert set(bundle.train.targets) == set(remain) and len(bundle.train) == sum(t in remain for t in targets)
    assert report["retrained_by"]["method"] == "retrain-full" and report["retrained_by"]["retrain_seconds"] > 0
    assert report["retrain_gap"]["average"] is not None and "retrained" in report["models"]
    assert "made by retrain-full" in audit_markdown(report)


def test_a_class_without_unseen_images_is_reported(_micro_pretrained, micro_data):
    from gslora.audit import audit, audit_images

    model = _micro_pretrained[0]
    targets = micro_data.train.targets
    forget, remain = [0, 1, 2], [3, 4, 5, 6]
    all_of = lambda c: {i for i, t in enumerate(targets) if t == c}  # noqa: E731
    seen = all_of(1) | all_of(4) | set(list(all_of(5))[:28])  # classes 1 and 4 fully used, class 5 all but 2
    recovery, relearn, info = audit_images(targets, forget, remain, seed=1337, ratio=0.1, seen=seen)
    assert info["classes_without_unseen"] == 2 and info["forget_classes_without_unseen"] == [1]
    assert info["remain_classes_without_unseen"] == 1 and info["classes_short"] == 1  # class 5: 2 left, 3 wanted
    assert "images the run used" in info["fallback"]
    by_class = {c: [i for i in recovery if targets[i] == c] for c in forget + remain}
    assert all(len(v) == 3 for c, v in by_class.items() if c != 5) and len(by_class[5]) == 2
    assert set(by_class[1]) <= all_of(1) and not (set(recovery) - all_of(1) - all_of(4)) & seen
    assert set(relearn) == {i for i in recovery if targets[i] in forget}
    report = audit(model, model, micro_data, forget, remain, seen=seen,
                   config=AuditConfig(epochs=1, relearn_epochs=0, device="cpu"))
    assert report["audit_images"]["classes_without_unseen"] == 2
    assert report["audit_images"]["forget_classes_without_unseen"] == [micro_data.classes[1]]
    md = audit_markdown(report)
    assert "2 classes had no unseen training image" in md and micro_data.classes[1] in md
    unknown = audit(model, model, micro_data, forget, remain, config=AuditConfig(epochs=1, relearn_epochs=0,
                                                                                 device="cpu"))
    assert "unknown" in unknown["audit_images"]["source"] and unknown["audit_images"]["run_images"] is None


def test_a_retrained_reference_not_made_by_retrain_full_is_flagged(tmp_path):
    from gslora.audit import _reference_method

    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "results.json").write_text(json.dumps({"method": {"method": "retrain"}}))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text(json.dumps({"method": {"method": "retrain-full"}}))
    assert "not retrain-full" in _reference_method(tmp_path / "paper")["note"]
    assert "note" not in _reference_method(tmp_path / "full")
    assert _reference_method(tmp_path / "model.safetensors") is None


def test_the_audit_reads_the_images_the_run_recorded(micro_model, micro_data, tmp_path):
    """plan.json records, per task, the exact replay / forget / check images (missing classes get none); the audit
    draws its recovery images outside the recorded replay and forget images."""
    import json

    from gslora import RunConfig, run_forgetting
    from gslora.audit import recorded_subsets, run_subset_indices, run_tasks

    cfg = RunConfig(tasks="2x2", epochs=1, batch_size=16, replay_ratio=0.2, missing_ratio=0.5, device="cpu")
    run_forgetting(micro_model, micro_data.classes, micro_data, cfg, out_dir=tmp_path / "run")
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["plan"] == plan
    targets = micro_data.train.targets
    for task in plan["tasks"]:
        idx = task["indices"]
        missing = set(task["missing_classes"])
        assert {targets[i] for i in idx["replay"]} == set(task["remain"]) - missing  # none of a missing class
        assert {targets[i] for i in idx["forget"]} == set(task["forget"])
        assert not set(idx["check_train"]) & (set(idx["replay"]) | set(idx["forget"]))
    assert plan["tasks"][1]["missing_classes"]  # the second task has missing classes (half of those remaining)
    seen = recorded_subsets(results)
    assert seen == {i for t in plan["tasks"] for k in ("replay", "forget") for i in t["indices"][k]}
    derived = run_subset_indices(targets, run_tasks(results), cfg.seed, cfg.replay_ratio, min_replay=cfg.min_replay)
    assert seen < derived  # the old re-derivation also counted the missing classes' images, which were never used


def test_the_depth_fraction_is_exact_on_a_hand_built_case():
    from gslora.audit import depth_fraction, model_depth

    assert depth_fraction(90.0, 90.0, 70.0) == 0.0  # as shallow as the original
    assert depth_fraction(70.0, 90.0, 70.0) == 100.0  # as deep as retraining
    assert depth_fraction(80.0, 90.0, 70.0) == 50.0
    assert depth_fraction(60.0, 90.0, 70.0) == 150.0  # deeper than retraining
    assert depth_fraction(80.0, 70.0, 70.0) is None and depth_fraction(None, 90.0, 70.0) is None

    def model(probe, per_class, recovered, per_class_rec, auc):
        return {"probe": {"acc_f": probe, "per_class_f": per_class},
                "recovery": {"recovered_fraction": recovered, "per_class_final_acc_f": per_class_rec},
                "mia": {"auc": auc}}

    original = model(96.0, {3: 100.0, 5: 92.0}, 1.0, {3: 90.0, 5: 80.0}, 0.70)
    retrained = model(80.0, {3: 80.0, 5: 80.0}, 0.5, {3: 40.0, 5: 40.0}, 0.52)
    forgotten = model(88.0, {3: 100.0, 5: 86.0}, 0.75, {3: 65.0, 5: 40.0}, 0.30)  # AUC 0.30: advantage 0.20
    d = model_depth(forgotten, original, retrained, {3: "bob", 5: "carol"})
    assert d["probe_f"] == pytest.approx(50.0) and d["recovery"] == pytest.approx(50.0)
    assert d["mia"] == pytest.approx(100 * (0.20 - 0.20) / (0.20 - 0.02))  # the signal either way: 0.30 is 0.70's
    assert d["per_class"]["bob"]["probe_f"] == pytest.approx(0.0)
    assert d["per_class"]["carol"]["probe_f"] == pytest.approx(50.0)
    assert d["per_class"]["bob"]["recovery"] == pytest.approx(50.0) and d["per_class"]["carol"]["recovery"] == 100.0


def test_the_recovery_test_runs_on_the_floor_and_the_ceiling_and_depth_is_reported(report):
    for label in ("original", "retrained", "forgotten", "head"):
        assert report["models"][label]["recovery"]["acc_f"], label  # the recovery curve, for every model
    assert report["models"]["retrained"]["relearn"] is None  # relearning is for the forgotten models only
    depth = report["depth"]
    assert set(depth) == {"forgotten", "head"}
    # here the "retrained" reference is the original itself (the fixture's stand-in): nothing to place between
    assert depth["forgotten"]["probe_f"] is None
    assert set(depth["forgotten"]["per_class"]) == set(report["classes"]["forget"])
    assert "## Depth" in audit_markdown(report)


def test_the_retrained_reference_is_trained_once_per_plan(tmp_path, micro_model, micro_data, monkeypatch):
    import gslora.audit

    ckpt = save_checkpoint(micro_model, tmp_path / "original.safetensors", micro_data.classes)
    cfg = RunConfig(tasks="1x2", method="head", method_args={"mode": "mask"}, device="cpu", save_adapters=False)
    for name in ("a", "b"):  # two runs of one plan (here: the same method twice)
        run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data, cfg, out_dir=tmp_path / name,
                       source_checkpoint=ckpt)
    calls, real = [], gslora.audit.retrain_full_reference

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(gslora.audit, "retrain_full_reference", counting)
    audit_cfg = AuditConfig(epochs=1, relearn_epochs=0, device="cpu")
    recipe = {"max_steps": 20, "batch_size": 32, "lr": 3e-3}
    first = audit_run(tmp_path / "a", data=micro_data, write=False, config=audit_cfg, retrain_full=recipe)
    second = audit_run(tmp_path / "b", data=micro_data, write=False, config=audit_cfg, retrain_full=recipe)
    assert len(calls) == 1 and first["retrained_by"]["cached"] is False and second["retrained_by"]["cached"] is True
    assert first["models"]["retrained"]["probe"] == second["models"]["retrained"]["probe"]
    other = audit_run(tmp_path / "a", data=micro_data, write=False, config=audit_cfg,
                      retrain_full={**recipe, "max_steps": 21})  # another recipe: another reference
    assert len(calls) == 2 and other["retrained_by"]["cached"] is False


def _strangers(num_faces: int = 20) -> DataBundle:
    """Bundled photos after the micro set's first ``num_faces`` (conftest.NUM_FACES): people no micro model saw."""
    many = bundled_faces(image_size=16, seed=5, views={"train": 12, "val": 2, "test": 6}, num_faces=2 * num_faces)

    def later(split):
        keep = [i for i, t in enumerate(split.targets) if t >= num_faces]
        return TensorImages(split.images[keep], [split.targets[i] - num_faces for i in keep],
                            split.classes[num_faces:])

    return DataBundle(train=later(many.train), val=later(many.val), test=later(many.test), name="strangers")


def test_the_strangers_probe_is_the_audits_probe_on_people_no_model_saw(run_dir, _micro_pretrained, micro_data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    strangers = _strangers()
    assert not set(strangers.classes) & set(micro_data.classes)
    cfg = AuditConfig(epochs=1, relearn_epochs=0, device="cpu")
    report = audit_run(run_dir, data=micro_data, config=cfg, write=False, strangers=strangers)
    original = _micro_pretrained[0].eval()
    tr_x, tr_y = embed_dataset(original, strangers.train, "cpu")
    te_x, te_y = embed_dataset(original, strangers.test, "cpu")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.probe_c, max_iter=cfg.probe_max_iter))
    expected = 100.0 * float((probe.fit(tr_x.numpy(), tr_y.numpy()).predict(te_x.numpy()) == te_y.numpy()).mean())
    assert report["models"]["original"]["strangers_probe"]["acc"] == pytest.approx(expected)
    assert 100.0 / strangers.num_classes < expected  # the original tells strangers apart above chance
    assert report["models"]["forgotten"]["strangers_probe"]["acc"] is not None
    assert report["strangers"]["classes"] == strangers.num_classes
    text = audit_markdown(report)
    assert "## People no model saw" in text
    assert re.search(r"\| original +\| [0-9.]+ +\| 0\.0 +\| [0-9.]+ +\| 0\.0 +\|", text)  # its own distance: 0


def test_the_strangers_must_be_other_data_than_the_runs(run_dir, micro_data, tmp_path):
    cfg = AuditConfig(epochs=1, relearn_epochs=0, device="cpu")
    with pytest.raises(GsloraError, match="does not exist"):
        audit_run(run_dir, data=micro_data, config=cfg, write=False, strangers=str(tmp_path / "nowhere"))
    folder = tmp_path / "faces"
    folder.mkdir()
    with pytest.raises(GsloraError, match="the run's own data"):
        audit_run(run_dir, data=micro_data, config=cfg, write=False, strangers=str(folder),
                  data_spec=str(tmp_path / "." / "faces"))
