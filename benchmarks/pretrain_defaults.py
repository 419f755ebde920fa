"""`gslora pretrain` with no settings: train / val / test accuracy, steps and time on every small folder.

    .venv/bin/python benchmarks/pretrain_defaults.py                 # all four, checkpoints in /tmp/ck
    .venv/bin/python benchmarks/pretrain_defaults.py --only orl,faces --threads 1   # on a shared CPU
    .venv/bin/python benchmarks/pretrain_defaults.py --table         # print the table of the saved JSON only

Each run is exactly what a new user types, `gslora pretrain --data DATA --model vit_face_tiny --out CK` (plus
`--no-progress`), one after the other, so the numbers are the library's defaults and nothing else. The results (and
the machine: CPU cores, torch version and threads, load average before / after each run, since time on a shared CPU
depends on what else runs) go to docs/results/pretrain_defaults.json; the checkpoints to --ck-dir/<name>.safetensors.
A run that exits 3 (the model did not learn) is recorded as such, not as an error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {"orl": str(SHARED / "orl-faces"), "gt": str(SHARED / "gt-faces"), "faces": "faces",
            "omniglot": str(SHARED / "omniglot-small")}
RESULTS = ROOT / "docs" / "results" / "pretrain_defaults.json"


def run_one(name: str, data: str, ck_dir: Path, model: str, threads: int) -> dict:
    out = ck_dir / f"{name}.safetensors"
    cmd = [sys.executable, "-m", "gslora.cli", "pretrain", "--data", data, "--model", model, "--out", str(out),
           "--overwrite", "--no-progress"]
    load_before = os.getloadavg()
    start = time.perf_counter()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{name}: gslora pretrain failed ({proc.returncode}):\n{proc.stderr}")
    meta = json.loads(out.with_suffix(".json").read_text())
    pre = meta["pretrain"]
    return {"data": data, "checkpoint": str(out), "exit_status": proc.returncode, "classes": len(meta["classes"]),
            "train_images": pre.get("train_images"),
            **{k: pre.get(k) for k in ("train_acc", "val_acc", "test_acc", "steps", "max_steps", "best_step",
                                       "stopped_early", "warmup_steps", "eval_every", "budget_rule", "learned",
                                       "not_learned_reason", "train_seconds")},
            "wall_seconds": wall, "load_average_before": load_before[:2], "load_average_after": os.getloadavg()[:2],
            "stdout": proc.stdout.strip().splitlines()}


def table(results: dict) -> str:
    rows = ["| data | classes | train | val | test | steps (budget) | best step | pre-training s | learned |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        learned = "yes" if r["learned"] else "**no**"
        rows.append(f"| {name} | {r['classes']} | {r['train_acc']:.1f} | {r['val_acc']:.1f} | {r['test_acc']:.1f} | "
                    f"{r['steps']} ({r['max_steps']}) | {r['best_step']} | {r['train_seconds']:.0f} | {learned} |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated subset of " + ", ".join(DATASETS))
    p.add_argument("--ck-dir", default="/tmp/ck", help="where the checkpoints go")
    p.add_argument("--model", default="vit_face_tiny")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of each run (OMP_NUM_THREADS; 0: torch's default). On a CPU shared with other "
                        "jobs 1 is much faster: threads waiting for a busy core spin")
    p.add_argument("--table", action="store_true", help="only print the table of the saved results")
    args = p.parse_args()
    path = Path(args.results)
    saved = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if not args.table:
        import torch

        names = args.only.split(",") if args.only else list(DATASETS)
        ck_dir = Path(args.ck_dir)
        ck_dir.mkdir(parents=True, exist_ok=True)
        saved["machine"] = {"cpu_cores": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                            "torch": torch.__version__,
                            "torch_threads": args.threads or torch.get_num_threads(),
                            "cuda": torch.cuda.is_available()}
        saved["command"] = f"gslora pretrain --data DATA --model {args.model} --out CK"
        for name in names:
            print(f"{name}...", flush=True)
            saved["runs"][name] = run_one(name, DATASETS[name], ck_dir, args.model, args.threads)
            saved["runs"] = {k: saved["runs"][k] for k in DATASETS if k in saved["runs"]}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(saved, indent=1) + "\n")
    print(f"machine: {saved.get('machine')}")
    print(table(saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
