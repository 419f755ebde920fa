"""Would `torch.compile` make a forgetting step cheaper on the CPU? (a wall-time question of the depth defaults)

    .venv/bin/python benchmarks/compile_step.py [--checkpoint runs/depth/orl.safetensors] [--steps 20]

One process, one torch thread: the checkpoint's model with the product's LoRA (`gslora.lora.attach_lora`), a
GS-LoRA-shaped step on a random batch of 2 x 48 images (the embedding forward of both halves, the head's CE, the
embedding anchor's forward of the task-start model on the replay half, backward, AdamW), timed eagerly and with
`torch.compile(model.embed)`: the first step (with compilation: cold in the first repeat, inductor's cache being a
fresh folder for this process, warm after it) and the seconds per step after 3 warm-up steps, alternating the two
--repeats times (the median is the figure). Writes docs/results/compile_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(checkpoint: str, compiled: bool, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from gslora import load_checkpoint
    from gslora.lora import attach_lora
    from gslora.methods.gslora import embedding_anchor

    torch.manual_seed(0)
    model, meta = load_checkpoint(checkpoint)
    peft, groups = attach_lora(model)
    optimizer = torch.optim.AdamW([p for ps in groups.params for p in ps], lr=1e-3)
    n = len(meta["classes"])
    x = torch.randn(96, 3, model.image_size, model.image_size)
    y = torch.randint(0, n, (96,))
    embed = torch.compile(peft.embed) if compiled else peft.embed

    def step():
        emb = embed(x)
        loss = F.cross_entropy(peft.head(emb, y), y) + embedding_anchor(peft, x[:48], emb[:48])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"first_step_s": round(first, 2), "s_per_step": round((time.perf_counter() - t0) / steps, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="runs/depth/orl.safetensors")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(HERE.parent / "docs" / "results" / "compile_step.json"))
    args = ap.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_step-")  # a cold first compilation
    import torch

    torch.set_num_threads(1)
    out = {"machine": f"{platform.machine()} {os.cpu_count()}-core CPU, 1 torch thread",
           "torch": torch.__version__, "checkpoint": Path(args.checkpoint).name, "steps": args.steps}
    for name in ("eager", "compiled"):
        out[name] = []
    for _ in range(args.repeats):
        for name in ("eager", "compiled"):
            out[name].append(measure(args.checkpoint, name == "compiled", args.steps))
            print(f"{name}: first step {out[name][-1]['first_step_s']} s, {out[name][-1]['s_per_step']} s per step",
                  flush=True)
    med = {name: statistics.median(m["s_per_step"] for m in out[name]) for name in ("eager", "compiled")}
    out["median_s_per_step"] = med
    out["speed-up"] = round(med["eager"] / med["compiled"], 3)
    print(f"median s per step: eager {med['eager']}, compiled {med['compiled']}; speed-up {out['speed-up']}x")
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
