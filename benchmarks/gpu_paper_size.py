"""The paper's Face Transformer on a GPU: training-step throughput with and without adapters, and full 4-task runs.

Two parts, each writing one JSON (the README quotes them; raw numbers in ``docs/results/gpu_*.json``):

``throughput``: ``vit_face`` (112 px, patch 8, width 512, depth 6, 100-way CosFace head; 19.2 M parameters), one
training step of a forgetting method exactly as the engine runs it (``Method.train_step`` under the engine's autocast),
a remain batch and a forget batch of 48 images each (the paper's batch 48):

- *with adapters*: GS-LoRA (LoRA r 8 on both FFN linears of every block, base frozen, bounded forgetting loss,
  group-sparse proximal step);
- *without adapters*: L2 fine-tuning (every backbone weight trainable, the paper's baselines' form), and a plain
  cross-entropy step of the whole model on one 48-image batch (pre-training).

Each is timed after warm-up steps with the device synchronised, in bf16 autocast and in fp32 (TF32 off).

``run``: ``gslora pretrain`` of ``vit_face`` on a dataset, then ``gslora forget`` with the library defaults, 4 tasks
(bf16 on the GPU), each through the CLI as a user would run them; records wall times and the per-task results.

    python benchmarks/gpu_paper_size.py throughput --out throughput.json
    python benchmarks/gpu_paper_size.py run --data faces --tasks 4x20 --work runs/gpu --out run.json

Nothing here needs a GPU to run (``--device cpu`` works, slowly); the figures are meant for one.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from gslora import RunConfig
from gslora.data.plan import Task
from gslora.engine import autocast_dtype
from gslora.methods import StepState, TaskContext, get_method, method_defaults
from gslora.models import create_model
from gslora.presets import resolve


def _machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step, device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


def _method_step(name: str, model, device, precision: str, batch: int, num_classes: int):
    """One engine step of method ``name`` on random images (the cost does not depend on the pixels)."""
    cfg = resolve(RunConfig(method=name, tasks="4x20", device=str(device), precision=precision, batch_size=batch,
                            save_adapters=False))
    forget = tuple(range(80, 100))
    task = Task(1, forget, tuple(range(80)), ())
    size = model.image_size
    gen = torch.Generator().manual_seed(0)
    x_r = torch.rand(batch, 3, size, size, generator=gen)
    x_f = torch.rand(batch, 3, size, size, generator=gen)
    y_r = torch.randint(0, 80, (batch,), generator=gen)
    y_f = torch.randint(80, 100, (batch,), generator=gen)
    ctx = TaskContext(task=task, position=0, num_tasks=4, num_classes=num_classes, config=cfg, device=device,
                      remain_data=TensorDataset(x_r, y_r), forget_data=TensorDataset(x_f, y_f),
                      original_model=None)
    args = {**method_defaults(name).get("args", {}), **cfg.method_args}
    method = get_method(name, **args)
    model = method.prepare(model, ctx)
    params = method.trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = autocast_dtype(precision)
    batches = ((x_r.to(device), y_r.to(device)), (x_f.to(device), y_f.to(device)))
    state = StepState(epoch=0, step=0, total_steps=1000, epochs=1, lr=cfg.lr,
                      autocast=lambda: torch.autocast(device.type, dtype=amp, enabled=amp is not None))
    model.train()

    def step():
        method.train_step(model, *batches, optimizer, state)

    trainable = sum(p.numel() for p in params)
    return step, trainable, 2 * batch


def _pretrain_step(model, device, precision: str, batch: int, num_classes: int):
    size = model.image_size
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    amp = autocast_dtype(precision)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x, y).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in model.parameters()), batch


def throughput(args) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    cases = [("gslora", "with adapters (GS-LoRA: LoRA r 8 on every FFN, base frozen)"),
             ("l2", "without adapters (L2 fine-tuning: every backbone weight trainable)"),
             ("pretrain", "without adapters (plain CE step of the whole model, one batch)")]
    for precision in args.precisions:
        for name, what in cases:
            torch.manual_seed(0)
            model = create_model(args.model, args.classes).to(device)
            params_total = sum(p.numel() for p in model.parameters())
            if name == "pretrain":
                step, trainable, images = _pretrain_step(model, device, precision, args.batch, args.classes)
            else:
                step, trainable, images = _method_step(name, model, device, precision, args.batch, args.classes)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = _time_steps(step, device, args.warmup, args.steps)
            row = {"case": name, "what": what, "precision": precision, "steps": args.steps,
                   "images_per_step": images, "seconds": seconds, "steps_per_s": args.steps / seconds,
                   "images_per_s": args.steps * images / seconds, "ms_per_step": 1000 * seconds / args.steps,
                   "trainable_params": trainable, "params": params_total}
            if device.type == "cuda":
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            rows.append(row)
            print(f"{precision:5s} {name:8s} {row['ms_per_step']:8.2f} ms/step  {row['images_per_s']:9.0f} img/s  "
                  f"trainable {trainable:,}", flush=True)
            del model, step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"command": " ".join(sys.argv), "model": args.model, "classes": args.classes, "batch": args.batch,
            "warmup_steps": args.warmup, "machine": _machine(device), "rows": rows}


def _cli(log: Path, *argv) -> tuple[int, float, str]:
    """Run ``gslora`` as a user would, its output streamed to ``log`` (what it printed survives a timeout)."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run([sys.executable, "-m", "gslora.cli", *argv], stdout=fh, stderr=subprocess.STDOUT).returncode
    out = log.read_text(errors="replace")
    print(out[-3000:], flush=True)
    return rc, time.perf_counter() - start, out


def full_run(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "pretrained.safetensors"
    device = args.device
    rc, pre_s, pre_out = _cli(work / "pretrain.log", "pretrain", "--data", args.data, "--model", args.model,
                              "--out", str(ckpt), "--device", device, "--set", f"precision={args.precision}",
                              "--overwrite", "--no-progress", *shlex.split(args.pretrain_args))
    result = {"command": " ".join(sys.argv), "data": args.data, "model": args.model, "tasks": args.tasks,
              "precision": args.precision, "pretrain_exit": rc, "pretrain_seconds": pre_s,
              "pretrain_tail": pre_out[-1500:]}
    sidecar = ckpt.with_suffix(".json")
    if sidecar.exists():
        result["pretrain"] = {k: v for k, v in json.loads(sidecar.read_text()).items() if k != "checks"}
    if rc not in (0, 3):
        return result
    run_dir = work / "forget"
    rc, f_s, f_out = _cli(work / "forget.log", "forget", "--checkpoint", str(ckpt), "--data", args.data,
                          "--tasks", args.tasks, "--out", str(run_dir), "--device", device,
                          "--set", f"precision={args.precision}", "--overwrite", *shlex.split(args.forget_args))
    result.update(forget_exit=rc, forget_seconds=f_s, forget_tail=f_out[-3000:])
    results = run_dir / "results.json"
    if results.exists():
        result["results"] = json.loads(results.read_text())
    result["machine"] = _machine(torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--model", default="vit_face")
    t.add_argument("--classes", type=int, default=100)
    t.add_argument("--batch", type=int, default=48)
    t.add_argument("--warmup", type=int, default=10)
    t.add_argument("--steps", type=int, default=50)
    t.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    t.add_argument("--device", default="auto")
    t.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", default="faces")
    r.add_argument("--model", default="vit_face")
    r.add_argument("--tasks", default="4x20")
    r.add_argument("--precision", default="bf16")
    r.add_argument("--device", default="cuda")
    r.add_argument("--work", required=True)
    r.add_argument("--pretrain-args", default="", help="extra `gslora pretrain` arguments, one string")
    r.add_argument("--forget-args", default="", help="extra `gslora forget` arguments, one string")
    r.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    out = throughput(args) if args.part == "throughput" else full_run(args)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
