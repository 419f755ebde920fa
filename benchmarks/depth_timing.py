"""Wall time of the depth defaults against the defaults before them, measured in pairs: both `gslora forget` runs of a
dataset start at the same moment on the same checkpoint and plan, one torch thread each, so they share whatever load
the machine has. "before" is the defaults when the depth work began: no collapse term, no embedding anchor, no probe
target (`--set method_args.collapse_weight=0 --set method_args.anchor_weight=0 --set target=acc_f<=2,acc_r_drop<=2`;
without an anchor a retention miss halves the lr, the rule of then).

    .venv/bin/python benchmarks/depth_timing.py --only orl-4x5

With ``--then REV`` "before" is instead the gslora of commit REV with its own defaults (checked out into a temporary
git worktree and run from its source on this virtual environment): the issue's "today" is 0866d3c^, the commit the
depth work started from, so ``--then 0866d3c^`` measures the wall time against it, engineering since then included.

Raw numbers: docs/results/depth_timing.json (merged per dataset; ``--then`` runs under the key ``then``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from depth_proof import RUNS  # noqa: E402  (the proof's datasets and plans)

BEFORE = ["--set", "method_args.collapse_weight=0", "--set", "method_args.anchor_weight=0",
          "--set", "target=acc_f<=2,acc_r_drop<=2"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=sorted(RUNS))
    p.add_argument("--out", default="runs/depth")
    p.add_argument("--results", default=str(HERE.parent / "docs" / "results" / "depth_timing.json"))
    p.add_argument("--then", metavar="REV", help="'before' is the gslora of commit REV with its own defaults")
    args = p.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if args.then:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "then"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), args.then], check=True)
            try:
                sha = subprocess.run(["git", "rev-parse", args.then], capture_output=True, text=True,
                                     check=True).stdout.strip()
                return measure(args, env, {**env, "PYTHONPATH": str(tree / "src")}, [], {"code": sha[:7]})
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=False)
    return measure(args, env, env, BEFORE, None)


def measure(args, env: dict, env_before: dict, before_args: list[str], then: dict | None) -> int:
    """Each dataset's pair of runs; ``env_before`` / ``before_args``: how the "before" run is started."""
    for name in args.only or list(RUNS):
        data, tasks = RUNS[name]
        ckpt = Path(args.out) / f"{name.split('-')[0]}.safetensors"
        folders = {"now": Path(args.out) / f"timing-{name}-now", "before": Path(args.out) / f"timing-{name}-before"}
        common = [sys.executable, "-m", "gslora", "forget", "--checkpoint", str(ckpt), "--data", data, "--tasks", tasks,
                  "--overwrite", "--no-progress"]
        load = os.getloadavg()
        t0 = time.perf_counter()
        procs = {k: subprocess.Popen([*common, "--out", str(f), *(before_args if k == "before" else [])],
                                     env=env_before if k == "before" else env, stdout=subprocess.DEVNULL)
                 for k, f in folders.items()}
        seconds = {}
        for k, proc in procs.items():
            if proc.wait() != 0:
                raise SystemExit(f"{name} {k}: gslora forget failed")
            seconds[k] = time.perf_counter() - t0  # the first to finish ran alone for a while: per task below
        record = {"load_average_at_start": load, "machine": f"{platform.machine()} {os.cpu_count()}-core",
                  **({"before_code": then["code"]} if then else {})}
        for k, f in folders.items():
            res = json.loads((f / "results.json").read_text())
            record[k] = {"tasks": [{"task": t["task"], "wall_seconds": t["wall_seconds"], "trials": len(t["trials"]),
                                    "steps_all_trials": t["steps_all_trials"], "acc_f": t["acc_f"],
                                    "acc_r_change": t["acc_r_change_vs_pretrained"], "probe_f": t.get("probe_f")}
                                   for t in res["tasks"]],
                         "sum_task_seconds": sum(t["wall_seconds"] for t in res["tasks"]),
                         "process_seconds": seconds[k]}
        record["ratio"] = record["now"]["sum_task_seconds"] / record["before"]["sum_task_seconds"]
        now, before = record["now"]["sum_task_seconds"], record["before"]["sum_task_seconds"]
        print(f"{name}: now {now:.0f} s, before {before:.0f} s, ratio {record['ratio']:.2f}", flush=True)
        path = Path(args.results)
        saved = json.loads(path.read_text()) if path.exists() else {"runs": {}}
        saved.setdefault("then" if then else "runs", {})[name] = record
        path.write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
