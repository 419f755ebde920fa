"""The paper's continual protocol on a real image folder (default: ../shared/data/orl-faces, 40 identities).

Pre-trains a model on the folder's seeded per-class train split (cached next to --out), then runs GS-LoRA's
continual forgetting (default 4 tasks x 5 identities) and prints the paper's Table 3 layout plus per-task details.

    .venv/bin/python benchmarks/folder_continual.py                       # ORL, 4 x 5
    .venv/bin/python benchmarks/folder_continual.py --data PATH --tasks 4x20 --model vit_face_tiny

The data is never copied into the repository; a missing folder is reported and the script exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "orl-faces"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="vit_face_tiny")
    p.add_argument("--image-size", type=int, default=32, help="input size (overrides the model's)")
    p.add_argument("--tasks", default="4x5")
    p.add_argument("--pretrain-epochs", type=int, default=150)
    p.add_argument("--epochs", type=int, default=30, help="forgetting epochs per task")
    p.add_argument("--split-ratio", type=float, default=0.7)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/bench-folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from gslora import GsloraError, load_checkpoint, load_data, load_run_config, run_forgetting
    from gslora.models import create_model, save_checkpoint
    from gslora.pretrain import PretrainConfig, pretrain
    from gslora.report import paper_table, task_table

    if not Path(args.data).is_dir():
        print(f"data folder {args.data} not found; pass --data", file=sys.stderr)
        return 2
    out = Path(args.out)
    cfg = load_run_config(None, args.overrides, data=args.data, tasks=args.tasks, epochs=args.epochs,
                          split_ratio=args.split_ratio)
    name = f"pretrained-{Path(args.data).name}-{args.model}-{args.image_size}px-{args.pretrain_epochs}ep"
    ckpt = out / f"{name}.safetensors"
    model = create_model(args.model, 2, img_size=args.image_size)
    data = load_data(args.data, image_size=model.image_size, seed=cfg.seed, split_ratio=cfg.split_ratio,
                     val_ratio=cfg.val_ratio)
    print(f"data: {data.describe()}")
    if not ckpt.exists():
        model = create_model(args.model, data.num_classes, img_size=args.image_size)
        stats = pretrain(model, data, PretrainConfig(epochs=args.pretrain_epochs, batch_size=32, lr=1e-3,
                                                     warmup_epochs=10), progress=True)
        save_checkpoint(model, ckpt, data.classes, extra={"pretrain": stats})
        print(f"pre-trained {args.model}: train {stats['train_acc']:.1f}% val {stats['val_acc']:.1f}% "
              f"test {stats['test_acc']:.1f}% in {stats['train_seconds']:.0f} s")
    model, meta = load_checkpoint(ckpt)
    start = time.perf_counter()
    try:
        result = run_forgetting(model, meta["classes"], data, cfg, out_dir=out / "run", overwrite=True,
                                progress=True, source_checkpoint=ckpt)
    except GsloraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(paper_table(result.results))
    print()
    print(task_table(result.results))
    print(f"\nforgetting took {time.perf_counter() - start:.0f} s; run folder {out / 'run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
