"""The comparison benchmark: one row per method, a failing method reported as failed while the others still run."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from gslora.cli import main
from gslora.compare import parse_methods, run_benchmark, setting_plans
from gslora.errors import GsloraError
from gslora.methods import METHODS, Method, list_methods

FAST = {"epochs": 1, "batch_size": 16, "replay_ratio": 0.2, "device": "cpu", "save_adapters": False}


class Broken(Method):
    name = "broken"  # registered by the tests that use it, with an empty preset (_register_broken)

    def prepare(self, model, ctx):
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        return model

    def loss(self, model, remain, forget, state):
        raise RuntimeError("injected failure")


def _register_broken(monkeypatch):
    import gslora.presets as presets

    real = presets.method_preset
    monkeypatch.setitem(METHODS, "broken", Broken)
    fake = lambda name: {} if name == "broken" else real(name)  # noqa: E731
    monkeypatch.setattr(presets, "method_preset", fake)
    monkeypatch.setattr("gslora.tune.method_preset", fake)  # tune holds its own reference


def test_settings_scale_the_papers_plans_to_the_class_count():
    assert setting_plans("single", 100) == [("100-5", "1x5"), ("100-10", "1x10"), ("100-50", "1x50"),
                                            ("100-90", "1x90")]
    assert setting_plans("single", 20) == [("20-1", "1x1"), ("20-2", "1x2"), ("20-10", "1x10"), ("20-18", "1x18")]
    assert setting_plans("continual", 100) == [("continual", "4x20")]
    assert setting_plans("continual", 40) == [("continual", "4x8")]
    with pytest.raises(GsloraError, match="setting"):
        setting_plans("sometimes", 20)
    assert parse_methods("all") == list_methods()
    with pytest.raises(GsloraError, match="nope"):
        parse_methods("gslora,nope")


def test_benchmark_table_has_a_row_per_method_and_marks_a_failure(micro_model, micro_data, tmp_path, monkeypatch):
    _register_broken(monkeypatch)  # a method whose every step raises, registered for this test only
    head_args = {"head": {"mode": "mask"}}
    before = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    comp = run_benchmark(micro_model, micro_data.classes, micro_data, "continual", "gslora,broken,head",
                         base_config=FAST, method_args=head_args, out_dir=tmp_path / "bench", strict=False)
    assert all(torch.equal(p, before[n]) for n, p in micro_model.named_parameters())  # each run got its own copy
    by_name = {e["method"]: e for e in comp["methods"]}
    assert list(by_name) == ["gslora", "broken", "head"]
    assert by_name["broken"]["status"] == "failed" and "injected failure" in by_name["broken"]["error"]
    for name in ("gslora", "head"):
        e = by_name[name]
        assert e["status"] == "ok" and e["wall_seconds"] > 0
        (run,) = e["runs"]
        assert [r["task"] for r in run["tasks"]] == [1, 2, 3, 4]
    # same plan and subsets for every method: identical forget sets and replay sizes
    g, h = by_name["gslora"]["runs"][0]["tasks"], by_name["head"]["runs"][0]["tasks"]
    assert [r["forget"] for r in g] == [r["forget"] for r in h]
    assert [r["replay_images"] for r in g] == [r["replay_images"] for r in h]

    out = tmp_path / "bench"
    for name in ("comparison.md", "comparison.csv", "comparison.json", "plots/h_mean.png"):
        assert (out / name).is_file(), name
    md = (out / "comparison.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    rows = {line.split("|")[1].strip(): line for line in table[2:]}  # after the header and sub-header lines
    assert set(rows) == {"Pre-train", "gslora", "broken", "head"}
    assert "failed: RuntimeError: injected failure" in rows["broken"]
    assert "T4 " in table[0] and "Acc_o" in table[1] and "Tunable ratio" in table[0]
    with open(out / "comparison.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    statuses = sorted({(r["method"], r["status"]) for r in lines})
    assert statuses == [("broken", "failed"), ("gslora", "ok"), ("head", "ok")]
    assert sum(r["method"] == "gslora" for r in lines) == 4
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["setting"] == "continual" and len(saved["methods"]) == 3
    with pytest.raises(GsloraError, match="already holds"):
        run_benchmark(micro_model, micro_data.classes, micro_data, "continual", "head", base_config=FAST,
                      out_dir=out)


def test_strict_comparison_and_tuning_raise_the_error(micro_model, micro_data, monkeypatch):
    from gslora.tune import run_tuning

    _register_broken(monkeypatch)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_benchmark(micro_model, micro_data.classes, micro_data, "continual", "broken", base_config=FAST,
                      strict=True)
    monkeypatch.setattr("gslora.tune.method_tune_space", lambda name: {"run": {"lr": {"log": [1e-3, 1e-2]}},
                                                                       "args": {}})
    with pytest.raises(RuntimeError, match="injected failure"):
        run_tuning(micro_model, micro_data.classes, micro_data, "continual", "broken", budget=1, base_config=FAST,
                   strict=True)


def test_benchmark_cli_single_step(micro_checkpoint, micro_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("gslora.data.load_data", lambda *a, **k: micro_data)  # the 16 px micro faces of the fixture
    out = tmp_path / "cli"
    args = ["benchmark", "--checkpoint", str(micro_checkpoint), "--data", "faces", "--setting", "single",
            "--methods", "head,ssd", "--out", str(out), "--epochs", "1", "--device", "cpu", "--no-progress",
            "--set", "batch_size=16", "--set", "replay_ratio=0.2", "--method-set", "head.mode=mask"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "20-1" in printed and "20-18" in printed
    saved = json.loads((out / "comparison.json").read_text())
    assert [e["method"] for e in saved["methods"]] == ["head", "ssd"]
    assert [r["label"] for r in saved["methods"][0]["runs"]] == ["20-1", "20-2", "20-10", "20-18"]
    assert saved["methods"][0]["runs"][0]["method"]["args"]["mode"] == "mask"
    assert main(args[:-2] + ["--method-set", "bogus"]) == 2  # a malformed override is a user error



def _numbers(obj):
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if not k.endswith("seconds")}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def test_a_killed_comparison_resumes_without_redoing_finished_runs(micro_model, micro_data, tmp_path, monkeypatch):
    import copy

    import gslora.compare as compare

    real, calls = compare.run_forgetting, []

    def dies_in_head(*args, **kw):
        calls.append(kw["method"].name)
        if kw["method"].name == "head" and len(calls) == 2:
            raise KeyboardInterrupt  # the process dies during the second method
        return real(*args, **kw)

    monkeypatch.setattr(compare, "run_forgetting", dies_in_head)
    out, args = tmp_path / "bench", (micro_data.classes, micro_data, "continual", "gslora,head")
    kw = {"base_config": FAST, "method_args": {"head": {"mode": "mask"}}}
    with pytest.raises(KeyboardInterrupt):
        compare.run_comparison(copy.deepcopy(micro_model), *args, out_dir=out, **kw)
    with pytest.raises(GsloraError, match="unfinished comparison; pass --resume"):
        compare.run_comparison(copy.deepcopy(micro_model), *args, out_dir=out, **kw)
    resumed = compare.run_comparison(copy.deepcopy(micro_model), *args, out_dir=out, resume=True, **kw)
    assert calls == ["gslora", "head", "head"]  # the finished gslora run was read back, not trained again
    reference = compare.run_comparison(copy.deepcopy(micro_model), *args, out_dir=tmp_path / "ref", **kw)
    assert _numbers(resumed["methods"]) == _numbers(reference["methods"])
    assert json.loads((out / "comparison.json").read_text())["methods"][0]["status"] == "ok"
    read_back = resumed["methods"][0]  # its run was read back: its time is the run's, not the 0 s of reading it
    assert read_back["wall_seconds"] == pytest.approx(sum(r["wall_seconds"] for r in read_back["runs"]))


def test_depth_columns_audit_every_method_against_one_retrained_reference(micro_model, micro_data, micro_checkpoint,
                                                                           tmp_path, monkeypatch):
    import gslora.audit

    calls, real = [], gslora.audit.retrain_full_reference
    monkeypatch.setattr(gslora.audit, "retrain_full_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "bench"
    comp = run_benchmark(micro_model, micro_data.classes, micro_data, "continual", "gslora,head", base_config=FAST,
                         method_args={"head": {"mode": "mask"}}, out_dir=out, source_checkpoint=micro_checkpoint,
                         depth={"max_steps": 20, "batch_size": 32, "lr": 3e-3})
    (run,) = comp["depth"]["runs"].values()
    assert len(calls) == 1  # one reference for the plan's class set, shared by every method
    assert set(run["methods"]) == {"gslora", "head"} and run["forgotten_classes"] == 16
    audit = json.loads((out / "depth" / "continual" / "audit.json").read_text())
    assert audit["compare"] == ["head"]  # one audit: the first method audited, the others compared
    ref = audit["models"]["retrained"]
    assert run["retrained"]["probe_f"] == ref["probe"]["acc_f"]
    for method, label in (("gslora", "forgotten"), ("head", "head")):
        m, got = audit["models"][label], run["methods"][method]
        assert got["probe_f"] == m["probe"]["acc_f"] and got["acc_f"] == m["accuracy"]["acc_f"]
        assert got["probe_gap"] == pytest.approx(m["probe"]["acc_f"] - ref["probe"]["acc_f"])
        recovered = 100 * m["recovery"]["recovered_fraction"]
        assert got["recovery_gap"] == pytest.approx(recovered - 100 * ref["recovery"]["recovered_fraction"])
        assert m["relearn"] is None  # the comparison's audit leaves the relearn test out
    md = (out / "comparison.md").read_text()
    assert "## Depth" in md and "retrain (reference)" in md
    rows = [line for line in md.split("## Depth")[1].splitlines() if line.startswith("| head ")]
    assert len(rows) == 1 and f"{run['methods']['head']['probe_gap']:+.1f}" in rows[0]
    with pytest.raises(GsloraError, match="depth"):
        run_benchmark(micro_model, micro_data.classes, micro_data, "continual", "head", base_config=FAST,
                      method_args={"head": {"mode": "mask"}}, depth=True)  # no output folder: nothing to audit
