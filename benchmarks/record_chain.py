"""The erasure record end to end on ORL faces: two requests on one Hugging Face model, `history`, `verify`, tampering.

    .venv/bin/python benchmarks/record_chain.py [--data ../shared/data/orl-faces] [--out runs/record-chain]

1. pre-train a small Hugging Face ViT (``ViTForImageClassification``, the shape of vit_face_tiny: 24 px, patch 4,
   width 64, 6 blocks) on ORL with gslora's pre-training defaults, and write it as an HF folder (the API: gslora's
   `pretrain` command builds registry / timm models, not HF ones);
2. ``gslora forget --audit --tasks 1x5`` from that folder (the run exports ``final/``, an HF folder);
3. ``gslora forget --audit --tasks 1x5`` from ``final/``, and once more from ``final.safetensors`` (the gslora
   checkpoint keeps the weights unmasked, so the paper's Acc_o of the earlier-forgotten classes is measured there);
4. ``gslora history`` on the second run's model; 5. ``gslora verify`` (exit 0);
6. one byte of the weights flipped: ``verify`` fails naming the hash; 7. the record's first entry edited: ``verify``
   fails naming the chain.

Prints every command's exit status and what it said, the gate's cost against each task's own time, and writes the raw
numbers to docs/results/record_chain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GSLORA = [sys.executable, "-m", "gslora"]


def sh(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    shown = " ".join(str(c) for c in cmd[3:])  # after python -m gslora
    print(f"$ gslora {shown}\n  exit {p.returncode} ({time.perf_counter() - t0:.0f} s)", flush=True)
    tail = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()][-3:]
    for line in tail:
        print("  | " + line[:160])
    return {"command": "gslora " + shown, "exit": p.returncode, "seconds": time.perf_counter() - t0,
            "stdout": p.stdout.splitlines()[-12:], "stderr": p.stderr.splitlines()[-3:]}


def pretrain_hf(data_path: str, out: Path, seed: int) -> dict:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from gslora.data import load_data
    from gslora.models.exporters import export_native
    from gslora.models.libraries.hf import import_hf
    from gslora.pretrain import PretrainConfig, pretrain

    probe = load_data(data_path, image_size=24, seed=seed)
    classes = probe.classes
    conf = ViTConfig(hidden_size=64, num_hidden_layers=6, num_attention_heads=2, intermediate_size=256,
                     image_size=24, patch_size=4, num_labels=len(classes), id2label=dict(enumerate(classes)),
                     label2id={c: i for i, c in enumerate(classes)})
    torch.manual_seed(seed)
    raw = out / "hf-init"
    ViTForImageClassification(conf).save_pretrained(raw)
    ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(raw)
    model, _ = import_hf(raw)
    data = load_data(data_path, image_size=model.image_size, seed=seed,
                     preprocessing=model.config.get("preprocessing"))
    t0 = time.perf_counter()
    stats = pretrain(model, data, PretrainConfig(seed=seed))
    export_native(model, out / "pretrained-hf", classes)
    shutil.rmtree(raw)
    keep = ("test_acc", "val_acc", "steps", "max_steps", "stopped_early", "learned")
    return {**{k: stats.get(k) for k in keep}, "seconds": time.perf_counter() - t0}


def flip_byte(weights: Path, tensor: str) -> None:
    raw = bytearray(weights.read_bytes())
    (size,) = struct.unpack("<Q", raw[:8])
    start = json.loads(raw[8:8 + size])[tensor]["data_offsets"][0]
    raw[8 + size + start + 1] ^= 0xFF
    weights.write_bytes(bytes(raw))


def task_rows(run: Path) -> list[dict]:
    results = json.loads((run / "results.json").read_text())
    rows = []
    for r in results["tasks"]:
        gate = r.get("audit") or {}
        rows.append({"task": r["task"], "forget": r["forget"], "acc_f": r["acc_f"], "acc_o": r["acc_o"],
                     "acc_r": r["acc_r"], "acc_r_change": r["acc_r_change_vs_pretrained"],
                     "deployed": r.get("deployed"), "probe_f_before": gate.get("probe_f_before"),
                     "probe_f": gate.get("probe_f"), "recovery": gate.get("recovery"),
                     "certified": gate.get("certified"), "gate_seconds": gate.get("seconds"),
                     "task_seconds": r["wall_seconds"], "check_images": gate.get("images")})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "orl-faces"))
    ap.add_argument("--out", default="runs/record-chain")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", default=str(HERE.parent / "docs" / "results" / "record_chain.json"))
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
                               f"{os.environ.get('OMP_NUM_THREADS', '2')}", "data": args.data, "steps": {}}
    print("1. pre-training a Hugging Face ViT on", args.data, flush=True)
    report["pretrain"] = pretrain_hf(args.data, out, args.seed)
    print("  ", report["pretrain"], flush=True)
    base = ["--data", args.data, "--tasks", "1x5", "--audit", "--no-progress"]
    report["steps"]["2_forget_audit"] = sh([*GSLORA, "forget", "--checkpoint", out / "pretrained-hf", *base,
                                            "--out", out / "r1", "--request-id", "request-1"])
    report["steps"]["3_forget_from_hf_folder"] = sh([*GSLORA, "forget", "--checkpoint", out / "r1" / "final", *base,
                                                     "--out", out / "r2", "--request-id", "request-2"])
    report["steps"]["3b_forget_from_gslora_checkpoint"] = sh(
        [*GSLORA, "forget", "--checkpoint", out / "r1" / "final.safetensors", *base, "--out", out / "r2b",
         "--request-id", "request-2b"])
    report["steps"]["4_history"] = sh([*GSLORA, "history", out / "r2" / "final"])
    report["steps"]["5_verify"] = sh([*GSLORA, "verify", out / "r2" / "final"])
    flipped = out / "tamper-weights"
    shutil.copytree(out / "r2" / "final", flipped)
    flip_byte(flipped / "model.safetensors", "vit.encoder.layer.0.intermediate.dense.weight")
    report["steps"]["6_verify_flipped_byte"] = sh([*GSLORA, "verify", flipped])
    edited = out / "tamper-record"
    shutil.copytree(out / "r2" / "final", edited)
    conf = json.loads((edited / "config.json").read_text())
    conf["gslora"]["record"][0]["classes"][0]["name"] = "someone else"
    (edited / "config.json").write_text(json.dumps(conf, indent=2))
    (edited / "gslora.json").unlink()
    report["steps"]["7_verify_edited_record"] = sh([*GSLORA, "verify", edited])
    report["runs"] = {name: task_rows(out / name) for name in ("r1", "r2", "r2b")
                      if (out / name / "results.json").is_file()}
    for name, rows in report["runs"].items():
        for r in rows:
            share = r["gate_seconds"] / r["task_seconds"] if r["gate_seconds"] and r["task_seconds"] else None
            r["gate_share_of_task"] = share
            print(f"{name} task {r['task']}: Acc_f {r['acc_f']:.1f} Acc_o {r['acc_o']} ΔAcc_r {r['acc_r_change']:+.1f} "
                  f"deployed Acc_o {r['deployed']['acc_o']} | probe Acc_f {r['probe_f_before']:.1f} -> "
                  f"{r['probe_f']:.1f}, recovery {r['recovery']:.0f}%, certified {r['certified']} | gate "
                  f"{r['gate_seconds']:.1f} s of the task's {r['task_seconds']:.1f} s", flush=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print("raw numbers:", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
