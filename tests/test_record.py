"""A model's history binds every later request, and its erasure record proves what was done: the hash chain, tamper
detection, the record in every export format, the deployed mask, `history`, `verify` and the `--audit` gate."""

from __future__ import annotations

import copy
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from gslora import RunConfig, run_forgetting
from gslora.data.plan import evaluation_sets, make_plan
from gslora.errors import GsloraError
from gslora.models import create_model, load_checkpoint
from gslora.models.loading import load_any
from gslora.record import MASK_LOGIT, append_entry, entry_sha256, verify, weights_sha256

CFG = dict(epochs=2, batch_size=16, replay_ratio=0.3, lr=3e-3, device="cpu",
           method_args={"lora_alpha": 8.0, "bound": 20.0, "beta": 1.0})


def _cli(capsys, *argv):
    from gslora.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the hash chain ---------------------------------------------------------------------------------------------------
def _chain(model, n=3):
    record, before = [], weights_sha256(model)
    for i in range(n):
        with torch.no_grad():
            model.backbone.blocks[0].mlp.fc1.weight[0, i] += 1.0
        after = weights_sha256(model)
        record = append_entry(record, {"request": f"r{i}", "classes": [{"name": f"c{i}", "index": i}],
                                       "weights_before": before, "weights_after": after})
        before = after
    return record


def test_chain_verifies_and_every_tampering_is_named():
    model = create_model("vit_face_micro", 5, seed=0)
    record = _chain(model)
    ok, sentence = verify(record, weights_sha256(model))
    assert ok, sentence
    assert [e["previous"] for e in record] == [None, record[0]["entry_sha256"], record[1]["entry_sha256"]]

    # the weights changed after the last request
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.backbone.pos_embed[0, 0, 0] += 1e-3
    ok, sentence = verify(record, weights_sha256(changed))
    assert not ok and "weights were changed after the last recorded request" in sentence

    # an entry edited in place: its own hash no longer matches (each entry, the last one too)
    for i in range(3):
        edited = copy.deepcopy(record)
        edited[i]["classes"][0]["name"] = "someone else"
        ok, sentence = verify(edited, weights_sha256(model))
        assert not ok and f"chain is broken at entry {i + 1}" in sentence and f"entry {i + 1} (r{i})" in sentence

    # an entry edited and re-hashed: the next entry's link names it
    edited = copy.deepcopy(record)
    edited[0]["classes"] = []
    edited[0]["entry_sha256"] = entry_sha256(edited[0])
    ok, sentence = verify(edited, weights_sha256(model))
    assert not ok and "entry 2 (r1) does not follow entry 1" in sentence

    # an entry removed from the front, and the weights changed between two requests
    ok, sentence = verify(record[1:], weights_sha256(model))
    assert not ok and "first" in sentence
    gap = copy.deepcopy(record)
    gap[1]["weights_before"] = "0" * 64
    gap[1]["entry_sha256"] = entry_sha256(gap[1])
    gap[2]["previous"] = gap[1]["entry_sha256"]
    gap[2]["entry_sha256"] = entry_sha256(gap[2])
    ok, sentence = verify(gap, weights_sha256(model))
    assert not ok and "changed between the two requests" in sentence
    assert not verify([], weights_sha256(model))[0]


def test_the_hash_names_the_deployed_model_whether_the_mask_is_baked_or_kept_aside():
    model = create_model("vit_face_micro", 6, seed=0, head="linear")
    baked = copy.deepcopy(model)
    with torch.no_grad():
        baked.head.weight[[1, 4]] = 0.0
        baked.head.bias[[1, 4]] = MASK_LOGIT
    assert weights_sha256(model, [1, 4]) == weights_sha256(baked, [4, 1])
    assert weights_sha256(model, [1, 4]) != weights_sha256(model)
    assert weights_sha256(model, [1]) != weights_sha256(model, [1, 4])
    # the model's own mask is the default, and a masked model never predicts a masked class
    model.config["masked_classes"] = [1, 4]
    assert weights_sha256(model) == weights_sha256(baked, [1, 4])
    with torch.no_grad():
        model.head.bias[1] = 1e3  # class 1 would win every image unmasked
        pred = model.eval()(torch.rand(32, 3, 16, 16)).argmax(-1)
        labelled = model(torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))  # training: nothing masked
    assert not set(pred.tolist()) & {1, 4}
    assert (labelled[:, 1] > 100).all()


# --- the model's history binds later requests -------------------------------------------------------------------------
def test_plan_keeps_earlier_forgotten_classes_forgotten():
    names = [f"c{i}" for i in range(10)]
    plan = make_plan(names, "2x2", forgotten=[3, 7])
    assert plan.forgotten_before == [3, 7]
    for task in plan.tasks:
        assert {3, 7} <= set(task.old) and not {3, 7} & set(task.remain) and not {3, 7} & set(task.forget)
    order = [c for c in make_plan(names, "1x1").class_order if c not in (3, 7)]
    assert [list(t.forget) for t in plan.tasks] == [sorted(order[-2:]), sorted(order[-4:-2])]  # drawn from the rest
    with pytest.raises(GsloraError, match=r"'c3' was already forgotten by an earlier request .* leave it out"):
        make_plan(names, "c1;c3", forgotten=[3, 7])
    with pytest.raises(GsloraError, match=r"8 classes still known \(2 were forgotten by earlier requests\)"):
        make_plan(names, "4x2", forgotten=[3, 7])
    sets = evaluation_sets(names, [{"forgotten": ["c3"]}, {"forgotten": ["c3", "c7"]}], None)
    assert sets["forgotten (history)"] == [3, 7] and len(sets["remaining (history)"]) == 8


def test_forgetting_again_from_a_forgotten_model_never_replays_or_restores_it(micro_model, micro_data, tmp_path,
                                                                              monkeypatch):
    import gslora.forget as forget_module
    from gslora.evaluate import accuracy, class_counts

    c = micro_data.classes
    correct, total = class_counts(micro_model, micro_data.test, len(c))
    original = accuracy(correct, total, [0, 1, 2])
    first = run_forgetting(micro_model, c, micro_data, RunConfig(tasks=f"{c[0]},{c[1]};{c[2]}", **CFG),
                           out_dir=tmp_path / "run1")
    assert first.model.config["masked_classes"] == [0, 1, 2]
    model, meta = load_any(tmp_path / "run1" / "final.safetensors")
    assert model.config["masked_classes"] == [0, 1, 2] and len(meta["record"]) == 2
    trained_on, real = set(), forget_module.TaskContext  # the classes of every image given to the method as replay

    def context(**kw):
        trained_on.update(int(kw["remain_data"].dataset.targets[i]) for i in kw["remain_data"].indices)
        return real(**kw)

    monkeypatch.setattr(forget_module, "TaskContext", context)
    second = run_forgetting(model, meta["classes"], micro_data, RunConfig(tasks="1x2", **CFG),
                            out_dir=tmp_path / "run2", history=meta["history"], record=meta["record"])
    assert trained_on and not trained_on & {0, 1, 2}
    task = second.plan.tasks[0]
    assert second.plan.forgotten_before == [0, 1, 2] and task.old == (0, 1, 2)
    assert not {0, 1, 2} & set(task.forget) and not {0, 1, 2} & set(task.remain)
    row = second.rows[0]
    assert row["n_old"] == 3
    # unmasked (the paper's metric): far from the original (when they were replayed they came back to it)
    assert original >= 50 and row["acc_o"] is not None and row["acc_o"] <= original / 2
    assert row["deployed"]["acc_o"] == 0.0 and row["deployed"]["acc_f"] == 0.0
    final, meta2 = load_any(tmp_path / "run2" / "final.safetensors")
    assert [e["task"] for e in meta2["record"]] == [1, 2, 1]
    assert verify(meta2["record"], weights_sha256(final))[0]
    with pytest.raises(GsloraError, match="already forgotten"):
        run_forgetting(final, meta2["classes"], micro_data, RunConfig(tasks=c[1], **CFG), record=meta2["record"])


def _flip_byte(weights, tensor_name):
    """Flip one byte inside ``tensor_name``'s data of a safetensors file."""
    raw = bytearray(weights.read_bytes())
    (size,) = struct.unpack("<Q", raw[:8])
    start = json.loads(raw[8:8 + size])[tensor_name]["data_offsets"][0]
    raw[8 + size + start + 1] ^= 0xFF
    weights.write_bytes(bytes(raw))


def test_cli_history_and_verify_on_a_two_request_model(capsys, micro_checkpoint, micro_data, tmp_path):
    c = micro_data.classes  # the API makes the two requests, the CLI reads them
    run_forgetting(load_checkpoint(micro_checkpoint)[0], c, micro_data, RunConfig(tasks=c[3], **CFG),
                   out_dir=tmp_path / "a", request_id="ticket-17")
    model, meta = load_any(tmp_path / "a" / "final.safetensors")
    run_forgetting(model, c, micro_data, RunConfig(tasks=c[5], **CFG), out_dir=tmp_path / "b",
                   history=meta["history"], record=meta["record"], request_id="ticket-18")
    final = tmp_path / "b" / "final.safetensors"
    code, out, err = _cli(capsys, "history", final)
    assert code == 0, err
    lines = out.splitlines()
    assert "ticket-17/task1" in lines[2] and c[3] in lines[2] and "ticket-18/task1" in lines[3] and c[5] in lines[3]
    code, out, _ = _cli(capsys, "history", final, "--markdown")
    assert "## 1. Request ticket-17/task1" in out and "## 2. Request ticket-18/task1" in out
    assert (tmp_path / "b" / "record.md").read_text().count("## ") == 2
    code, out, _ = _cli(capsys, "verify", final)
    assert code == 0 and ": OK:" in out

    sidecar = final.with_suffix(".json")
    saved = sidecar.read_text()
    meta = json.loads(saved)
    meta["record"][0]["classes"][0]["name"] = "nobody"
    sidecar.write_text(json.dumps(meta))
    code, _, err = _cli(capsys, "verify", final)
    assert code == 1 and "chain is broken at entry 1" in err and err.count("\n") == 1
    sidecar.write_text(saved)
    _flip_byte(final, "backbone.blocks.0.mlp.fc1.weight")
    code, _, err = _cli(capsys, "verify", final)
    assert code == 1 and "the weights hash to" in err and "changed after the last recorded request" in err


def test_audit_gate_marks_a_shallow_request_uncertified_and_exits_4(capsys, micro_checkpoint, micro_data, tmp_path,
                                                                     monkeypatch):
    import gslora.data as data_module

    monkeypatch.setattr(data_module, "load_data", lambda *a, **k: micro_data)  # the micro model's own data
    argv = ("forget", "--checkpoint", micro_checkpoint, "--data", "faces", "--tasks", "1x2", "--epochs", "2",
            "--no-progress", "--device", "cpu", "--set", "batch_size=16", "--set", "replay_ratio=0.3", "--audit")
    code, out, err = _cli(capsys, *argv, "--out", tmp_path / "shallow", "--audit-target", "probe_drop>=101")
    assert code == 4, err
    last = err.strip().splitlines()[-1]  # (after any missed-target warnings of the run itself)
    assert last.startswith("gslora: not certified: the depth gate (probe_drop>=101) missed on task 1 (probe_drop)")
    results = json.loads((tmp_path / "shallow" / "results.json").read_text())  # everything was written
    assert results["certified"] is False and results["record"][0]["certified"] is False
    gate = results["tasks"][0]["audit"]
    assert gate["met"] == {"probe_drop": False} and gate["probe_f_before"] is not None and gate["forget_images"] > 0
    assert results["record"][0]["audit"]["probe_f"] == gate["probe_f"]
    code, out, err = _cli(capsys, *argv, "--out", tmp_path / "lenient", "--audit-target", "probe_f<=100")
    assert code == 0, err
    assert json.loads((tmp_path / "lenient" / "results.json").read_text())["record"][0]["certified"] is True
    code, _, err = _cli(capsys, *argv, "--out", tmp_path / "bad", "--audit-target", "probe_gap<=5")
    assert code == 2 and "--retrain-full" in err and not (tmp_path / "bad").exists()


# --- every export format carries the record and masks the forgotten classes ------------------------------------------
def _forget_cli(capsys, ckpt, folder, out, tasks, *extra):
    code, stdout, err = _cli(capsys, "forget", "--checkpoint", ckpt, "--data", folder, "--out", out, "--epochs", "1",
                             "--no-progress", "--set", "batch_size=8", "--device", "cpu", "--tasks", tasks, "--force",
                             *extra)  # untrained models: they score at chance
    assert code == 0, err
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("library", ["hf", "torchvision", "timm"])
def test_record_and_mask_travel_in_every_format(library, capsys, tmp_path, micro_folder):
    from test_importers import TIMM_ARGS, _hf, _timm, _torchvision, _x

    classes = sorted(p.name for p in (micro_folder / "train").iterdir())
    extra = ()
    if library == "hf":
        _hf("vit", classes).save_pretrained(tmp_path / "m")
        start = tmp_path / "m"
    elif library == "torchvision":
        torch.save(_torchvision(len(classes)).state_dict(), tmp_path / "vit.pth")
        start, extra = tmp_path / "vit.pth", ("--model", "torchvision:VisionTransformer", "--model-arg", "num_heads=2")
    else:
        save_file(_timm(len(classes)).state_dict(), str(tmp_path / "model.safetensors"))
        start = tmp_path / "model.safetensors"
        extra = ("--model", "timm:vit_tiny_patch16_224",
                 *[a for k, v in TIMM_ARGS.items() for a in ("--model-arg", f"{k}={v}")])
    first = _forget_cli(capsys, start, micro_folder, tmp_path / "r1", classes[0] + ";" + classes[1], *extra)
    native = tmp_path / "r1" / "final"
    again = native if library != "torchvision" else native / "model.safetensors"  # no --model: the note says it
    for path in (again, tmp_path / "r1" / "final.safetensors"):
        model, meta = load_any(path)
        assert [e["classes"][0]["name"] for e in meta["record"]] == classes[:2], path
        assert model.config["masked_classes"] == [0, 1]
        ok, sentence = verify(meta["record"], weights_sha256(model))
        assert ok, (path, sentence)
        with torch.no_grad():
            pred = model.eval()(_x(64)).argmax(-1)
        assert not {0, 1} & set(pred.tolist())
    assert first["masked_classes"] == classes[:2]
    # the exported weights themselves never emit a forgotten label, read by the library alone
    state = load_file(str(native / "model.safetensors"))
    bias = {"hf": "classifier.bias", "torchvision": "heads.head.bias", "timm": "head.bias"}[library]
    assert state[bias][0].item() == MASK_LOGIT and state[bias][1].item() == MASK_LOGIT
    if library == "hf":
        from transformers import AutoModelForImageClassification

        hf = AutoModelForImageClassification.from_pretrained(str(native)).eval()
        assert len(hf.config.gslora["record"]) == 2 and hf.config.gslora["masked_classes"] == [0, 1]
        with torch.no_grad():
            assert not {0, 1} & set(hf(pixel_values=_x(64)).logits.argmax(-1).tolist())
        (native / "gslora.json").unlink()  # the record travels in config.json too
    # a second request from the exported model: its history binds it, whichever path it came from
    second = _forget_cli(capsys, again, micro_folder, tmp_path / "r2", classes[2])
    row = second["tasks"][0]
    assert second["plan"]["forgotten_before_names"] == classes[:2] and row["n_old"] == 2
    assert row["acc_o"] <= 2 and row["deployed"]["acc_o"] == 0.0
    assert [e["classes"][0]["name"] for e in second["record"]] == classes[:3]
    code, out, err = _cli(capsys, "verify", tmp_path / "r2" / "final.safetensors")
    assert code == 0, err
    code, _, err = _cli(capsys, "forget", "--checkpoint", again, "--data", micro_folder, "--out", tmp_path / "r3",
                        "--tasks", classes[1], "--no-progress", "--device", "cpu")
    assert code == 2 and "already forgotten" in err and not (tmp_path / "r3").exists()
