"""Audit GS-LoRA against head forgetting: recovery test (paper Fig. 6), linear probe, membership inference, retrain gap.

For each dataset (the bundled faces, and ../shared/data/orl-faces when present) it pre-trains vit_face_tiny (cached in
--out), forgets one task with GS-LoRA and with the `head` method (head fine-tuned, backbone frozen; skipped when that
method is not registered), trains the retrain-full reference (a fresh model on every training image of the remaining
classes, same recipe; gslora.audit.retrain_full_reference), builds head masking (forgotten CosFace rows zeroed)
locally, audits them all and prints the tables. The recovery / relearn images are ones the runs never used.

    .venv/bin/python benchmarks/audit.py                      # faces + ORL (if present)
    .venv/bin/python benchmarks/audit.py --datasets faces --epochs 10

The shared data is read in place, never copied into the repository.
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
ORL = HERE.parent.parent / "shared" / "data" / "orl-faces"

# name → (data spec, image size, tasks, pretrain settings, split ratio)
DATASETS = {
    "faces": ("faces", 24, "1x20", dict(epochs=30, batch_size=64, lr=1e-3, warmup_epochs=3), 0.7),
    "orl": (str(ORL), 32, "1x10", dict(epochs=150, batch_size=32, lr=1e-3, warmup_epochs=10), 0.7),
}


def pretrained(path: Path, data, image_size: int, settings: dict, seed: int, log: list) -> Path:
    from gslora.models import create_model, save_checkpoint
    from gslora.pretrain import PretrainConfig, pretrain

    if path.with_suffix(".safetensors").exists():
        stats = json.loads(path.with_suffix(".json").read_text())["pretrain"]
    else:
        torch.manual_seed(seed)
        model = create_model("vit_face_tiny", len(data.classes), img_size=image_size)
        stats = pretrain(model, data, PretrainConfig(seed=seed, **settings), progress=True)
        save_checkpoint(model, path, data.classes, extra={"pretrain": stats})
    log.append(f"{path.name}: train {stats['train_acc']:.1f}%, val {stats.get('val_acc') or 0:.1f}%, "
               f"test {stats['test_acc']:.1f}% (all classes), {stats['train_seconds']:.0f} s")
    return path.with_suffix(".safetensors")


def retrained_full(path: Path, template_ckpt: Path, data, remain, settings: dict, seed: int, log: list) -> Path:
    """The retrain-full reference (cached): every training image of ``remain``, the original's pre-training recipe."""
    from gslora.audit import retrain_full_reference
    from gslora.models import load_checkpoint, save_checkpoint

    if path.with_suffix(".safetensors").exists():
        info = json.loads(path.with_suffix(".json").read_text())["retrain_full"]
    else:
        template, _ = load_checkpoint(template_ckpt)
        model, info = retrain_full_reference(template, data, remain, seed, settings, device="cpu", progress=True)
        save_checkpoint(model, path, data.classes, extra={"retrain_full": info})
    log.append(f"{path.name} (retrain-full): {info['train_images']} training images of the remaining classes, train "
               f"{info['train_acc']:.1f}%, val {info.get('val_acc') or 0:.1f}% (remaining classes), "
               f"{info['retrain_seconds']:.0f} s")
    return path.with_suffix(".safetensors")


def bench(name: str, args) -> dict:
    from gslora import load_checkpoint, load_data, load_run_config, run_forgetting
    from gslora.audit import AuditConfig, audit_run, audit_tables, run_classes
    from gslora.methods import list_methods
    from gslora.presets import packaged_yaml

    spec, size, tasks, settings, split = DATASETS[name]
    out = Path(args.out) / name
    t0 = time.perf_counter()
    data = load_data(spec, image_size=size, seed=args.seed, split_ratio=split)
    log = [f"data {data.describe()}"]
    orig_ckpt = pretrained(out / "original", data, size, settings, args.seed, log)
    runs = {}
    demo = packaged_yaml("demo.yaml")["run"] if args.demo_gslora else None
    for method in ["gslora"] + (["head"] if "head" in list_methods() else []):
        extra = {}
        if demo is not None:  # the demo's data budget for every method, its GS-LoRA settings for GS-LoRA
            extra = {"replay_ratio": demo["replay_ratio"]}
            if method == "gslora":
                extra.update(lr=demo["lr"], method_args=demo["method_args"])
        cfg = load_run_config(None, [], data=spec, tasks=tasks, method=method, epochs=args.epochs, split_ratio=split,
                              seed=args.seed, device="cpu", **extra)
        run_dir = out / f"run-{method}"
        if not (run_dir / "results.json").exists():
            model, meta = load_checkpoint(orig_ckpt)
            run_forgetting(model, meta["classes"], data, cfg, out_dir=run_dir, overwrite=True, progress=True,
                           source_checkpoint=orig_ckpt)
        row = json.loads((run_dir / "results.json").read_text())["tasks"][-1]
        log.append(f"{method} run ({tasks}, {args.epochs} epochs): Acc_f {row['acc_f']:.1f}, Acc_r {row['acc_r']:.1f} "
                   f"(pre-trained {row['pretrained']['acc_f']:.1f} / {row['pretrained']['acc_r']:.1f}), "
                   f"{row['wall_seconds']:.0f} s")
        runs[method] = run_dir
    forget, remain = run_classes(json.loads((runs["gslora"] / "results.json").read_text()))
    retrained = None
    if not args.no_retrained:
        retrained = retrained_full(out / "retrained-full", orig_ckpt, data, remain, settings, args.seed, log)
    original, _ = load_checkpoint(orig_ckpt)
    masked = copy.deepcopy(original)
    with torch.no_grad():
        masked.head.weight[forget] = 0.0
    compare = {**({"head (retrain)": runs["head"]} if "head" in runs else {}), "head (mask)": masked}
    cfg = AuditConfig(epochs=args.audit_epochs, relearn_epochs=args.relearn_epochs, seed=args.seed, device="cpu")
    report = audit_run(runs["gslora"], retrained=retrained, compare=compare, config=cfg, data=data, progress=True)
    return {"name": name, "log": log, "tables": audit_tables(report), "seconds": time.perf_counter() - t0,
            "audit_seconds": report["wall_seconds"], "audit_dir": str(runs["gslora"] / "audit")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["faces", "orl"], choices=sorted(DATASETS))
    p.add_argument("--epochs", type=int, default=30, help="forgetting epochs (one task)")
    p.add_argument("--audit-epochs", type=int, default=20, help="recovery test epochs")
    p.add_argument("--relearn-epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--no-retrained", action="store_true", help="skip the retrain-full reference model and the gap")
    p.add_argument("--out", default="runs/bench-audit")
    p.add_argument("--demo-gslora", action="store_true",
                   help="GS-LoRA with the demo's settings (configs/demo.yaml: lr, LoRA scaling, BND) and the demo's "
                        "replay ratio for every method")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # on a shared 2-core CPU, 2 threads per process oversubscribe and run ~20x slower
    for name in args.datasets:
        if name == "orl" and not ORL.is_dir():
            print(f"skipping orl: {ORL} not found")
            continue
        r = bench(name, args)
        print(f"\n## {name}\n")
        print("\n".join(f"- {line}" for line in r["log"]))
        for key, table in r["tables"].items():
            print(f"\n{key}:\n\n{table}")
        print(f"\n{name}: {r['seconds']:.0f} s in all, audit {r['audit_seconds']:.0f} s; audit folder {r['audit_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
