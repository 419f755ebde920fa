"""How long `gslora --help` (and each command's --help) takes: the command line imports PyTorch only when a command
runs, not to print help.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 10]

Runs the installed `gslora` entry point (the one beside this Python) REPEATS times per command line, prints the
median, min and max wall time, and writes them to docs/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMANDS = (["--help"], ["forget", "--help"], ["audit", "--help"], ["list"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", default=str(HERE.parent / "docs" / "results" / "cli_startup.json"))
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("gslora")
    if not exe.is_file():
        sys.exit(f"no gslora entry point beside {sys.executable}; run `make install` first")
    rows = []
    for argv in COMMANDS:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run([str(exe), *argv], check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        rows.append({"command": "gslora " + " ".join(argv), "median_s": statistics.median(times),
                     "min_s": min(times), "max_s": max(times), "repeats": args.repeats})
        print(f"{rows[-1]['command']:<22} median {rows[-1]['median_s']:.3f} s  (min {min(times):.3f}, max "
              f"{max(times):.3f}, {args.repeats} runs)")
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
           "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print("raw numbers:", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
