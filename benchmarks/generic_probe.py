"""How well each model of a depth audit reads people that none of them ever saw: the generic part of the floor.

The depth proof's reference is a model retrained without the forgotten people, on the remaining ones only (20 of
ORL's 40, 10 of Georgia Tech's 50, 20 of the bundled faces' 100). It reads the forgotten people less well than the
original partly because it never saw them and partly because it learnt faces from fewer people. This script
separates the two: for each run folder it scores the audit's probe (`gslora.audit.strangers_probe`, what `gslora
audit --strangers` reports: the logistic regression of the audit's probe Acc_f, fit on a set's train split, scored
on its test split) on the *other* face datasets, whose people no model here trained on, under the
original, the run's final model, the head-forgetting run's final model (RUN-head, when it exists) and the
retrain-full references with the run's seed and --seeds (cached by `gslora audit --retrain-full`; trained here
when missing). The gap original − retrained on strangers is what a model trained on fewer people loses in general.

    .venv/bin/python benchmarks/generic_probe.py runs/depth/proof-orl-4x5 runs/depth/proof-gt-4x10 \\
        runs/depth/proof-faces-4x20

Raw numbers: docs/results/generic_probe.json (one key per run folder's name).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "results" / "generic_probe.json"
SHARED = HERE.parent.parent / "shared" / "data"
FACE_SETS = {"orl": str(SHARED / "orl-faces"), "gt": str(SHARED / "gt-faces"), "faces": "faces"}


def main() -> None:
    from floor_seeds import load_finished, runs_and_seeds

    from gslora.audit import AuditConfig, _load_model, cached_reference, load_strangers, same_data, strangers_probe

    a = runs_and_seeds(__doc__)
    for run in a.runs:
        t0 = time.perf_counter()
        results, rcfg, src, original, data, remain = load_finished(run)
        models = {"original": original, "forgotten": _load_model(Path(run) / "final.safetensors", "forgotten")[0]}
        head = Path(f"{run}-head") / "final.safetensors"
        if head.is_file():
            models["head"] = _load_model(head, "head")[0]
        for seed in [rcfg.seed] + [int(s) for s in a.seeds.split(",") if s]:
            models[f"retrained seed {seed}"] = cached_reference(original, src, rcfg.data, data, remain, seed, {},
                                                                "cpu", False)[0]
        sets = {}
        for name, spec in FACE_SETS.items():
            if same_data(spec, rcfg.data):
                continue
            strangers = load_strangers(spec, rcfg.data, original, rcfg)  # as `gslora audit --strangers` loads them
            sets[name] = {**strangers.describe(), "probe": {}}
            for label, model in models.items():
                sets[name]["probe"][label] = strangers_probe(model.eval(), strangers, AuditConfig(), "cpu")["acc"]
            print(Path(run).name, "on", name, {k: round(v, 1) for k, v in sets[name]["probe"].items()}, flush=True)
        saved = json.loads(OUT.read_text()) if OUT.is_file() else {}  # as it is now: another run may have written
        saved["machine"] = f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.system()}"
        saved[Path(run).name] = {"run": run, "data": rcfg.data, "remain": len(remain), "classes": len(data.classes),
                                 "sets": sets, "seconds": time.perf_counter() - t0}
        OUT.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
