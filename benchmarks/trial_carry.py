"""Fewer wasted trials: each task's first trial at the lr its predecessor's kept trial needed, instead of the configured
lr. The defaults start every task at the configured lr; on the bundled faces the first trial of tasks 1-3 ran its
whole budget without forgetting (Acc_f 9.4 / 3.9 / 2.2 on the check set) and the task was won at twice or four times
the lr, which is most of the depth defaults' extra time there (docs/results/DECISIONS.md#timing-history). Carrying
the kept trial's lr multiplier to the next task is a rule on the user's validation split (the trial rule chose it),
not a per-dataset setting.

Runs `gslora forget` with defaults through the API with that policy on the depth proof's checkpoints and plan
(benchmarks/depth_proof.py, --out), audits the run like the proof (`--retrain-full`, the proof's head run compared;
the retrained reference comes from the cache) and records per-task numbers, steps, trials and seconds beside the
proof's own run of the same checkpoint:

    .venv/bin/python benchmarks/trial_carry.py --only faces-4x20
    .venv/bin/python benchmarks/trial_carry.py --only faces-4x20 --set lr=0.005005 --label=-lr5005   # a second run

Raw numbers: docs/results/trial_carry.json (merged per dataset).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from depth_proof import RUNS, print_record, read_audit, task_checks  # noqa: E402

from gslora.policy import TargetPolicy, next_trial  # noqa: E402


@dataclasses.dataclass
class CarryPolicy(TargetPolicy):
    """The default policy, but a task's first trial runs at the lr multiplier of the trial the task before kept
    (:meth:`on_task`, the runner's call with each finished task's row)."""

    start: float = 1.0

    def on_task(self, row: dict, n_tasks: int) -> None:
        self.start = row["trials"][row["chosen_trial"] - 1]["lr_scale"]

    def next_trial(self, trials: list[dict], method=None):
        if not trials:
            return self.start, 1.0
        return next_trial(trials, anchored=bool(getattr(method, "anchored", False)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=sorted(RUNS))
    p.add_argument("--out", default="runs/depth")
    p.add_argument("--proof", default=str(HERE.parent / "docs" / "results" / "depth_proof_rerun.json"),
                   help="the proof whose checkpoints (in --out) and runs this is compared with")
    p.add_argument("--results", default=str(HERE.parent / "docs" / "results" / "trial_carry.json"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="RunConfig settings (e.g. lr=0.005005: a second run), recorded under the dataset + --label")
    p.add_argument("--label", default="", help="suffix of the dataset's key in the JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from gslora import load_checkpoint, load_data, load_run_config
    from gslora.audit import audit_run
    from gslora.forget import run_forgetting
    from gslora.presets import resolve

    out = Path(args.out)
    proof = json.loads(Path(args.proof).read_text())["runs"]
    path = Path(args.results)
    for name in args.only or list(RUNS):
        data_spec, tasks = RUNS[name]
        ckpt = out / f"{name.split('-')[0]}.safetensors"
        model, meta = load_checkpoint(ckpt)
        cfg = resolve(load_run_config(None, args.overrides, data=data_spec, tasks=tasks, method="gslora"))
        data = load_data(data_spec, image_size=model.image_size, seed=cfg.seed, split_ratio=cfg.split_ratio,
                         val_ratio=cfg.val_ratio)
        folder = out / f"carry-{name}{args.label}"
        t0 = time.perf_counter()
        policy = CarryPolicy.from_config(cfg)
        result = run_forgetting(model, meta["classes"], data, cfg, out_dir=folder, overwrite=True,
                                source_checkpoint=ckpt, policy=policy, on_task=policy.on_task)
        seconds = time.perf_counter() - t0
        head = out / f"proof-{name}-head"
        audit_run(folder, compare={"head": head / "final.safetensors"}, retrain_full=True, write=True)
        head_rows = json.loads((head / "results.json").read_text())["tasks"]
        rows = task_checks(result.results["tasks"], head_rows)
        for row, full in zip(rows, result.results["tasks"]):
            row["lr_scales"] = [t["lr_scale"] for t in full["trials"]]
            row["steps_all_trials"] = full["steps_all_trials"]
        proof_rows = json.loads((out / f"proof-{name}" / "results.json").read_text())["tasks"]
        audit = read_audit(folder)
        record = {"settings": args.overrides, "seconds": seconds, "tasks": rows,
                  "audit": {k: audit[k] for k in ("models", "checks")},  # the per-class depth stays in the run folder
                  "proof": {"audit": proof[name]["audit"]["models"]["forgotten"],
                            "steps_all_trials": [t["steps_all_trials"] for t in proof_rows],
                            "trials": [len(t["trials"]) for t in proof_rows],
                            "wall_seconds": [t["wall_seconds"] for t in proof_rows]}}
        print_record(name, record, lambda t: f"lr {t['lr_scales']} steps {t['steps_all_trials']} ")
        saved = json.loads(path.read_text()) if path.exists() else {"runs": {}}
        saved["machine"] = f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.system()}, 1 torch thread"
        saved["runs"][name + args.label] = record
        path.write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
