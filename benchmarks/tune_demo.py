"""How the demo's GS-LoRA settings were chosen: a grid over lr, LoRA scaling, BND and replay size on the first
task (100-20) of the bundled-faces demo, scored on the VALIDATION split only (test shown for reference).

    .venv/bin/python benchmarks/tune_demo.py            # uses (or creates) the demo's cached pre-trained model

Each row: one forgetting task of 20 classes, 30 epochs, seed 1337. Acc_r is compared with the pre-trained model's
Acc_r on the same classes; the target is Acc_f <= 5 with Acc_r at most 3 points lower.
"""

from __future__ import annotations

import argparse
import sys
import time

# (label, run settings, method_args); everything else is the RunConfig / gslora.yaml default
GRID = [
    ("paper: lr 1e-2, scaling 1/8, BND 105, 2 replay/class", {"lr": 1e-2}, {}),
    ("lr 1e-2, scaling 1, BND 105, 2 replay/class", {"lr": 1e-2}, {"lora_alpha": 8.0}),
    ("lr 1e-3, scaling 1, BND 105, 2 replay/class", {"lr": 1e-3}, {"lora_alpha": 8.0}),
    ("lr 1e-3, scaling 1, BND 105, 5 replay/class", {"lr": 1e-3, "replay_ratio": 0.25}, {"lora_alpha": 8.0}),
    ("lr 3e-3, scaling 1, BND 105, 5 replay/class", {"lr": 3e-3, "replay_ratio": 0.25}, {"lora_alpha": 8.0}),
    ("lr 3e-3, scaling 1, BND 60, 5 replay/class", {"lr": 3e-3, "replay_ratio": 0.25},
     {"lora_alpha": 8.0, "bound": 60.0}),
    ("lr 3e-3, scaling 1, BND 45, 5 replay/class", {"lr": 3e-3, "replay_ratio": 0.25},
     {"lora_alpha": 8.0, "bound": 45.0}),
    ("lr 3e-3, scaling 1, BND 30, 5 replay/class", {"lr": 3e-3, "replay_ratio": 0.25},
     {"lora_alpha": 8.0, "bound": 30.0}),
    ("lr 3e-3, rank 2, BND 60, 5 replay/class", {"lr": 3e-3, "replay_ratio": 0.25},
     {"lora_rank": 2, "lora_alpha": 2.0, "bound": 60.0}),
    ("lr 3e-3, scaling 1, BND 60, α 1e-2, 5 replay/class", {"lr": 3e-3, "replay_ratio": 0.25},
     {"lora_alpha": 8.0, "bound": 60.0, "alpha": 1e-2}),
    ("lr 3e-3, scaling 1, BND 60, 10 replay/class (demo)", {"lr": 3e-3, "replay_ratio": 0.5},
     {"lora_alpha": 8.0, "bound": 60.0}),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--rows", help="comma-separated row numbers to run (default: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from gslora import RunConfig, load_checkpoint, load_data, run_forgetting
    from gslora.cli import _cache_dir
    from gslora.cli import main as cli_main

    cached = sorted(_cache_dir().glob("demo-vit_face_tiny-*.safetensors"))
    if not cached:  # pre-train (and cache) the demo model by running the demo once
        cli_main(["demo", "--out", "runs/tune-demo-init", "--no-progress", "--epochs", "1"])
        cached = sorted(_cache_dir().glob("demo-vit_face_tiny-*.safetensors"))
    ckpt = cached[-1]
    _, meta = load_checkpoint(ckpt)
    data = load_data("faces", image_size=24)
    rows = [int(r) for r in args.rows.split(",")] if args.rows else range(len(GRID))
    print(f"checkpoint {ckpt}\n")
    print("| # | setting | val Acc_f | val Acc_r (pre) | val ΔAcc_r | test Acc_f | test ΔAcc_r | blocks selected | "
          "max ‖ΔW‖/‖W‖ | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i in rows:
        label, run, margs = GRID[i]
        model, _ = load_checkpoint(ckpt)
        cfg = RunConfig(**{"tasks": "1x20", "epochs": args.epochs, "device": "cpu", "save_adapters": False, **run,
                           "method_args": margs})
        t0 = time.perf_counter()
        r = run_forgetting(model, meta["classes"], data, cfg).rows[0]
        v, info = r["val"], r["method_info"]
        print(f"| {i} | {label} | {v['acc_f']:.1f} | {v['acc_r']:.1f} ({v['pretrained']['acc_r']:.1f}) | "
              f"{v['acc_r_change_vs_pretrained']:+.1f} | {r['acc_f']:.1f} | {r['acc_r_change_vs_pretrained']:+.1f} | "
              f"{len(info['selected_blocks'])}/{len(info['group_norms'])} | {max(info['relative_delta_norms']):.2f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
