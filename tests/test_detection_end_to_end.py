"""A tiny detection run end to end through the CLI on a COCO-format folder: pretrain → forget → evaluate (seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gslora.cli import main
from gslora.detection.data import digits_images, write_coco

CLASSES = ["zero", "one", "two"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A COCO folder of 200 one-digit images (32 px, 3 categories) and a micro Deformable DETR pre-trained on it."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("coco")
    d = load_digits()
    keep = d.target < 3
    images = digits_images(200, d.images[keep], d.target[keep], [np.full((64, 64, 3), 90, np.uint8)], 32,
                           np.random.default_rng(0), max_objects=1, scale=(0.5, 0.7))
    write_coco(images, CLASSES, root / "train.json", root / "train")
    ckpt = root / "detector"
    assert main(["pretrain", "--detection", "--data", str(root), "--model", "deformable_detr_micro", "--image-size",
                 "32", "--max-steps", "150", "--lr", "2e-3", "--set", "warmup_steps=10", "--out", str(ckpt),
                 "--device", "cpu", "--no-progress"]) == 0
    return root, ckpt


@pytest.mark.parametrize("method, args", [("gslora", ["method_args.beta=1.0", "method_args.alpha=0.0",
                                                     "method_args.forget_queries=overlapping"]),
                                          ("finetune", [])])
def test_forgetting_runs_and_gslora_lowers_ap_f(pretrained, tmp_path, method, args):
    root, ckpt = pretrained
    meta = json.loads((ckpt / "gslora_detection.json").read_text())
    assert meta["pretrain"]["test_ap"] > 1.0  # the detector learned something to forget
    out = tmp_path / "run"
    sets = ["replay_ratio=1.0", "max_steps=60", "lr=1e-2", "eval_every=0", *args]
    argv = ["forget", "--detection", "--checkpoint", str(ckpt), "--data", str(root), "--tasks", "two",
            "--method", method, "--out", str(out), "--device", "cpu", "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    row = results["tasks"][0]
    assert row["forget"] == ["two"]
    assert row["ap_f_before"] > 0
    if method == "gslora":  # the baseline's effect on this weak micro model is not reliably a drop
        assert row["ap_f"] < row["ap_f_before"]
    assert row["ap_r"] is not None and row["ap_o"] is None
    for f in ("results.md", "plots/boxes.png", "final/config.json", "final/model.safetensors", "plan.json"):
        assert (out / f).is_file(), f
    if method == "gslora":
        assert row["method_info"]["groups"] == ["enc0", "enc1", "dec0", "dec1"]
        assert (out / "adapters" / "task1" / "adapter_config.json").is_file()
        assert row["tunable_ratio"] < 5.0
    assert main(["evaluate", "--detection", "--checkpoint", str(out / "final"), "--data", str(root),
                 "--device", "cpu", "--json"]) == 0  # the image size comes from the run's final model


def test_demo_detection_pretrains_once_then_uses_the_cache(tmp_path, monkeypatch, capsys):
    from gslora.detection import cli as det_cli

    tiny = {"model": "deformable_detr_micro",
            "data": {"image_size": 32, "n_train": 60, "n_val": 20, "n_test": 20, "max_objects": 1, "scale": [0.5, 0.7]},
            "pretrain": {"max_steps": 4, "batch_size": 8, "warmup_steps": 1},
            "run": {"tasks": "2x1", "max_steps": 2, "batch_size": 4, "replay_ratio": 1.0, "eval_every": 0,
                    "image_size": 32}}
    monkeypatch.setattr(det_cli, "demo_settings", lambda: tiny)
    monkeypatch.setenv("GSLORA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    argv = ["demo", "--detection", "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "pre-training deformable_detr_micro" in first
    assert len(list((tmp_path / "cache").glob("demo-detection-*"))) == 1
    assert main(argv) == 0
    assert "using cached pre-trained detector" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [len(r["forget"]) for r in results["tasks"]] == [1, 1]
    first_task, second = results["tasks"]
    assert first_task["ap_o"] is None
    old = first_task["forget"][0]  # task 2's AP_o is the AP of task 1's category (None only without test boxes)
    assert (second["ap_o"] is None) == (second["class_ap"][old] is None)
    if second["ap_o"] is not None:
        assert second["ap_o"] == pytest.approx(second["class_ap"][old])


def test_a_detectors_history_binds_its_next_request(pretrained, tmp_path, capsys):
    """Forgetting again from a forgotten detector: the earlier category stays forgotten (never replayed, scored as
    AP_o), naming it again is refused, and the saved history continues."""
    root, ckpt = pretrained
    common = ["--detection", "--data", str(root), "--device", "cpu", "--no-progress", "--set", "replay_ratio=1.0",
              "--set", "max_steps=5", "--set", "eval_every=0"]
    assert main(["forget", "--checkpoint", str(ckpt), "--tasks", "two", "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["forget", "--checkpoint", str(tmp_path / "a" / "final"), "--tasks", "1x1",
                 "--out", str(tmp_path / "b"), *common]) == 0
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    task = results["plan"]["tasks"][0]
    assert results["plan"]["forgotten_before_names"] == ["two"]
    assert task["old"] == [2] and 2 not in task["remain"] and task["forget_names"] != ["two"]
    assert results["tasks"][0]["n_old"] == 1 and results["tasks"][0]["ap_o"] is not None
    history = json.loads((tmp_path / "b" / "final" / "gslora_detection.json").read_text())["history"]
    assert [h["forgotten"] for h in history] == [["two"], task["forget_names"]]
    capsys.readouterr()
    assert main(["forget", "--checkpoint", str(tmp_path / "b" / "final"), "--tasks", "two",
                 "--out", str(tmp_path / "c"), *common]) == 2
    assert "already forgotten" in capsys.readouterr().err


RESUME = ["--tasks", "2x1", "--device", "cpu", "--no-progress", "--set", "replay_ratio=1.0", "--set", "batch_size=32",
          "--set", "max_steps=8", "--set", "eval_every=4", "--set", "target_checks=2", "--set", "checkpoint_every=3",
          "--set", "lr=1e-2", "--set", "method_args.alpha=0.3", "--set", "method_args.beta=1.0"]


def _det_args(root, ckpt, out):
    return ["forget", "--detection", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(out), *RESUME]


def _det_finished(out):
    import torch
    from safetensors.torch import load_file
    from test_resume import _numbers

    results = _numbers(json.loads((out / "results.json").read_text()))
    weights = load_file(str(out / "final" / "model.safetensors"))
    history = json.loads((out / "final" / "gslora_detection.json").read_text())["history"]
    return results, {k: v.to(torch.float64) for k, v in weights.items()}, history


@pytest.fixture(scope="module")
def det_reference(pretrained, tmp_path_factory):
    """The uninterrupted detection run the killed ones must end at (run once for this module)."""
    root, ckpt = pretrained
    out = tmp_path_factory.mktemp("det-reference") / "run"
    assert main(_det_args(root, ckpt, out)) == 0
    return out, _det_finished(out)


def test_a_killed_detection_run_resumes_to_the_same_numbers(pretrained, det_reference, tmp_path):
    """SIGKILL mid-task (task 2, one step past its epoch checkpoint at step 3: the resume reads task 1's state, AP
    scores and figure predictions included, and the engine's state inside task 2); `--resume` ends with the
    uninterrupted run's results.json (every number, the checks and trials included), the same final weights and
    history. (Killing between tasks is the same task state without the epoch checkpoint; classification's resume
    tests cover that point of the shared loop.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    root, ckpt = pretrained
    ref_results, ref_weights, ref_history = det_reference[1]
    assert [len(r["checks"]) for r in ref_results["tasks"]] == [2, 2]  # the periodic check ran in both tasks
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    hook = Path(__file__).with_name("crash_hook.py")
    proc = subprocess.run([sys.executable, str(hook), "task2.step4", *_det_args(root, ckpt, out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed by SIGKILL at the named point
    assert not (out / "results.json").exists()
    assert (out / "state" / "task-1.pt").is_file() and (out / "state" / "epoch-task2.pt").is_file()
    assert main(_det_args(root, ckpt, out)) == 2  # an unfinished folder is not started over without a word
    assert main([*_det_args(root, ckpt, out), "--resume"]) == 0
    results, weights, history = _det_finished(out)
    assert results == ref_results
    assert history == ref_history
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert not (out / "state").exists()


def test_audit_works_on_a_detection_run(det_reference, tmp_path, capsys):
    """Recovery (head retraining on AP) and the query probe, on the run's final detector and the original; the AP
    the audit reads agrees with the run's own per-category test AP."""
    out, (results, _, _) = det_reference
    audit_dir = tmp_path / "audit"
    assert main(["audit", str(out), "--epochs", "2", "--device", "cpu", "--out", str(audit_dir), "--no-progress"]) == 0
    assert "Recovery (% of original AP_f)" in capsys.readouterr().out
    report = json.loads((audit_dir / "audit.json").read_text())
    assert (audit_dir / "audit.md").is_file() and (audit_dir / "recovery.png").is_file()
    forgotten = [n for r in results["tasks"] for n in r["forget"]]
    assert report["forget_classes"] == sorted(forgotten, key=CLASSES.index)
    for key, class_ap in (("original", results["pretrained"]["class_ap"]),
                          ("forgotten", results["tasks"][-1]["class_ap"])):
        m = report["models"][key]
        assert m["ap"]["ap_f"] == pytest.approx(np.mean([class_ap[n] for n in forgotten]))
        assert m["recovery"]["epochs"] == [0, 1, 2] and m["recovery"]["ap_f"][0] == pytest.approx(m["ap"]["ap_f"])
        assert m["recovery"]["recovery"] == pytest.approx(100 * m["recovery"]["final_ap_f"]
                                                          / report["models"]["original"]["ap"]["ap_f"])
        assert 0 <= m["probe"]["probe_f"] <= 100 and 0 <= m["probe"]["probe_r"] <= 100
    assert report["images"]["source"] == "training images the run never used" or report["images"]["run_images"] > 0
    assert main(["audit", str(out), "--retrain-full", "--device", "cpu", "--out", str(tmp_path / "b")]) == 2
    assert "--retrain-full does not apply to the audit of a detection run" in capsys.readouterr().err


def test_benchmark_works_on_detection(pretrained, tmp_path, capsys):
    """`gslora benchmark --detection`: every method from the same detector with the same plans; AP tables."""
    root, ckpt = pretrained
    out = tmp_path / "bench"
    argv = ["benchmark", "--detection", "--checkpoint", str(ckpt), "--data", str(root), "--setting", "single",
            "--methods", "gslora,finetune", "--out", str(out), "--device", "cpu", "--no-progress", "--strict",
            "--set", "replay_ratio=1.0", "--set", "max_steps=3", "--set", "eval_every=0", "--set", "batch_size=16"]
    assert main(argv) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["problem"] == "detection"
    assert [p["tasks"] for p in comparison["plans"]] == ["1x1", "1x2"]
    gs, ft = comparison["methods"]
    assert gs["status"] == ft["status"] == "ok"
    for a, b in zip(gs["runs"], ft["runs"]):  # the same plan and the same starting detector for both methods
        assert [r["forget"] for r in a["tasks"]] == [r["forget"] for r in b["tasks"]]
        assert a["tasks"][0]["ap_f_before"] == pytest.approx(b["tasks"][0]["ap_f_before"])
        assert a["tasks"][0]["ap_r_pretrained"] == pytest.approx(b["tasks"][0]["ap_r_pretrained"])
    assert gs["runs"][0]["tasks"][0]["method_info"]["groups"] == ["enc0", "enc1", "dec0", "dec1"]
    table = (out / "comparison.md").read_text()
    assert "AP_r ↑" in table and "AP_f ↓" in table and "Acc_r" not in table
    assert "ap_f" in (out / "comparison.csv").read_text().splitlines()[0]
    capsys.readouterr()
    assert main([*argv[:-12], "--setting", "few-shot", "--out", str(tmp_path / "c")]) == 2
    assert "few-shot setting does not apply to detection" in capsys.readouterr().err


TUNE = ["--setting", "single", "--budget", "2", "--device", "cpu", "--no-progress", "--set", "replay_ratio=1.0",
        "--set", "max_steps=12", "--set", "eval_every=0", "--set", "batch_size=16", "--set", "lr=1e-2"]


def test_tune_works_on_detection_and_benchmark_applies_its_values(pretrained, tmp_path, capsys):
    """`gslora tune --detection`: each method gets the same 2 trials (trial 1 the packaged values, trial 2 a draw
    from configs/detection_tune.yaml), scored by validation H-Mean on AP; the chosen values go to tuned.yaml and
    tuning.md, and `benchmark --detection --tuned` runs with them."""
    import yaml

    from gslora.detection.methods import tune_space

    root, ckpt = pretrained
    out = tmp_path / "tune"
    assert main(["tune", "--detection", "--checkpoint", str(ckpt), "--data", str(root), "--methods", "gslora,l2",
                 "--out", str(out), "--strict", *TUNE]) == 0
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    assert tuned["problem"] == "detection" and tuned["budget"] == 2 and tuned["setting"] == "single"
    assert tuned["plan"]["tasks"] == "1x2"  # the single-step run of the comparison's second plan (3 − 2)
    assert list(tuned["methods"]) == ["gslora", "l2"]
    # trial 1: the shared settings (lr 1e-2 here) and the methods' packaged arguments
    packaged = {"gslora": {"run": {"lr": 1e-2}, "args": {"beta": 0.2, "alpha": 0.3}},
                "l2": {"run": {"lr": 1e-2}, "args": {"lam": 0.01}}}
    for name, entry in tuned["methods"].items():
        assert entry["status"] == "ok"
        assert entry["search_space"] == tune_space(name)
        first, second = entry["trials"]
        assert first["values"] == packaged[name]  # trial 1: the packaged values
        assert second["values"] != first["values"]
        for section, knobs in entry["search_space"].items():  # trial 2: inside the search space
            for key, spec in knobs.items():
                kind, values = next(iter(spec.items()))
                v = second["values"][section][key]
                assert v in values if kind == "choice" else values[0] <= v <= values[1]
        for t in entry["trials"]:
            assert t["status"] == "ok" and set(t["val"][0]) == {"ap_f", "ap_r", "ap_o", "drop", "h_mean"}
            assert t["score"] == t["val"][0]["h_mean"]  # one task: the score is its validation H-Mean on AP
        scores = [t["score"] for t in entry["trials"]]
        chosen = entry["chosen"]
        assert chosen["trial"] == 1 + scores.index(max(scores))  # the best; a tie goes to the earlier trial
        assert chosen["score"] == max(scores)
        assert chosen["values"] == entry["trials"][chosen["trial"] - 1]["values"]
    report = (out / "tuning.md").read_text()
    assert "(detection)" in report and "val AP_r" in report and "val Acc_r" not in report
    for name in ("gslora", "l2"):
        assert sum(line.split("|")[1:2] == [f" {name} ".ljust(len(line.split("|")[1]))]
                   for line in report.splitlines() if line.startswith("|")) == 3  # chosen + 2 trials
    assert "gslora benchmark --detection" in capsys.readouterr().out

    bench = tmp_path / "bench"
    argv = ["benchmark", "--detection", "--checkpoint", str(ckpt), "--data", str(root), "--methods", "gslora",
            "--tuned", str(out / "tuned.yaml"), "--strict", "--out", str(bench), *TUNE[:2], *TUNE[4:]]
    assert main(argv) == 0
    comparison = json.loads((bench / "comparison.json").read_text())
    chosen = tuned["methods"]["gslora"]["chosen"]
    for run in comparison["methods"][0]["runs"]:
        assert run["config"]["lr"] == chosen["values"]["run"]["lr"]
        assert {k: run["method"]["args"][k] for k in ("beta", "alpha")} == chosen["values"]["args"]
    assert comparison["tuning"]["budget"] == 2 and "tuned by `gslora tune`" in (bench / "comparison.md").read_text()
    classification = dict(tuned)
    del classification["problem"]  # a tuned file without a problem is classification's
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(classification))
    capsys.readouterr()
    assert main([*argv[:9], str(tmp_path / "cls.yaml"), *argv[10:-2], "--out", str(tmp_path / "b2")]) == 2
    assert "chosen for classification methods, not detection" in capsys.readouterr().err
    from gslora.compare import _apply_tuned
    from gslora.errors import GsloraError

    with pytest.raises(GsloraError, match="chosen for detection methods, not classification"):
        _apply_tuned(str(out / "tuned.yaml"), ["gslora"], "single", None, CLASSES, {}, {}, "classification")


def _error_lines(stderr: str) -> list[str]:
    """stderr without transformers' weight-loading progress bar."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("Loading weights")]


def test_tune_detection_failures_and_refusals(pretrained, tmp_path, capsys):
    """A trial that raises stops `tune --detection --strict` with its one-sentence error; without --strict it is a
    failed trial (ranked last; nothing chosen: exit 1). Classification-only flags and settings are refused."""
    import yaml

    root, ckpt = pretrained
    base = ["tune", "--detection", "--checkpoint", str(ckpt), "--data", str(root), "--methods", "gslora", *TUNE]
    bad = ["--method-set", "gslora.sparsity=bogus"]  # fixed in every trial; fails when a trial builds the method
    capsys.readouterr()
    assert main([*base, *bad, "--strict", "--out", str(tmp_path / "strict")]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert err == ["gslora: error: method_args.sparsity must be prox or penalty, got 'bogus'."]
    assert not (tmp_path / "strict" / "tuned.yaml").exists()
    assert main([*base, *bad, "--out", str(tmp_path / "loose")]) == 1
    entry = yaml.safe_load((tmp_path / "loose" / "tuned.yaml").read_text())["methods"]["gslora"]
    assert entry["status"] == "failed" and entry["chosen"] is None
    assert [t["status"] for t in entry["trials"]] == ["failed", "failed"]
    assert all("sparsity must be prox or penalty" in t["error"] for t in entry["trials"])
    for extra, sentence in ((["--head-subset"], "--head-subset does not apply to `gslora tune --detection`"),
                            (["--setting", "few-shot"], "the few-shot setting does not apply to detection")):
        capsys.readouterr()
        assert main([*base, *extra, "--out", str(tmp_path / "x")]) == 2
        err = _error_lines(capsys.readouterr().err)
        assert len(err) == 1 and sentence in err[0]
