"""The few torch.distributed helpers the engine needs; all are no-ops in a single process."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as td


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_distributed() else 0


def world_size() -> int:
    return td.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only the main process writes files."""
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        t = t.clone()
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def average_gradients(params) -> None:
    """Average the gradients of ``params`` over all processes (a no-op in a single process).

    The engine calls this right before every optimizer step, so any method's ``train_step`` (one backward or several,
    through ``model.forward`` or ``model.embed``/``model.head``) trains in sync without wrapping the model. The
    gradients are flattened into one buffer per dtype and reduced in one collective each (not one per parameter).
    """
    if not is_distributed():
        return
    n = world_size()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        td.all_reduce(flat, op=td.ReduceOp.SUM)
        flat.div_(n)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def init_from_env(device: torch.device) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns whether distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    td.init_process_group(backend=backend)
    return True


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the local CUDA device when there is one (the LOCAL_RANK one under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            from .errors import GsloraError

            raise GsloraError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu.")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu"):
    """Seed torch's random state for a block and give the caller's state back after it (the CPU's and, on a GPU,
    that GPU's): library calls never leave the global random state changed."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
