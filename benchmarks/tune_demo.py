"""`gslora tune` on the bundled faces: a small demonstration of the equal tuning budget (docs/baselines.md, "One
tuning budget for all"), optionally followed by the comparison with the chosen values.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_demo.py --methods gslora,ewc --budget 6 --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_demo.py --methods gslora,ewc --benchmark   # then compare

Pre-trains vit_face_tiny on the bundled faces with the library's defaults (cached as OUT/face.safetensors; or pass
--checkpoint), runs `gslora tune --setting continual` (trials on the first task of 4x20, scored on validation only)
and prints the wall time of each step. (This script replaced an earlier hand-made grid over GS-LoRA's settings that
printed test numbers beside the validation ones.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="gslora,ewc")
    p.add_argument("--budget", type=int, default=6)
    p.add_argument("--sampler", default="random", choices=["random", "grid"])
    p.add_argument("--out", default="runs/tune-demo")
    p.add_argument("--checkpoint", help="a pre-trained faces checkpoint (default: pre-train one into --out)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="shared run setting for tuning and benchmark alike")
    p.add_argument("--benchmark", action="store_true", help="then run the continual comparison with --tuned")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from gslora.cli import main as gslora

    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out / "face.safetensors"
    common = ["--no-progress", "--device", "cpu"]
    t0 = time.perf_counter()
    if not ckpt.exists():
        rc = gslora(["pretrain", "--data", "faces", "--model", "vit_face_tiny", "--out", str(ckpt), *common])
        if rc not in (0, 3):
            return rc
        print(f"pre-training: {time.perf_counter() - t0:.0f} s\n", flush=True)
    sets = [x for kv in args.overrides for x in ("--set", kv)]
    t1 = time.perf_counter()
    rc = gslora(["tune", "--checkpoint", str(ckpt), "--data", "faces", "--setting", "continual", "--methods",
                 args.methods, "--budget", str(args.budget), "--sampler", args.sampler, "--out", str(out / "tune"),
                 "--overwrite", *sets, *common])
    print(f"\ntuning: {time.perf_counter() - t1:.0f} s", flush=True)
    if rc != 0 or not args.benchmark:
        return rc
    t2 = time.perf_counter()
    rc = gslora(["benchmark", "--checkpoint", str(ckpt), "--data", "faces", "--setting", "continual", "--methods",
                 args.methods, "--tuned", str(out / "tune" / "tuned.yaml"), "--out", str(out / "bench"),
                 "--overwrite", *sets, *common])
    print(f"\ncomparison: {time.perf_counter() - t2:.0f} s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
