"""Bad input: one clear sentence, exit status 2, and no result files. Plus the happy path of the CLI."""

import json

import pytest

from gslora import RunConfig, run_forgetting
from gslora.cli import main
from gslora.models import create_model, save_checkpoint


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def forget_args(ckpt, folder, out, *extra):
    return ["forget", "--checkpoint", str(ckpt), "--data", str(folder), "--out", str(out), "--epochs", "1",
            "--no-progress", "--set", "batch_size=8", "--device", "cpu", "--tasks", "1x2", *extra]


def assert_no_results(out):
    assert not any((out / f).exists() for f in ("results.json", "results.csv", "results.md"))


def test_happy_path_then_finished_run_is_protected(capsys, tmp_path, micro_checkpoint, micro_folder):
    out = tmp_path / "run"
    code, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, out, "--tasks", "lfw001,lfw002"))
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"][0]["forget"] == ["lfw001", "lfw002"]
    code, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, out, "--tasks", "1x2"))
    assert code == 2 and "already holds a finished run" in err and "--overwrite" in err
    code, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, out, "--tasks", "1x2", "--overwrite"))
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["tasks"][0]["setting"] == "20-2"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tasks", "lfw001,nobody"], "class 'nobody' is not in the model"),
        (["--tasks", "lfw001;lfw001"], "forgotten in tasks 1 and 2"),
        (["--tasks", "lfw003,lfw003"], "forgotten in task 1 twice"),
        (["--tasks", "1x20"], "at least one class must remain"),
        (["--tasks", "2x10"], "at least one class must remain"),
        (["--tasks", "4x"], "class '4x' is not in the model"),
        (["--tasks", "lfw001;;lfw002"], "must be 'NxK' (N tasks of K classes) or class lists"),
        (["--set", "epoch=3"], "unknown key 'epoch'"),
        (["--set", "batch_size=many"], "config.batch_size must be an integer"),
        (["--set", "lr=-0.1"], "lr must be in (0.0, inf)"),
        (["--set", "replay_ratio=1.5"], "replay_ratio must be in"),
        (["--set", "method_args.beta=fast"], "method_args (gslora).beta must be"),
        (["--set", "method_args.gamma=1"], "unknown key 'gamma' in method_args (gslora)"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--device", "tpu"], "device must be"),
    ],
)
def test_bad_run_input(capsys, tmp_path, micro_checkpoint, micro_folder, extra, message):
    out = tmp_path / "run"
    code, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, out, *extra))
    assert code == 2
    assert message in err, err
    assert err.startswith("gslora: error: ") and err.count("\n") == 1
    assert_no_results(out)


def test_bad_yaml(capsys, tmp_path, micro_checkpoint, micro_folder):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nbatchsize: 8\n")
    code, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, tmp_path / "run", "--config", str(cfg)))
    assert code == 2 and "unknown key 'batchsize'" in err and "batch_size" in err
    cfg.write_text("epochs: [1, 2\n")
    code, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, tmp_path / "run", "--config", str(cfg)))
    assert code == 2 and "not valid YAML" in err
    code, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, tmp_path / "run", "--config",
                                         str(tmp_path / "x")))
    assert code == 2 and "does not exist" in err


def test_bad_data(capsys, tmp_path, micro_checkpoint, micro_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run(capsys, *forget_args(micro_checkpoint, empty, tmp_path / "r1"))
    assert code == 2 and "holds no class folders" in err
    (empty / "someone").mkdir()
    code, err = run(capsys, *forget_args(micro_checkpoint, empty, tmp_path / "r2"))
    assert code == 2 and "holds no image files" in err
    bad = micro_folder / "train" / "lfw004" / "broken.png"
    bad.write_bytes(b"not an image at all")
    code, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, tmp_path / "r3"))
    assert code == 2 and "cannot read image" in err and "broken.png" in err
    code, err = run(capsys, *forget_args(micro_checkpoint, tmp_path / "nowhere", tmp_path / "r4"))
    assert code == 2 and "neither 'faces'" in err
    for out in ("r1", "r2", "r3", "r4"):
        assert_no_results(tmp_path / out)


def test_checkpoint_mismatch(capsys, tmp_path, micro_folder):
    other = create_model("vit_face_micro", 7)  # 7 classes; the folder has 20
    ckpt = save_checkpoint(other, tmp_path / "seven.safetensors", [f"c{i}" for i in range(7)])
    code, err = run(capsys, *forget_args(ckpt, micro_folder, tmp_path / "run"))
    assert code == 2 and "the data has 20 classes but the model has 7" in err
    code, err = run(capsys, *forget_args(tmp_path / "missing.safetensors", micro_folder, tmp_path / "run"))
    assert code == 2 and "does not exist" in err
    assert_no_results(tmp_path / "run")


def test_run_failing_midway_leaves_no_results(tmp_path, micro_model, micro_data, monkeypatch):
    import gslora.forget as forget_module

    real = forget_module.train_task

    def failing(model, method, ctx, **kw):
        if ctx.task.index == 2:
            raise RuntimeError("simulated crash")
        return real(model, method, ctx, **kw)

    monkeypatch.setattr(forget_module, "train_task", failing)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_forgetting(micro_model, micro_data.classes, micro_data, RunConfig(tasks="2x2", epochs=1, device="cpu"),
                       out_dir=out)
    assert_no_results(out)
    assert not (out / "final.safetensors").exists()


def test_evaluate_reports_forgotten_and_remaining_accuracy(capsys, tmp_path, micro_checkpoint, micro_folder):
    out = tmp_path / "run"
    assert main(forget_args(micro_checkpoint, micro_folder, out, "--tasks", "lfw001,lfw002,lfw003")) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "final.safetensors"), "--data", str(micro_folder),
                 "--classes", "lfw001,lfw002", "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["forgotten (history)"]["classes"] == 3 and report["remaining (history)"]["classes"] == 17
    assert report["set 1"]["classes"] == 2
    assert all(0 <= r["accuracy"] <= 100 for r in report.values())
    assert main(["evaluate", "--checkpoint", str(out / "final.safetensors"), "--data", str(micro_folder),
                 "--classes", "nobody"]) == 2
