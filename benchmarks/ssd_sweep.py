"""SSD's selection weighting α on the micro test task: how much it dampens, forgets and keeps.

SSD's α = 10, λ = 1 were published for the paper's ResNet18 / ViT-B models; on a small ViT they may select almost
nothing. This sweeps α (λ fixed) on the tests' task: `vit_face_micro` pre-trained as in tests/conftest.py on 20 of
the bundled faces (16 px), one task forgetting 4 classes, replay ratio 0.2, importances on the whole training split.
No training, so it runs in about a minute on one CPU thread.

    .venv/bin/python benchmarks/ssd_sweep.py
    .venv/bin/python benchmarks/ssd_sweep.py --alphas 10 3 1 --lam 1 0.5

Writes docs/results/ssd_sweep_micro.json (validation and test numbers per setting). Choose α on validation, never on
test; the test numbers are printed for the record.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def micro():
    """The tests' micro model and data (tests/conftest.py)."""
    from gslora.data.faces import bundled_faces
    from gslora.models import create_model
    from gslora.pretrain import PretrainConfig, pretrain

    data = bundled_faces(image_size=16, seed=3, views={"train": 30, "val": 4, "test": 8}, num_faces=20)
    torch.manual_seed(0)
    model = create_model("vit_face_micro", data.num_classes)
    pretrain(model, data, PretrainConfig(epochs=40, batch_size=32, lr=3e-3, warmup_epochs=3, device="cpu"))
    return model, data


def main(argv=None) -> int:
    from gslora import RunConfig, run_forgetting
    from gslora.methods import get_method

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alphas", type=float, nargs="+", default=[10.0, 5.0, 3.0, 2.0, 1.0, 0.5])
    p.add_argument("--lam", type=float, nargs="+", default=[1.0], help="dampening constants λ")
    p.add_argument("--tasks", default="1x4")
    p.add_argument("--results", default=str(HERE.parent / "docs" / "results" / "ssd_sweep_micro.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, data = micro()
    cfg = RunConfig(tasks=args.tasks, replay_ratio=0.2, method="ssd", device="cpu", save_adapters=False)
    rows = []
    print("| α | λ | dampened | val Acc_f | val Acc_r | Acc_f | Acc_r | H | Acc_f before | Acc_r before |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for lam in args.lam:
        for alpha in args.alphas:
            method = get_method("ssd", selection_weighting=alpha, dampening_constant=lam)
            res = run_forgetting(copy.deepcopy(model), data.classes, data, cfg, method=method)
            r = res.rows[-1]
            row = {"alpha": alpha, "lam": lam, "dampened": r["trainable_params"], "tunable_ratio": r["tunable_ratio"],
                   "val": {k: r["val"][k] for k in ("acc_f", "acc_r", "h_mean")},
                   "test": {k: r[k] for k in ("acc_f", "acc_r", "h_mean")}, "before": r["before"],
                   "importance_data": r["method_info"].get("importance_data")}
            rows.append(row)
            h = "-" if r["h_mean"] is None else f"{r['h_mean']:.1f}"
            print(f"| {alpha:g} | {lam:g} | {r['trainable_params']} ({r['tunable_ratio']:.2f}%) | "
                  f"{r['val']['acc_f']:.1f} | {r['val']['acc_r']:.1f} | {r['acc_f']:.1f} | {r['acc_r']:.1f} | {h} | "
                  f"{r['before']['acc_f']:.1f} | {r['before']['acc_r']:.1f} |", flush=True)
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "benchmarks/ssd_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text(json.dumps({"command": command.strip(), "tasks": args.tasks, "replay_ratio": 0.2,
                               "model": "vit_face_micro (tests/conftest.py)", "rows": rows,
                               "seconds": time.perf_counter() - t0}, indent=1))
    print(f"{time.perf_counter() - t0:.0f} s; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
