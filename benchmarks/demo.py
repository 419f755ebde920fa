"""Time `gslora demo` from a cold cache (pre-training included) and a warm one, and check the quality bar.

    .venv/bin/python benchmarks/demo.py            # prints a table; exit status 0 even if the bar is missed

Quality bar (issue 2), after every task: Acc_f <= 5, Acc_o <= 5, Acc_r at most 3 points below the pre-trained model's
Acc_r on the same classes. Figures are for the machine it runs on; the README quotes a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_demo(out: Path, cache: Path, extra: list[str]) -> float:
    env = {**os.environ, "GSLORA_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "gslora.cli", "demo", "--out", str(out), "--no-progress", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-demo")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--record", action="store_true",
                   help="run the demo once with the bundled model and store its numbers as the 'bundled model "
                        "(default)' entry of docs/results/demo_time.json (the README's demo table)")
    args = p.parse_args()
    if args.record:
        return record(Path(args.out))
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        cold = run_demo(Path(args.out), Path(cache), [])
        warm = run_demo(Path(args.out), Path(cache), [])
    results = json.loads((Path(args.out) / "results.json").read_text())
    print(f"machine: {os.cpu_count()} CPU cores; torch threads: {args.threads or 'default'}")
    print(f"gslora demo, cold cache (pre-training + 4 tasks): {cold:.0f} s")
    print(f"gslora demo, warm cache (4 tasks only):           {warm:.0f} s\n")
    print("| Task | Acc_f | Acc_o | Acc_r | pre-trained Acc_r | ΔAcc_r | H | blocks selected | tunable | bar |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok_all = True
    for r in results["tasks"]:
        ok = r["acc_f"] <= 5 and (r["acc_o"] is None or r["acc_o"] <= 5) and r["acc_r_change_vs_pretrained"] >= -3
        ok_all &= ok
        acc_o = "-" if r["acc_o"] is None else f"{r['acc_o']:.1f}"
        info = r["method_info"]
        print(f"| {r['task']} | {r['acc_f']:.1f} | {acc_o} | {r['acc_r']:.1f} | {r['pretrained']['acc_r']:.1f} | "
              f"{r['acc_r_change_vs_pretrained']:+.1f} | {r['h_mean']:.1f} | {len(info['selected_blocks'])}/"
              f"{len(info['group_norms'])} | {r['tunable_ratio']:.2f}% | {'pass' if ok else 'MISS'} |")
    print(f"\nquality bar: {'met after every task' if ok_all else 'missed (see MISS rows)'}")
    return 0


def record(out: Path) -> int:
    """``gslora demo`` once (the bundled model, a fresh cache), its per-task numbers into demo_time.json."""
    import platform
    from datetime import date

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "GSLORA_CACHE": cache}
        cmd = [sys.executable, "-m", "gslora.cli", "demo", "--out", str(out), "--no-progress"]
        start = time.perf_counter()
        printed = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - start
    results = json.loads((out / "results.json").read_text())
    seconds = next((float(line.split()[-2]) for line in printed.splitlines() if line.startswith("demo finished in")),
                   wall)
    keys = ("task", "acc_f", "acc_o", "acc_r", "acc_r_change_vs_pretrained", "h_mean", "probe_f", "probe_keep",
            "steps", "steps_all_trials", "wall_seconds")
    path = Path(__file__).resolve().parent.parent / "docs" / "results" / "demo_time.json"
    saved = json.loads(path.read_text())
    saved["runs"]["bundled model (default)"] = {
        "command": "gslora demo --out runs/demo", "printed_demo_seconds": seconds, "process_wall_seconds": wall,
        "pretraining_seconds": 0.0, "tasks": [{k: t.get(k) for k in keys} for t in results["tasks"]],
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU", "date": date.today().isoformat(),
        "load_average_before": load_before, "load_average_after": os.getloadavg()}
    path.write_text(json.dumps(saved, indent=1))
    print(printed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
