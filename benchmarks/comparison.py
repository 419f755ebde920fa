"""A tuned 16-method comparison with depth columns, in shards that run side by side and pick up where they stopped.

Each shard is one process per group of methods (one torch thread each): `gslora tune` (its budget of trials per
method on the setting's tuning task), then `gslora benchmark --tuned` on the setting's plans. A shard whose tuning or
benchmark folder is unfinished is resumed (`--resume`), a finished one is skipped, so the command can be run again
after an interruption (a session's end, a killed process). When every shard has finished, the shards are merged by
`benchmarks/merge_comparisons.py --depth`, which audits every method's final models against the retrained references.

    .venv/bin/python benchmarks/comparison.py --name faces --data faces \\
        --checkpoint runs/depth/faces.safetensors --setting continual

`--shards a` runs one shard only (when one core is free); the merge then waits for a run that finds every shard
finished. It writes docs/results/comparison_faces_depth.{json,md} and tune_faces_depth.{yaml,md} (NAME: the raw
files' name, `comparison_NAME_depth`; benchmarks/make_tables.py has a table for orl, orl_single, faces and
faces_single).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "docs" / "results"
# two shards of about equal tuning time (measured on ORL continual 4 x 8 and single step)
SHARDS = {"a": "derpp,der,l2,scrub-s,gslora++,head,ssd,gslora",
          "b": "mas,lwf,ewc,fdr,uniform-kd,retrain-full,scrub,retrain"}


def step(command: list[str], folder: Path, done: str) -> list[str] | None:
    """The command to run for ``folder``: None when ``folder/done`` exists, ``--resume`` when the folder does."""
    if (folder / done).is_file():
        return None
    return [*command, "--resume"] if folder.is_dir() else command


def shard_script(args, name: str, methods: str) -> list[list[str]]:
    common = ["--checkpoint", args.checkpoint, "--data", args.data, "--setting", args.setting, "--methods", methods,
              "--no-progress"]
    tune_dir, bench_dir = Path(args.work) / f"tune-{name}", Path(args.work) / f"bench-{name}"
    gslora = [sys.executable, "-m", "gslora"]
    steps = [step([*gslora, "tune", *common, "--budget", str(args.budget), "--out", str(tune_dir)], tune_dir,
                  "tuned.yaml"),
             step([*gslora, "benchmark", *common, "--tuned", str(tune_dir / "tuned.yaml"), "--out", str(bench_dir)],
                  bench_dir, "comparison.json")]
    return [s for s in steps if s is not None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="the raw files' name: docs/results/comparison_NAME_depth.json")
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--setting", required=True, choices=["continual", "single"])
    p.add_argument("--budget", type=int, default=3, help="tuning trials per method (default 3, as on ORL)")
    p.add_argument("--work", default=None, help="folder of the shards' runs (default runs/cmp/NAME)")
    p.add_argument("--shards", default=",".join(SHARDS),
                   help="the shards to run now (default all: %(default)s); the merge waits until every shard finished")
    p.add_argument("--dry-run", action="store_true", help="print each shard's commands, run nothing")
    args = p.parse_args(argv)
    shards = args.shards.split(",")
    if unknown := sorted(set(shards) - set(SHARDS)):
        p.error(f"unknown shard(s) {', '.join(unknown)}; the shards are {', '.join(SHARDS)}")
    args.work = args.work or f"runs/cmp/{args.name}"
    Path(args.work).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name in shards:
        commands = shard_script(args, name, SHARDS[name])
        if not commands:
            continue
        script = " && ".join(subprocess.list2cmdline(c) for c in commands)
        if args.dry_run:
            print(f"shard {name}: {script}")
            continue
        log = Path(args.work) / f"{name}.log"
        with open(log, "a") as out:  # the child keeps its own handle
            procs[name] = subprocess.Popen(["bash", "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT)
        print(f"shard {name}: {len(commands)} step(s), log {log}", flush=True)
    if args.dry_run:
        return 0
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    if failed:
        raise SystemExit(f"shard(s) {', '.join(failed)} failed: see their logs in {args.work}")
    work = Path(args.work)
    if waiting := [n for n in SHARDS if not (work / f"bench-{n}" / "comparison.json").is_file()]:
        print(f"not merged yet: shard(s) {', '.join(waiting)} unfinished (run them with --shards)", flush=True)
        return 0
    subprocess.run([sys.executable, str(HERE / "merge_comparisons.py"), *(str(work / f"bench-{n}") for n in SHARDS),
                    "--out", str(RESULTS / f"comparison_{args.name}_depth"),
                    "--tuning", *(str(work / f"tune-{n}") for n in SHARDS),
                    "--tuning-out", str(RESULTS / f"tune_{args.name}_depth"), "--depth", str(work / "depth")],
                   env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
