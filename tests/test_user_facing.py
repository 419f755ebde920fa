"""What a user sees: a line per task, warnings for missed targets, bad input refused before anything is written (one
sentence, exit 2, no run folder), defaults said when used, and the small things (umask, Ctrl-C, ANSI codes, MIA)."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from PIL import Image

from gslora.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def forget_args(ckpt, folder, out, *extra):
    return ["forget", "--checkpoint", ckpt, "--data", folder, "--out", out, "--epochs", "1", "--device", "cpu",
            "--set", "batch_size=8", "--tasks", "lfw001,lfw002", *extra]


def one_sentence(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("gslora: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- say what happened ----------------------------------------------------------------------------------------------
def test_each_task_prints_what_it_did_and_a_missed_target_is_a_warning(capsys, tmp_path, micro_checkpoint,
                                                                       micro_folder):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, out, "--set", "target=acc_f<=-1"))
    assert code == 0, err
    line = next(x for x in stdout.splitlines() if x.startswith("task 1/1: "))
    results = json.loads((out / "results.json").read_text())
    row = results["tasks"][0]
    assert "forgot lfw001, lfw002" in line and f"{len(row['trials'])} trial" in line
    assert f"lr {row['trials'][0]['lr']:.3g}" in line and "acc_f" in line and "MISSED (≤ -1)" in line
    assert "blocks changed:" in line
    warning = next(x for x in err.splitlines() if x.startswith("gslora: warning: task 1 missed its target acc_f"))
    assert "it reached" in warning
    md = (out / "results.md").read_text()
    assert line in md and "**Warning**: task 1 missed its target acc_f" in md
    assert "\r" not in err  # no progress bars off a terminal (pytest's capture is not one)


# --- validate before writing ----------------------------------------------------------------------------------------
def test_an_unwritable_output_is_one_sentence_and_nothing_is_written(capsys, tmp_path, micro_checkpoint,
                                                                      micro_folder):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run(capsys, *forget_args(micro_checkpoint, micro_folder, blocker / "run"))
    assert code == 2 and "cannot write the run folder" in one_sentence(err)
    assert blocker.read_text() == "not a folder"
    run_dir = tmp_path / "ok"
    assert run(capsys, *forget_args(micro_checkpoint, micro_folder, run_dir))[0] == 0
    code, _, err = run(capsys, "audit", run_dir, "--out", blocker / "audit", "--device", "cpu", "--no-progress")
    assert code == 2 and "cannot write the audit folder" in one_sentence(err)
    assert not (run_dir / "audit").exists()


def _copy(folder, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(folder, dst)
    return dst


def test_a_truncated_image_is_named_before_the_run_folder(capsys, tmp_path, micro_checkpoint, micro_folder):
    data = _copy(micro_folder, tmp_path)
    victim = sorted((data / "test" / "lfw005").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
    out = tmp_path / "run"
    code, _, err = run(capsys, *forget_args(micro_checkpoint, data, out))
    assert code == 2 and f"cannot read image {victim}" in one_sentence(err)
    assert not out.exists()


def test_a_class_missing_from_test_is_named(capsys, tmp_path, micro_checkpoint, micro_folder):
    data = _copy(micro_folder, tmp_path)
    shutil.rmtree(data / "test" / "lfw007")
    out = tmp_path / "run"
    code, _, err = run(capsys, *forget_args(micro_checkpoint, data, out))
    assert code == 2 and "class 'lfw007' has a folder in" in one_sentence(err) and "none in" in err
    assert not out.exists()


def test_a_tiny_folder_gets_the_minimum_it_needs(capsys, tmp_path, micro_checkpoint, micro_folder):
    data = tmp_path / "tiny"
    for c in sorted(p.name for p in (micro_folder / "train").iterdir()):  # 2 images per class, no train/test split
        (data / c).mkdir(parents=True)
        for f in sorted((micro_folder / "train" / c).iterdir())[:2]:
            shutil.copy(f, data / c / f.name)
    out = tmp_path / "run"
    code, _, err = run(capsys, *forget_args(micro_checkpoint, data, out))
    sentence = one_sentence(err)
    assert code == 2 and "forgetting needs at least 1 training, 1 validation and 1 test image per class" in sentence
    assert "3 or more images" in sentence and not out.exists()


def test_a_model_at_chance_is_refused_and_force_goes_on_with_a_warning(capsys, tmp_path, micro_folder):
    from gslora.models import create_model, save_checkpoint

    classes = sorted(p.name for p in (micro_folder / "train").iterdir())
    ckpt = save_checkpoint(create_model("vit_face_micro", len(classes), seed=0), tmp_path / "untrained", classes)
    out = tmp_path / "run"
    code, _, err = run(capsys, *forget_args(ckpt, micro_folder, out))
    sentence = one_sentence(err)
    assert code == 2 and "no better than chance" in sentence and "num_heads" in sentence and "--force" in sentence
    assert not out.exists()
    code, _, err = run(capsys, *forget_args(ckpt, micro_folder, out, "--force"))
    assert code == 0, err
    assert "no better than chance" in json.loads((out / "results.json").read_text())["warnings"][0]


def test_audit_finds_its_data_from_another_directory_and_takes_data(capsys, tmp_path, micro_checkpoint,
                                                                    micro_folder, monkeypatch):
    data = _copy(micro_folder, tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert run(capsys, *forget_args(micro_checkpoint, "data", out))[0] == 0  # a relative --data
    assert json.loads((out / "results.json").read_text())["config"]["data"] == str(data)  # stored absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    audit = ("audit", out, "--epochs", "1", "--relearn-epochs", "0", "--device", "cpu", "--no-progress")
    code, _, err = run(capsys, *audit)
    assert code == 0, err
    moved = tmp_path / "moved"
    data.rename(moved)
    code, _, err = run(capsys, *audit)
    assert code == 2 and "pass it with --data" in one_sentence(err)
    code, _, err = run(capsys, *audit, "--data", moved)
    assert code == 0, err


# --- defaults in sight ----------------------------------------------------------------------------------------------
def test_defaults_are_said_when_used(capsys, tmp_path, micro_checkpoint, micro_folder):
    args = ["forget", "--checkpoint", micro_checkpoint, "--data", micro_folder, "--out", tmp_path / "run",
            "--device", "cpu"]
    code, _, err = run(capsys, *args)  # 4x20 of a 20-class model: the error follows the default it came from
    assert code == 2 and "no --tasks: using the default tasks '4x20'" in err and "would forget 80" in err
    code, out, err = run(capsys, "evaluate", "--checkpoint", micro_checkpoint, "--device", "cpu")
    assert "no --data: scoring on the bundled faces" in err
    code, _, err = run(capsys, "forget", "--checkpoint", micro_checkpoint, "--out", tmp_path / "run2", "--tasks", "1x2",
                       "--device", "cpu")  # the bundled faces do not match this 20-class model: said after the note
    assert code == 2 and "no --data: using the default data 'faces' (the bundled faces)" in err
    assert not (tmp_path / "run2").exists()


def test_list_shows_every_key_with_its_default_and_help(capsys):
    from gslora.config import RunConfig, config_reference

    code, out, _ = run(capsys, "list")
    assert code == 0 and "max_steps = 200" in out and "target = 'acc_f<=2,acc_r_drop<=2,probe_keep<=80'" in out
    code, out, _ = run(capsys, "list", "--config")
    reference = config_reference(RunConfig)
    assert len(reference) == len(RunConfig.__dataclass_fields__)
    for name, _, text in reference:
        assert text, f"{name} has no help line"
        assert f"\n{name} = " in out
    assert "one check image" in out  # the acc_r_drop tolerance is documented where targets are


def test_every_evaluate_option_has_help(capsys):
    from gslora.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # argparse keeps no public accessor
    for name in ("evaluate", "forget", "audit", "history", "verify"):
        for action in sub[name]._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_config_yaml_shows_the_budget_that_applies(tmp_path):
    import yaml

    from gslora.config import RunConfig
    from gslora.presets import resolve
    from gslora.rundir import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.start(resolve(RunConfig()), {"tasks": []})
    saved = yaml.safe_load(folder.config_file.read_text())
    assert saved["max_steps"] == 200 and "epochs" not in saved
    folder.clear()
    folder.start(resolve(RunConfig(max_steps=0, epochs=3)), {"tasks": []})
    saved = yaml.safe_load(folder.config_file.read_text())
    assert saved["epochs"] == 3 and saved["max_steps"] == 0
    folder._check_same_config(resolve(RunConfig(max_steps=0, epochs=3)))  # a resume compares it without complaint


# --- the small things -----------------------------------------------------------------------------------------------
def test_files_follow_the_umask(tmp_path):
    from gslora.files import atomic_write_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "a.txt", "x")
        d = atomic_write_dir(tmp_path / "d", lambda p: (p / "b.txt").write_text("y"))
        os.umask(0o002)
        g = atomic_write_text(tmp_path / "g.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644 and stat.S_IMODE(d.stat().st_mode) == 0o755
    assert stat.S_IMODE(g.stat().st_mode) == 0o664


def test_ctrl_c_names_resume(capsys, tmp_path, monkeypatch):
    import gslora.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_forget", interrupted)
    code = cli.main(["forget", "--checkpoint", "x", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 130 and "--resume to continue in" in err and str(tmp_path / "run") in err


def test_messages_carry_no_terminal_codes_off_a_terminal(capsys, monkeypatch):
    import gslora.cli as cli
    from gslora.errors import GsloraError

    def colourful(args):
        raise GsloraError("refusing \x1b[1mthis\x1b[0m file")

    monkeypatch.setattr(cli, "cmd_verify", colourful)
    assert cli.main(["verify", "x"]) == 2
    assert capsys.readouterr().err == "gslora: error: refusing this file\n"


def test_mia_is_reported_as_a_two_sided_advantage():
    from gslora.audit import membership_inference
    from gslora.report.audit import mia_advantage

    members, others = [0.1] * 50 + [5.0] * 10, [5.0] * 50 + [0.1] * 10
    result = membership_inference(members, others)
    assert result["advantage"] == pytest.approx(abs(result["auc"] - 0.5)) and result["advantage"] > 0.2
    # an attack below chance separates members as well as its mirror image above it
    assert mia_advantage({"auc": 0.185}) == pytest.approx(mia_advantage({"auc": 0.815})) == pytest.approx(0.315)


def test_checkpoint_every_counts_steps(micro_model, micro_data):
    """With a replay subset of one batch, a pass is one step: checkpoint_every=5 saves every 5 steps, not each."""
    import gslora.forget as forget_module
    from gslora import RunConfig, run_forgetting

    saved = []
    real = forget_module.train_task

    def spy(model, method, ctx, **kw):
        hook = kw.get("on_checkpoint")
        kw["on_checkpoint"] = (lambda s: (saved.append(s["step"]), hook(s))) if hook else None
        return real(model, method, ctx, **kw)

    cfg = RunConfig(tasks="1x1", max_steps=12, batch_size=64, replay_ratio=0.05, min_replay=1, checkpoint_every=5,
                    eval_every=0, device="cpu", max_trials=1)
    forget_module.train_task = spy
    try:
        import tempfile

        with tempfile.TemporaryDirectory() as out:
            run_forgetting(micro_model, micro_data.classes, micro_data, cfg, out_dir=out)
    finally:
        forget_module.train_task = real
    assert saved == [5, 10]


def test_help_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys, gslora.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_a_pil_image_decodes_once_at_load(tmp_path):
    """The data check decodes every image (a header read would pass a truncated file)."""
    from gslora.data.folder import _scan
    from gslora.errors import GsloraError

    (tmp_path / "c").mkdir()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "c" / "a.png")
    raw = (tmp_path / "c" / "a.png").read_bytes()
    (tmp_path / "c" / "b.png").write_bytes(raw[: len(raw) - 20])
    with pytest.raises(GsloraError, match="b.png"):
        _scan(tmp_path)


@pytest.mark.parametrize("flag", [["--head-subset"], ["--missing-check-data", "x"], ["--audit"], ["--force"]])
def test_a_classification_flag_is_refused_with_detection(capsys, tmp_path, flag):
    out = tmp_path / "run"
    code, _, err = run(capsys, "forget", "--detection", "--checkpoint", tmp_path / "det", "--data", "digits",
                       "--out", out, *flag)
    assert code == 2 and f"{flag[0]} does not apply to `gslora forget --detection`" in one_sentence(err)
    assert not out.exists()
