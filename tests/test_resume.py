"""Runs that survive a crash: a tiny continual run is killed with SIGKILL at several points (the test's own hook,
tests/crash_hook.py, makes the process kill itself at a named point); each resumed run ends with the same results.json,
number for number, and the same final weights as the uninterrupted run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gslora import RunConfig, RunFolder, resolve, run_forgetting
from gslora.cli import main
from gslora.errors import GsloraError
from gslora.methods import get_method

SETTINGS = ["--tasks", "3x2", "--epochs", "3", "--device", "cpu", "--no-progress", "--set", "batch_size=16",
            "--set", "replay_ratio=0.5", "--set", "lr=3e-3", "--set", "method_args.lora_alpha=8.0"]


def _args(ckpt, data, out, *extra):
    return ["forget", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), *SETTINGS, *extra]


def _killed_run(ckpt, data, out, point, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    hook = Path(__file__).with_name("crash_hook.py")  # the test's own SIGKILL hook around the command line
    proc = subprocess.run([sys.executable, str(hook), point, *_args(ckpt, data, out, *extra)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed by SIGKILL at the named point


UNREPEATABLE = ("time", "request", "entry_sha256", "previous")  # the record's clock and ids (its weight hashes stay)


def _numbers(obj):
    """results.json without wall-clock seconds and the record's times and ids (everything else must be equal, number
    for number, the record's weight hashes included)."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if not k.endswith("seconds") and k not in UNREPEATABLE}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def _finished(out):
    return _numbers(json.loads((out / "results.json").read_text())), load_file(str(out / "final.safetensors"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, _micro_pretrained, micro_data):
    """A checkpoint and an image folder (train/ + test/, as conftest's micro_folder), made once for this module."""
    from PIL import Image

    from gslora.models import save_checkpoint

    root = tmp_path_factory.mktemp("resume")
    ckpt = save_checkpoint(_micro_pretrained[0], root / "micro.safetensors", micro_data.classes)
    for split, ds, per_class in (("train", micro_data.train, 6), ("test", micro_data.test, 3)):
        seen = {}
        for i, t in enumerate(ds.targets):
            if seen.get(t, 0) < per_class:
                seen[t] = seen.get(t, 0) + 1
                d = root / "faces" / split / ds.classes[t]
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray((ds[i][0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()).save(d / f"{i}.png")
    return ckpt, root / "faces"


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_args(*inputs, out)) == 0
    return _finished(out)


@pytest.mark.parametrize("point, extra", [
    ("task1.step6", ["--set", "checkpoint_every=1"]),  # during task 1, after its first epoch checkpoint
    ("after-task2", []),  # between tasks (task 2's state then cut short: the previous state is used)
    ("task3.step5", []),  # during the last task, no epoch checkpoints: from the end of task 2
])
def test_a_killed_run_resumes_to_the_same_numbers(tmp_path, inputs, reference, point, extra, capsys):
    out = tmp_path / "run"
    _killed_run(*inputs, out, point, *extra)
    folder = RunFolder(out)
    assert folder.is_unfinished() and not (out / "results.json").exists()
    if point == "task1.step6":
        assert (out / "state" / "epoch-task1.pt").is_file()
    if point == "after-task2":
        state = out / "state" / "task-2.pt"
        state.write_bytes(state.read_bytes()[:1000])  # a power loss that beat the rename's durability
    assert main(_args(*inputs, out)) == 2  # neither --resume nor --overwrite
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert main(_args(*inputs, out, "--resume", "--set", "lr=1e-3")) == 2  # other numbers: not the same run
    assert "used lr = 0.003, not 0.001" in capsys.readouterr().err
    assert main(_args(*inputs, out, "--resume")) == 0
    assert main(_args(*inputs, out, "--resume")) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    results, weights = _finished(out)
    ref_results, ref_weights = reference
    assert results == ref_results
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert not (out / "state").exists()


class _Exploding:
    """Wraps GS-LoRA; from task 2 on its forgetting term is NaN."""

    def __new__(cls):
        method = get_method("gslora", lora_alpha=8.0)
        real = method._forget_term

        def forget_term(*args):
            term = real(*args)
            return term * math.nan if method.position >= 1 else term

        method._forget_term = forget_term
        return method


def test_a_nan_loss_stops_with_the_task_epoch_and_term_and_leaves_a_resumable_run(tmp_path, micro_model, micro_data):
    out = tmp_path / "run"
    cfg = RunConfig(tasks="2x2", epochs=2, batch_size=16, replay_ratio=0.3, lr=3e-3, device="cpu",
                    save_adapters=False)
    with pytest.raises(GsloraError, match=r"task 2, epoch 1: the loss term 'forget' became nan"):
        run_forgetting(micro_model, micro_data.classes, micro_data, cfg, out_dir=out, method=_Exploding())
    folder = RunFolder(out)
    assert folder.is_unfinished()
    assert folder.load_task_state(resolve(cfg))["completed"] == 1



def test_method_state_carries_data_not_model_references(tmp_path):
    scrub = get_method("scrub")
    scrub.params, scrub.swa = [torch.nn.Parameter(torch.zeros(2))], [torch.ones(2)]
    scrub.step_kinds, scrub.generator = ["max", "min"], torch.Generator().manual_seed(3)
    state = scrub.state_dict()
    assert "params" not in state and "args" not in state and state["step_kinds"] == ["max", "min"]
    path = tmp_path / "state.pt"
    torch.save(state, path)
    fresh = get_method("scrub")
    fresh.load_state_dict(torch.load(path, weights_only=True))  # what the run folder does: no arbitrary unpickling
    assert fresh.step_kinds == ["max", "min"] and torch.equal(fresh.swa[0], torch.ones(2))
    assert torch.equal(torch.rand(3, generator=fresh.generator), torch.rand(3, generator=scrub.generator))


def test_a_crashed_baseline_resumes_with_its_accumulated_state(tmp_path, micro_model, micro_data, monkeypatch):
    """L2 keeps one anchor per finished task: a run that crashed in task 2 must resume with task 1's anchor."""
    import copy

    import gslora.forget as forget_module

    cfg = RunConfig(method="l2", tasks="2x2", epochs=2, batch_size=16, replay_ratio=0.3, lr=1e-3, device="cpu")
    reference = run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data, cfg,
                               out_dir=tmp_path / "reference")
    real = forget_module.train_task

    def crash_in_task_2(model, method, ctx, **kw):
        if ctx.task.index == 2:
            raise RuntimeError("simulated crash")
        return real(model, method, ctx, **kw)

    monkeypatch.setattr(forget_module, "train_task", crash_in_task_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data, cfg, out_dir=tmp_path / "run")
    monkeypatch.setattr(forget_module, "train_task", real)
    method = get_method("l2")
    resumed = run_forgetting(copy.deepcopy(micro_model), micro_data.classes, micro_data, cfg, out_dir=tmp_path / "run",
                             method=method, resume=True)
    assert len(method.anchors) == 2 and resumed.rows[1]["method_info"]["penalty_tasks"] == 2
    assert _numbers(resumed.results) == _numbers(reference.results)


def test_a_run_killed_inside_a_second_trial_resumes_to_the_same_numbers(tmp_path, inputs):
    """A trial that never meets its forgetting target is followed by one at twice the lr; SIGKILL inside that second
    trial, after an epoch checkpoint: the resumed run knows which trial it was in (its lr, the first trial's record)
    and ends equal."""
    extra = ["--set", "max_trials=2", "--set", "target=acc_f<=-1", "--set", "checkpoint_every=1",
             "--set", "eval_every=2"]
    ref_out = tmp_path / "reference"
    assert main(_args(*inputs, ref_out, *extra)) == 0
    ref = _finished(ref_out)
    trials = ref[0]["tasks"][0]["trials"]
    assert [t["lr_scale"] for t in trials] == [1.0, 2.0]
    out = tmp_path / "run"
    last = trials[1]["steps"] - 1  # the second trial's last step but one: after at least one of its checkpoints
    _killed_run(*inputs, out, f"task1.trial2.step{last}", *extra)
    saved = torch.load(out / "state" / "epoch-task1.pt", weights_only=False)
    assert saved["trial"] == 1 and len(saved["trials"]) == 1 and 0 < saved["step"] <= last  # inside the second trial
    assert main(_args(*inputs, out, "--resume", *extra)) == 0
    results, weights = _finished(out)
    assert results == ref[0]
    assert all(torch.equal(weights[k], ref[1][k]) for k in weights)
