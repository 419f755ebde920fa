"""GS-LoRA against every baseline (paper Tables 1 and 3), on the bundled faces and on ../shared/data/orl-faces.

Pre-trains vit_face_tiny per dataset (cached in --out), then runs `gslora.compare.run_comparison` (what
`gslora benchmark` runs) for each setting and prints the comparison tables. The shared data is read in place, never
copied into the repository.

    .venv/bin/python benchmarks/baselines.py                                   # faces (+ ORL if present), both settings
    .venv/bin/python benchmarks/baselines.py --datasets faces --settings continual --epochs 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ORL = HERE.parent.parent / "shared" / "data" / "orl-faces"

# name → (data spec, image size, pretrain settings)
DATASETS = {
    "faces": ("faces", 24, dict(epochs=30, batch_size=64, lr=1e-3, warmup_epochs=3)),
    "orl": (str(ORL), 32, dict(epochs=150, batch_size=32, lr=1e-3, warmup_epochs=10)),
}


def pretrained(path: Path, data, image_size: int, settings: dict, seed: int) -> tuple[Path, dict]:
    from gslora.models import create_model, save_checkpoint
    from gslora.pretrain import PretrainConfig, pretrain

    if not path.exists():
        torch.manual_seed(seed)
        model = create_model("vit_face_tiny", len(data.classes), img_size=image_size)
        stats = pretrain(model, data, PretrainConfig(seed=seed, **settings), progress=False)
        save_checkpoint(model, path, data.classes, extra={"pretrain": stats})
    return path, json.loads(path.with_suffix(".json").read_text())["pretrain"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="faces,orl")
    p.add_argument("--settings", default="continual,single")
    p.add_argument("--methods", default="all")
    p.add_argument("--epochs", type=int, default=10, help="epochs per task for every method (paper: 100)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/baselines")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a shared run setting for every method, e.g. --set replay_ratio=0.5")
    p.add_argument("--demo-gslora", action="store_true",
                   help="run GS-LoRA with the demo's settings (configs/demo.yaml: lr, LoRA scaling, BND)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from gslora import load_checkpoint, load_data
    from gslora.compare import comparison_markdown_table, run_comparison
    from gslora.config import merge_overrides
    from gslora.presets import packaged_yaml

    shared = merge_overrides({"epochs": args.epochs, "seed": args.seed, "device": "cpu", "save_adapters": False},
                             args.overrides)
    method_args, method_run = {}, {}
    if args.demo_gslora and (args.methods == "all" or "gslora" in args.methods.split(",")):
        demo = packaged_yaml("demo.yaml")["run"]
        method_args["gslora"] = demo["method_args"]
        method_run["gslora"] = {"lr": demo["lr"]}

    out = Path(args.out)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        spec, size, settings = DATASETS[name]
        if name == "orl" and not ORL.is_dir():
            print(f"skipping orl: {ORL} not found")
            continue
        data = load_data(spec, image_size=size, seed=args.seed)
        ckpt, stats = pretrained(out / name / "pretrained.safetensors", data, size, settings, args.seed)
        print(f"\n## {name}: {len(data.classes)} classes, pre-trained test accuracy {stats['test_acc']:.1f}%")
        for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
            model, meta = load_checkpoint(ckpt)
            t0 = time.perf_counter()
            comp = run_comparison(model, meta["classes"], data, setting, args.methods,
                                 base_config=shared, method_args=method_args, method_run=method_run,
                                 out_dir=out / name / setting, overwrite=True, source_checkpoint=ckpt,
                                 on_method_done=lambda e: print(f"  {e['method']:<8} {e['status']} "
                                                                f"{e['wall_seconds']:.1f} s", flush=True))
            print(f"\n### {name}, {setting} ({args.epochs} epochs per task, {time.perf_counter() - t0:.0f} s, "
                  f"{platform.processor() or platform.machine()}, {args.threads} threads)\n")
            print(comparison_markdown_table(comp), flush=True)


if __name__ == "__main__":
    main()
