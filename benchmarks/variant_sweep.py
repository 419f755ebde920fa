"""Many GS-LoRA settings on many datasets at once: a job list run by parallel worker processes (CPU or CUDA).

Each job line is ``LABEL DATASET KEY=VALUE ...`` (RunConfig keys, ``method_args.*`` for the method's arguments);
DATASET is one of ``orl`` (ORL 4x5), ``orl8`` (ORL 4x8), ``gt`` (Georgia Tech 4x10), ``faces`` (bundled, 4x20),
``omni`` (omniglot-small 4x20). Every job forgets from the same pre-trained checkpoints as
``benchmarks/forget_defaults.py`` (``CKPT_DIR/{orl,gt,faces,omniglot}.safetensors``, made with `gslora pretrain`
defaults) and appends one JSON line per finished job to ``OUT/results.jsonl``: per task Acc_f, Acc_o, ΔAcc_r (test),
the validation and check-set values, blocks selected, steps and trials. Jobs still running at the deadline are
dropped (listed as TIMEOUT in ``OUT/log.txt``).

    .venv/bin/python benchmarks/variant_sweep.py --jobs docs/results/forget_loss_sweep_jobs.txt --cpu 2 \
        --seconds 36000 --out runs/sweep
    .venv/bin/python benchmarks/variant_sweep.py --summary docs/results/forget_loss_sweep.jsonl

The sweep behind the margin loss, `min_replay 4` and the check set (README, "Choices made by measurement") ran on a
GPU machine's 16 CPU cores: 10 CPU workers and 6 CUDA workers for 540 s (the device of each job is in its line).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from forget_defaults import RUNS, SHARED  # noqa: E402

# short job names for the runs of benchmarks/forget_defaults.py (their data, task plan and checkpoint)
DATASETS = {"orl": "orl-4x5", "orl8": "orl-4x8", "gt": "gt-4x10", "faces": "faces-4x20", "omni": "omniglot-4x20"}


def one_job(ds: str, device: str, sets: list[str], data_dir: Path, ckpt_dir: Path) -> dict:
    import yaml

    from gslora.config import RunConfig
    from gslora.data import load_data
    from gslora.forget import run_forgetting
    from gslora.models import load_checkpoint

    name = DATASETS[ds]
    data, tasks, _ = RUNS[name]
    ck = name.split("-")[0]  # the checkpoint forget_defaults.py writes for this run
    kw, margs = {"data": data if data == "faces" else str(data_dir / Path(data).name), "tasks": tasks,
                 "device": device}, {}
    for kv in sets:
        k, v = kv.split("=", 1)
        (margs if k.startswith("method_args.") else kw)[k.removeprefix("method_args.")] = yaml.safe_load(v)
    cfg = RunConfig(**kw, method_args=margs)
    model, meta = load_checkpoint(ckpt_dir / f"{ck}.safetensors")
    bundle = load_data(cfg.data, image_size=model.image_size, seed=cfg.seed, split_ratio=cfg.split_ratio,
                       val_ratio=cfg.val_ratio)
    start = time.time()
    res = run_forgetting(model, meta["classes"], bundle, cfg)
    rows = [{"task": r["task"], "af": r["acc_f"], "ao": r["acc_o"], "dar": r["acc_r_change_vs_pretrained"],
             "vaf": r["val"]["acc_f"], "vdar": r["val"]["acc_r_change_vs_pretrained"],
             "caf": r["check"]["acc_f"], "cdar": -r["check"]["acc_r_drop"],
             "blocks": len(r["method_info"].get("selected_blocks", [])), "steps": r["steps"],
             "steps_all": r["steps_all_trials"], "trials": len(r["trials"])} for r in res.rows]
    return {"ds": ds, "device": device, "args": sets, "rows": rows, "seconds": time.time() - start}


def summary(path: Path) -> None:
    by = collections.defaultdict(dict)
    for line in path.read_text().splitlines():
        r = json.loads(line)
        by[r["label"]][r["ds"]] = r
    for label, per in by.items():
        for ds in DATASETS:
            if ds not in per:
                continue
            rows = per[ds]["rows"]

            def col(k, rows=rows):
                return " ".join("-" if x[k] is None else f"{x[k]:5.1f}" for x in rows)

            mean = sum(x["dar"] for x in rows) / len(rows)
            bar = all(x["af"] <= 5 and (x["ao"] is None or x["ao"] <= 5) and x["dar"] >= -3 for x in rows)
            print(f"{label:8s} {ds:5s} {per[ds]['device']:4s} Acc_f {col('af')} | Acc_o {col('ao')} | "
                  f"dAcc_r {col('dar')} | mean {mean:+5.1f} {'bar met' if bar else ''}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", help="job list: LABEL DATASET KEY=VALUE ... per line")
    p.add_argument("--cpu", type=int, default=1, help="CPU worker processes (one torch thread each)")
    p.add_argument("--cuda", type=int, default=0, help="CUDA worker processes")
    p.add_argument("--seconds", type=float, default=3600.0, help="deadline for the whole sweep")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--data-dir", default=str(SHARED))
    p.add_argument("--ckpt-dir", default="runs/forget-defaults")
    p.add_argument("--summary", help="print the table of a results.jsonl and exit")
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # worker: DATASET DEVICE KEY=VALUE ...
    args = p.parse_args(argv)
    if args.summary:
        summary(Path(args.summary))
        return 0
    if args.one:
        print("RESULT " + json.dumps(one_job(args.one[0], args.one[1], args.one[2:], Path(args.data_dir),
                                             Path(args.ckpt_dir))), flush=True)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.seconds
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    jobs: queue.Queue = queue.Queue()
    for line in Path(args.jobs).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            jobs.put(line.split())
    lock = threading.Lock()
    results, log = open(out / "results.jsonl", "a"), open(out / "log.txt", "a")

    def worker(device: str) -> None:
        while time.time() < deadline - 20:
            try:
                label, ds, *sets = jobs.get_nowait()
            except queue.Empty:
                return
            cmd = [sys.executable, __file__, "--data-dir", args.data_dir, "--ckpt-dir", args.ckpt_dir, "--one", ds,
                   device, *sets]
            start = time.time()
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                      timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with lock:
                    log.write(f"TIMEOUT {label} {ds} {device}\n")
                    log.flush()
                continue
            found = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            with lock:
                if found:
                    results.write(json.dumps({**json.loads(found[-1][7:]), "label": label}) + "\n")
                    results.flush()
                else:
                    log.write(f"FAIL {label} {ds} {device} rc={proc.returncode}\n{proc.stderr[-1500:]}\n")
                log.write(f"done {label} {ds} {device} {time.time() - start:.0f} s\n")
                log.flush()

    threads = [threading.Thread(target=worker, args=(d,)) for d in ["cpu"] * args.cpu + ["cuda"] * args.cuda]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary(out / "results.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
