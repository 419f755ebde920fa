"""How much the floor moves: the depth proof's retrained reference (a model trained from scratch without the
forgotten classes) trained with several seeds, each audited against the same forgotten model.

The proof's checks compare the forgotten model with one retrained model; a model trained with another seed reads the
forgotten classes differently (the ORL floor is 60 test images). For each run folder: the retrain-full reference
with the run's seed (cached by `gslora audit --retrain-full`) and with each seed of --seeds (trained here, cached in
the same place), then `gslora.audit.audit_run` of the run against each; the forgotten model's numbers do not depend
on the reference.

    .venv/bin/python benchmarks/floor_seeds.py runs/depth/proof-orl-4x5 runs/depth/proof-gt-4x10 --seeds 1,2

Raw numbers: docs/results/floor_seeds.json (one key per run folder's name).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from statistics import mean, pstdev

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "results" / "floor_seeds.json"


def load_finished(run: str):
    """A finished run's (results, RunConfig, source checkpoint path, original model, its data, remaining classes)."""
    from gslora.audit import _load_model, run_classes
    from gslora.data import load_data
    from gslora.rundir import RunFolder

    finished = RunFolder.load(run)
    results, rcfg = finished.results, finished.config
    src = results["source_checkpoint"]
    original, _ = _load_model(Path(src), "original")
    data = load_data(rcfg.data, image_size=original.image_size, seed=rcfg.seed, split_ratio=rcfg.split_ratio,
                     val_ratio=rcfg.val_ratio, preprocessing=original.config.get("preprocessing"))
    return results, rcfg, src, original, data, run_classes(results)[1]


def runs_and_seeds(doc: str) -> argparse.Namespace:
    """The command line of floor_seeds and generic_probe (run folders, --seeds); torch's threads: OMP_NUM_THREADS."""
    import torch

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--seeds", default="1,2", help="the retrained references' seeds besides the run's own")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return p.parse_args()


def main() -> None:
    from gslora.audit import audit_run, cached_reference, model_numbers

    a = runs_and_seeds(__doc__)
    for run in a.runs:
        results, rcfg, src, original, data, remain = load_finished(run)
        seeds = [rcfg.seed] + [int(s) for s in a.seeds.split(",") if s]
        rows = []
        for seed in seeds:
            t0 = time.perf_counter()
            _, info = cached_reference(original, src, rcfg.data, data, remain, seed, {}, "cpu", False)
            report = audit_run(run, retrained=info["cache"], data=data, write=False)
            numbers = {k: model_numbers(m) for k, m in report["models"].items()}
            rows.append({"seed": seed, "retrained": numbers["retrained"], "forgotten": numbers["forgotten"],
                         "cached": info["cached"], "seconds": time.perf_counter() - t0})
            print(Path(run).name, seed, numbers["retrained"], flush=True)
        summary = {}
        for key in ("probe_f", "recovery", "mia_auc"):
            values = [r["retrained"][key] for r in rows if r["retrained"][key] is not None]
            summary[key] = {"mean": mean(values), "sd": pstdev(values), "min": min(values), "max": max(values),
                            "forgotten": rows[0]["forgotten"][key]}
        saved = json.loads(OUT.read_text()) if OUT.is_file() else {}  # as it is now: another run may have written
        saved["machine"] = f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.system()}"
        saved[Path(run).name] = {"run": run, "seeds": seeds, "references": rows, "summary": summary}
        OUT.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
