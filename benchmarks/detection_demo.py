"""Measure `gslora demo --detection`: pre-training time (cold cache), the 4 forgetting tasks (warm cache) and the
quality bar of issue 12, for GS-LoRA and the detection baselines on the same cached detector.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detection_demo.py [--methods gslora,finetune,l2] [--cache DIR]

Quality bar, after every task: AP_f ≤ 20% of its value before the task, AP_r at most 3 points below the pre-trained
model's AP on the same categories. Prints a table per method and writes docs/results/detection_demo.json (raw
numbers). The figures are for the machine it runs on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run(argv: list[str], cache: Path) -> float:
    env = {**os.environ, "GSLORA_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gslora.cli", *argv], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bar(row: dict) -> bool:
    f_ok = row["ap_f_before"] is not None and row["ap_f"] is not None and row["ap_f"] <= 0.2 * row["ap_f_before"]
    r_ok = row["ap_r_drop"] is not None and row["ap_r_drop"] <= 3.0
    return bool(f_ok and r_ok)


def fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="gslora,finetune,l2")
    p.add_argument("--out", default="runs/bench-detection")
    p.add_argument("--cache", default=None, help="GSLORA_CACHE for the pre-trained detector (default: ~/.cache)")
    p.add_argument("--json", default="docs/results/detection_demo.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a run setting for every method, e.g. --set max_steps=100")
    args = p.parse_args()
    cache = Path(args.cache or os.environ.get("GSLORA_CACHE", Path.home() / ".cache" / "gslora"))
    sets = [x for s in args.overrides for x in ("--set", s)]
    report = {"machine": {"cpu_cores": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS")},
              "methods": {}}
    for i, method in enumerate(args.methods.split(",")):
        out = Path(args.out) / method
        seconds = run(["demo", "--detection", "--out", str(out), "--no-progress", "--set", f"method={method}", *sets],
                      cache)
        results = json.loads((out / "results.json").read_text())
        report["methods"][method] = {"demo_seconds": seconds, "results": results}
        if i == 0:
            pre = json.loads(next(cache.glob("demo-detection-*/gslora_detection.json")).read_text())["pretrain"]
            report["pretrain"] = {k: pre[k] for k in ("steps", "train_seconds", "test_ap", "test_ap50", "class_ap")}
            print(f"pre-trained detector: test AP {pre['test_ap']:.1f} / AP50 {pre['test_ap50']:.1f} "
                  f"({pre['steps']} steps, {pre['train_seconds']:.0f} s of pre-training when it was built)")
        print(f"\n{method}: whole demo {seconds:.0f} s (forgetting {results['wall_seconds']:.0f} s)")
        print("| task | AP_f before → after | AP_o | AP_r pre-trained → after | H | steps | s | bar |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results["tasks"]:
            print(f"| {r['task']} | {fmt(r['ap_f_before'])} → {fmt(r['ap_f'])} | {fmt(r['ap_o'])} | "
                  f"{fmt(r['ap_r_pretrained'])} → {fmt(r['ap_r'])} | {fmt(r['h_mean'])} | {r['steps']} | "
                  f"{r['wall_seconds']:.0f} | {'met' if bar(r) else 'MISSED'} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    slim = {**report, "methods": {m: {"demo_seconds": v["demo_seconds"],
                                      "tasks": [{k: r[k] for k in ("task", "forget", "ap_f_before", "ap_f", "ap_o",
                                                                   "ap_r_pretrained", "ap_r", "ap_r_drop", "h_mean",
                                                                   "steps", "wall_seconds", "tunable_ratio")}
                                                | {"bar_met": bar(r)} for r in v["results"]["tasks"]],
                                      "config": v["results"]["config"]}
                                  for m, v in report["methods"].items()}}
    Path(args.json).write_text(json.dumps(slim, indent=2) + "\n")
    print(f"\nraw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
