"""`gslora tune`: the same trial budget for every method, choice by validation H-Mean only, a versioned tuned file that
`gslora benchmark --tuned` applies, clear errors for a bad file."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import yaml

import gslora.tune as tune
from gslora.cli import main
from gslora.config import RunConfig, from_dict
from gslora.data.base import ImageDataset
from gslora.data.plan import make_plan
from gslora.errors import GsloraError
from gslora.forget import RunResult
from gslora.methods import get_method, list_methods
from gslora.presets import TUNABLE_RUN_KEYS, method_tune_space

FAST = {"epochs": 1, "batch_size": 16, "replay_ratio": 0.2, "device": "cpu", "save_adapters": False}


# --- search spaces and sampling (no training) -----------------------------------------------------------------------


def test_every_packaged_method_has_a_search_space_its_trials_can_run():
    for name in list_methods():
        space = method_tune_space(name)
        assert space["run"] or space["args"], name
        assert set(space["run"]) <= set(TUNABLE_RUN_KEYS)
        args = get_method(name).describe()["args"]
        assert all(k.split(".")[0] in args for k in space["args"]), name
        for trial in tune.sample_trials(space, 6, 1337, name):
            get_method(name, **tune.method_overrides(name, trial["args"]))  # valid method arguments
            from_dict(RunConfig, trial["run"]).validate()
    # the main knobs of the issue: GS-LoRA's lr, margin (continual) or BND (single step), beta, alpha;
    # a baseline's lr and loss weight
    gs = method_tune_space("gslora")
    assert set(gs["run"]) == {"lr"} and set(gs["args"]) == {"forget_margin", "bound", "beta", "alpha"}
    assert set(method_tune_space("ewc")["run"]) == {"lr"} and set(method_tune_space("ewc")["args"]) == {"lam"}


@pytest.mark.parametrize("tune_key, message", [
    ({"run": {"epochs": {"log": [1, 10]}}}, "may vary only lr"),
    ({"args": {"nope": {"log": [1, 10]}}}, "not an argument"),
    ({"args": {"lam": {"log": [0, 10]}}}, "0 < low < high"),
    ({"args": {"lam": {"uniform": [3, 1]}}}, "low < high"),
    ({"args": {"lam": {"choice": []}}}, "non-empty list"),
    ({"args": {"lam": [1, 2]}}, "must be one of"),
    ({"args": {"lam": {"log": [1, "x"]}}}, "two numbers"),
    ({"grid": {}}, "only run"),
    ({}, "empty"),
    ([1, 2], "mapping"),
])
def test_the_preset_loader_rejects_a_bad_search_space(monkeypatch, tune_key, message):
    preset = {"args": {"lam": 1.0}, "run": {"lr": 1e-3}, "tune": tune_key}
    monkeypatch.setattr("gslora.presets.method_preset", lambda name: preset)
    with pytest.raises(GsloraError, match=message):
        method_tune_space("ewc")


def test_sampling_is_seeded_within_the_space_and_exactly_the_budget():
    space = {"run": {"lr": {"log": [1e-4, 1e-2]}}, "args": {"lam": {"uniform": [1.0, 3.0]}, "k": {"choice": [1, 2]}}}
    for sampler in ("random", "grid"):
        trials = tune.sample_trials(space, 7, 1337, "ewc", sampler)
        assert len(trials) == 7 and trials[0] == {"run": {}, "args": {}}  # trial 1: the packaged values
        assert trials == tune.sample_trials(space, 7, 1337, "ewc", sampler)  # deterministic
        assert trials != tune.sample_trials(space, 7, 1338, "ewc", sampler)
        for t in trials[1:]:
            assert 1e-4 <= t["run"]["lr"] <= 1e-2 and 1.0 <= t["args"]["lam"] <= 3.0 and t["args"]["k"] in (1, 2)
        assert len({json.dumps(t, sort_keys=True) for t in trials}) == 7  # no trial repeats another
    grid = tune.sample_trials(space, 7, 1337, "ewc", "grid")  # 2 points per knob: the ends of each range
    assert {t["run"]["lr"] for t in grid[1:]} <= {1e-4, 1e-2} and {t["args"]["lam"] for t in grid[1:]} <= {1.0, 3.0}
    assert tune.sample_trials(space, 1, 1, "ewc") == [{"run": {}, "args": {}}]
    with pytest.raises(GsloraError, match="budget"):
        tune.sample_trials(space, 0, 1, "ewc")


def test_the_tuning_plan_is_the_first_task_of_the_comparisons_plan():
    plan = tune.tuning_plan("continual", 20)
    assert plan["tasks"] == "1x4" and plan["of"] == "4x4" and plan["protocol"] == "continual"
    short, full = make_plan(list(range(20)), "1x4", seed=5), make_plan(list(range(20)), "4x4", seed=5)
    assert short.tasks[0] == full.tasks[0]  # same forget, remain and old classes
    assert tune.tuning_plan("single", 20)["tasks"] == "1x2"
    assert tune.tuning_plan("single", 20)["protocol"] == "single_step"
    with pytest.raises(GsloraError, match="1 to 4"):
        tune.tuning_plan("continual", 20, tasks=5)


# --- selection by validation only -----------------------------------------------------------------------------------


class Trap(ImageDataset):
    """A test split that fails the run if any image of it is read."""

    def __init__(self, like):
        self.targets, self.classes = list(like.targets), list(like.classes)

    def __getitem__(self, i):
        raise AssertionError("the test split was read during tuning")


def test_every_method_gets_the_budget_and_the_test_split_is_never_read(micro_model, micro_data):
    data = dataclasses.replace(micro_data, test=Trap(micro_data.test))
    done = []
    tuned = tune.run_tuning(micro_model, micro_data.classes, data, "continual", "gslora,head,ssd", budget=3,
                            base_config=FAST, on_trial_done=lambda m, t: done.append((m, t["trial"])))
    assert done == [(m, k) for m in ("gslora", "head", "ssd") for k in (1, 2, 3)]
    for name, entry in tuned["methods"].items():
        trials = entry["trials"]
        assert len(trials) == 3 and all(t["status"] == "ok" for t in trials), (name, trials)
        best = max(trials, key=lambda t: (t["score"], -t["trial"]))
        assert entry["chosen"]["trial"] == best["trial"] and entry["chosen"]["score"] == best["score"]
        assert "test" not in json.dumps(trials)  # no test number is recorded
    assert tuned["methods"]["gslora"]["trials"][0]["values"]["args"]["bound"] == 105.0  # trial 1: the preset
    assert tuned["data"]["test"] == len(micro_data.test) and tuned["budget"] == 3


def test_the_choice_follows_validation_where_test_disagrees(micro_model, micro_data, monkeypatch):
    """A fake run whose validation and test H-Mean rank the learning rates in opposite orders."""
    seen = []

    def fake_run(model, classes, data, cfg, method=None, **kw):
        seen.append(data.test is data.val)
        val = 100 * cfg.lr / 1e-2  # validation prefers the largest lr, test the smallest
        row = {"h_mean": 100 - val, "val": {"h_mean": val, "acc_f": 0.0, "acc_r": val, "acc_o": None, "drop": 50.0},
               "steps_all_trials": 1}
        return RunResult(results={"tasks": [row]}, model=model, plan=None)

    monkeypatch.setattr(tune, "run_forgetting", fake_run)
    tuned = tune.run_tuning(micro_model, micro_data.classes, micro_data, "continual", "ewc", budget=6,
                            base_config=FAST)
    trials = tuned["methods"]["ewc"]["trials"]
    assert all(seen) and len(seen) == 6
    top = max(trials, key=lambda t: t["values"]["run"]["lr"])
    assert tuned["methods"]["ewc"]["chosen"]["trial"] == top["trial"]
    assert tuned["methods"]["ewc"]["chosen"]["run"]["lr"] == top["values"]["run"]["lr"]


def test_all_methods_get_exactly_the_budget_and_each_trial_runs_its_values(micro_model, micro_data, monkeypatch):
    calls = []

    def fake_run(model, classes, data, cfg, method=None, **kw):
        calls.append((cfg.method, cfg.lr, method.describe()["args"], cfg.tasks, cfg.protocol))
        row = {"val": {"h_mean": 10.0 * len(calls) % 7, "acc_f": 0.0, "acc_r": 1.0, "acc_o": None, "drop": 1.0},
               "steps_all_trials": 1}
        return RunResult(results={"tasks": [row]}, model=model, plan=None)

    monkeypatch.setattr(tune, "run_forgetting", fake_run)
    tuned = tune.run_tuning(micro_model, micro_data.classes, micro_data, "continual", "all", budget=4,
                            base_config=FAST)
    assert list(tuned["methods"]) == list_methods()
    assert len(calls) == 4 * len(list_methods())
    for name, entry in tuned["methods"].items():
        assert len(entry["trials"]) == 4, name
        runs = [c for c in calls if c[0] == name]
        assert all(tasks == "1x4" and protocol == "continual" for *_, tasks, protocol in runs)
        for trial, (_, lr, args, _, _) in zip(entry["trials"], runs):
            for key, value in trial["overrides"]["run"].items():
                assert key == "lr" and lr == value
            for key, value in trial["overrides"]["args"].items():
                assert tune._arg_value(args, key) == value, (name, key)


def test_single_step_tuning_uses_the_single_step_preset(micro_model, micro_data, monkeypatch):
    def fake_run(model, classes, data, cfg, method=None, **kw):
        row = {"val": {"h_mean": 1.0, "acc_f": 0.0, "acc_r": 1.0, "acc_o": None, "drop": 1.0}, "steps_all_trials": 1}
        return RunResult(results={"tasks": [row]}, model=model, plan=None)

    monkeypatch.setattr(tune, "run_forgetting", fake_run)
    tuned = tune.run_tuning(micro_model, micro_data.classes, micro_data, "single", "gslora", budget=2,
                            base_config=FAST)
    assert tuned["plan"]["protocol"] == "single_step" and tuned["plan"]["tasks"] == "1x2"
    assert tuned["methods"]["gslora"]["trials"][0]["values"]["args"]["bound"] == 110.0  # the single-step preset


@pytest.mark.parametrize("setting, protocol, constraint", [
    ("few-shot", "few_shot", {"shots": 4}),  # (FAST sets batch_size 16 over the constraint's 4)
    ("missing", "continual", {"missing_ratio": 0.5}),
])
def test_constrained_settings_tune_under_their_constraint(micro_model, micro_data, monkeypatch, setting, protocol,
                                                          constraint):
    seen = []

    def fake_run(model, classes, data, cfg, method=None, **kw):
        seen.append(cfg)
        row = {"val": {"h_mean": 1.0, "acc_f": 0.0, "acc_r": 1.0, "acc_o": None, "drop": 1.0}, "steps_all_trials": 1}
        return RunResult(results={"tasks": [row]}, model=model, plan=None)

    monkeypatch.setattr(tune, "run_forgetting", fake_run)
    plan = tune.tuning_plan(setting, 20)
    assert plan["tasks"] == "1x4" and plan["of"] == "4x4" and plan["protocol"] == protocol
    tuned = tune.run_tuning(micro_model, micro_data.classes, micro_data, setting, "gslora", budget=2,
                            base_config=FAST)
    assert tuned["setting"] == setting and tuned["plan"]["protocol"] == protocol
    assert len(seen) == 2
    for cfg in seen:  # every trial ran under the setting's data constraint and protocol
        assert all(getattr(cfg, k) == v for k, v in constraint.items()) and cfg.protocol == protocol
    if setting == "few-shot":  # the few-shot preset's alpha in trial 1
        assert tuned["methods"]["gslora"]["trials"][0]["values"]["args"]["alpha"] == 0.1


def test_a_killed_tuning_resumes_without_redoing_finished_trials(micro_model, micro_data, monkeypatch, tmp_path):
    calls = []

    def fake_run(model, classes, data, cfg, method=None, **kw):
        calls.append(cfg.lr)
        if len(calls) == 3:
            raise KeyboardInterrupt
        row = {"val": {"h_mean": cfg.lr * 1e3, "acc_f": 0.0, "acc_r": 1.0, "acc_o": None, "drop": 1.0},
               "steps_all_trials": 1}
        return RunResult(results={"tasks": [row]}, model=model, plan=None)

    monkeypatch.setattr(tune, "run_forgetting", fake_run)
    args = (micro_model, micro_data.classes, micro_data, "continual", "head")
    with pytest.raises(KeyboardInterrupt):
        tune.run_tuning(*args, budget=4, base_config=FAST, out_dir=tmp_path)
    with pytest.raises(GsloraError, match="--resume"):
        tune.run_tuning(*args, budget=4, base_config=FAST, out_dir=tmp_path)
    with pytest.raises(GsloraError, match="other settings"):
        tune.run_tuning(*args, budget=5, base_config=FAST, out_dir=tmp_path, resume=True)
    tuned = tune.run_tuning(*args, budget=4, base_config=FAST, out_dir=tmp_path, resume=True)
    assert len(calls) == 5  # 2 finished, 1 killed, then 2 more: the finished ones were read back
    assert len(tuned["methods"]["head"]["trials"]) == 4
    assert not (tmp_path / tune.PARTIAL_FILE).exists() and (tmp_path / tune.TUNED_FILE).is_file()


# --- the tuned file and benchmark --tuned ---------------------------------------------------------------------------


def _cli(micro_checkpoint, *extra):
    return ["--checkpoint", str(micro_checkpoint), "--data", "faces", "--device", "cpu", "--no-progress",
            "--epochs", "1", "--set", "batch_size=16", "--set", "replay_ratio=0.2", *extra]


def test_tune_cli_writes_a_file_that_benchmark_applies(micro_checkpoint, micro_data, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.setattr("gslora.data.load_data", lambda *a, **k: micro_data)
    out = tmp_path / "tune"
    assert main(["tune", *_cli(micro_checkpoint), "--methods", "head,ssd", "--budget", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trial 2/2" in printed and "tuned.yaml" in printed
    text = (out / "tuned.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["version"] == tune.TUNED_VERSION and doc["budget"] == 2 and doc["setting"] == "continual"
    assert doc["data"]["name"] == micro_data.name and doc["plan"]["tasks"] == "1x4"
    assert set(doc["methods"]) == {"head", "ssd"} and doc["methods"]["ssd"]["search_space"]["args"]
    assert all(len(e["trials"]) == 2 for e in doc["methods"].values())
    assert tune.load_tuned(out / "tuned.yaml") == doc == tune.load_tuned(out)  # round trip (file or folder)
    assert (out / "tuning.md").is_file() and "2 trials per method" in (out / "tuning.md").read_text()

    # distinctive values, so the comparison shows it ran with them
    doc["methods"]["head"]["chosen"]["run"] = {"lr": 0.00123}
    doc["methods"]["head"]["chosen"]["values"]["run"] = {"lr": 0.00123}
    doc["methods"]["ssd"]["chosen"]["args"] = {"selection_weighting": 3.21, "dampening_constant": 0.9}
    doc["methods"]["ssd"]["chosen"]["values"]["args"] = {"selection_weighting": 3.21, "dampening_constant": 0.9}
    tune.write_tuned(tmp_path / "edited.yaml", doc)
    bench = tmp_path / "bench"
    assert main(["benchmark", *_cli(micro_checkpoint), "--setting", "continual", "--methods", "head,ssd",
                 "--out", str(bench), "--tuned", str(tmp_path / "edited.yaml")]) == 0
    saved = json.loads((bench / "comparison.json").read_text())
    head, ssd = saved["methods"]
    assert head["runs"][0]["config"]["lr"] == 0.00123
    assert ssd["runs"][0]["method"]["args"]["selection_weighting"] == 3.21
    assert ssd["runs"][0]["method"]["args"]["dampening_constant"] == 0.9
    assert saved["tuning"]["budget"] == 2 and saved["tuning"]["file"] == str(tmp_path / "edited.yaml")
    md = (bench / "comparison.md").read_text()
    assert "**2 trials**" in md and "lr=0.00123" in md and "selection_weighting=3.21" in md
    assert "lr=0.00123" in capsys.readouterr().out

    # the user's --method-set still wins over a tuned value, and the table says so
    assert main(["benchmark", *_cli(micro_checkpoint), "--setting", "continual", "--methods", "ssd", "--overwrite",
                 "--out", str(bench), "--tuned", str(tmp_path / "edited.yaml"),
                 "--method-set", "ssd.selection_weighting=7"]) == 0
    saved = json.loads((bench / "comparison.json").read_text())
    assert saved["methods"][0]["runs"][0]["method"]["args"]["selection_weighting"] == 7
    assert "overridden here: selection_weighting" in (bench / "comparison.md").read_text()


def _good_doc():
    space = method_tune_space("head")
    values = {"run": {"lr": 1e-3}, "args": {}}
    return {"version": tune.TUNED_VERSION, "budget": 2, "setting": "continual", "sampler": "random",
            "data": {"name": "faces", "classes": 20}, "plan": {"tasks": "1x4"},
            "methods": {"head": {"search_space": space, "trials": [{"trial": 1}, {"trial": 2}],
                                 "chosen": {"trial": 1, "score": 50.0, "values": values, "run": {"lr": 1e-3},
                                            "args": {}}}}}


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d["methods"].update(nope=d["methods"]["head"]), "unknown method 'nope'"),
    (lambda d: d["methods"]["head"]["chosen"].update(run={"lr": -1.0}), "lr must be in"),
    (lambda d: d["methods"]["head"]["chosen"].update(run={"epochs": 3}), "may set only lr"),
    (lambda d: d["methods"]["head"]["chosen"].update(args={"bogus": 1}), "unknown key 'bogus'"),
    (lambda d: d.pop("methods"), "not a tuned file"),
    (lambda d: d.pop("budget"), "lacks 'budget'"),
])
def test_a_bad_tuned_file_is_one_clear_error(tmp_path, edit, message):
    doc = _good_doc()
    tune.check_tuned(copy.deepcopy(doc))
    edit(doc)
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(GsloraError, match=message) as err:
        tune.load_tuned(path)
    assert str(path) in str(err.value)


def test_benchmark_refuses_a_tuned_file_for_other_data_setting_or_methods(micro_checkpoint, micro_data, tmp_path,
                                                                         capsys, monkeypatch):
    monkeypatch.setattr("gslora.data.load_data", lambda *a, **k: micro_data)
    bench = ["benchmark", *_cli(micro_checkpoint), "--methods", "head", "--out", str(tmp_path / "b")]
    (tmp_path / "junk.yaml").write_text("{ not: yaml: at all")
    doc = _good_doc()
    doc["data"]["name"] = micro_data.name
    cases = {"missing.yaml": (None, "does not exist"), "junk.yaml": (None, "not valid YAML"),
             "other-data.yaml": ({**doc, "data": {"name": "orl", "classes": 40}}, "tune on this data first"),
             "single.yaml": ({**doc, "setting": "single"}, "--setting continual"),
             "no-ssd.yaml": (doc, "no values for method 'ssd'")}
    for name, (content, message) in cases.items():
        if content is not None:
            (tmp_path / name).write_text(yaml.safe_dump(content))
        methods = ["--methods", "head,ssd"] if name == "no-ssd.yaml" else []
        assert main([*bench, "--setting", "continual", *methods, "--tuned", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert message in err, (name, err)
        assert not (tmp_path / "b" / "comparison.json").exists()
    assert main(["tune", *_cli(micro_checkpoint), "--methods", "nope", "--out", str(tmp_path / "t")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["tune", *_cli(micro_checkpoint), "--methods", "head", "--budget", "0",
                 "--out", str(tmp_path / "t")]) == 2
    assert "budget" in capsys.readouterr().err


def test_h_mean_scores_rank_failed_and_missing_trials_last():
    trials = [{"trial": 1, "status": "ok", "score": None}, {"trial": 2, "status": "failed", "score": 99.0},
              {"trial": 3, "status": "ok", "score": 40.0}, {"trial": 4, "status": "ok", "score": 40.0}]
    assert tune._best(trials)["trial"] == 3  # a tie goes to the earlier trial
    assert tune._best(trials[:2]) is None
    assert math.isclose(tune._score([{"val": {"h_mean": 10.0}}, {"val": {"h_mean": 30.0}}]), 20.0)


def test_the_comparison_builds_each_method_from_its_resolved_config(micro_model, micro_data, monkeypatch):
    """Protocol presets reach the comparison (GS-LoRA single step: BND 110) under tuned and explicit values."""
    import gslora.compare as compare

    seen = []

    def fake_run(model, classes, data, cfg, method=None, **kw):
        seen.append(method.describe()["args"])
        row = {"val": {"h_mean": 1.0}, "task": 1}
        return RunResult(results={"tasks": [row], "wall_seconds": 0.0}, model=model, plan=None)

    monkeypatch.setattr(compare, "run_forgetting", fake_run)
    compare.run_comparison(micro_model, micro_data.classes, micro_data, "single", "gslora", base_config=FAST,
                           method_args={"gslora": {"alpha": 0.1}})
    assert all(a["bound"] == 110.0 and a["alpha_warmup_epochs"] == 20 and a["alpha"] == 0.1 for a in seen)


def test_a_method_the_setting_cannot_run_is_tuned_as_not_run_and_benchmarked_as_not_run(micro_model, micro_data):
    tuned = tune.run_tuning(micro_model, micro_data.classes, micro_data, "few-shot", "retrain-full", budget=3,
                            base_config=FAST)
    entry = tuned["methods"]["retrain-full"]
    assert entry["status"] == "not run" and "every training image" in entry["reason"]
    assert len(entry["trials"]) == 1  # the same data is withheld from every trial: it stops after the first
    assert tune.tuned_settings(tuned, "retrain-full") == {"run": {}, "args": {}}
    from gslora.compare import run_comparison

    comp = run_comparison(micro_model, micro_data.classes, micro_data, "few-shot", "retrain-full",
                          base_config=FAST, tuned=tuned)
    (row,) = comp["methods"]
    assert row["status"] == "not run" and "every training image" in row["error"]
