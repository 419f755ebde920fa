"""The interface every forgetting method implements. The engine calls only these methods.

A method turns the model at the start of a task into the model at its end:

    model = method.prepare(model, ctx)             # e.g. attach LoRA, freeze, compute importances
    for each step: logs = method.train_step(model, remain_batch, forget_batch, optimizer, state)
    model, info = method.finish(model, ctx)        # e.g. merge LoRA, save the adapter; info goes to the results
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import RunConfig, from_dict, packaged_yaml
from ..data.plan import Task
from ..errors import GsloraError


@dataclass
class TaskContext:
    """What a method may know about the task at hand (never where the data came from)."""

    task: Task
    position: int  # 0-based position of the task in the sequence
    num_tasks: int
    num_classes: int
    config: RunConfig
    device: torch.device
    remain_data: Dataset  # the replay subset of R_t
    forget_data: Dataset  # the subset of F_t (plus old forgotten classes if old_forget_shots > 0)
    original_model: nn.Module | None = None  # frozen copy of the model before the first task (teachers, anchors)
    out_dir: Path | None = None  # where the method may write per-task artefacts (adapters); None: write nothing
    progress: bool = False


@dataclass
class StepState:
    epoch: int
    step: int  # global step within the task
    total_steps: int
    epochs: int
    autocast: Callable[[], AbstractContextManager] = nullcontext  # wrap forward passes (mixed precision) in this


class Method:
    """Base class. Subclasses set ``name`` and ``Args`` (a dataclass) and override what they need."""

    name: str = "base"
    Args: type | None = None
    trains: bool = True  # False for methods that edit weights without a training loop
    drop_against_pretrained: bool = False  # Drop (and H) vs the original model, not the task's start (Retrain)

    def __init__(self, **overrides):
        defaults = method_defaults(self.name).get("args", {}) if self.Args is not None else {}
        where = f"method_args ({self.name})"
        self.args = from_dict(self.Args, {**defaults, **overrides}, where=where) if self.Args else None
        validate = getattr(self.args, "validate", None)
        if validate:
            validate()

    # --- the interface --------------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        return model

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def loss(self, model: nn.Module, remain, forget, state: StepState) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def train_step(self, model: nn.Module, remain, forget, optimizer, state: StepState) -> dict:
        with state.autocast():
            loss, logs = self.loss(model, remain, forget, state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), **logs}

    def finish(self, model: nn.Module, ctx: TaskContext) -> tuple[nn.Module, dict]:
        return model, {}

    def describe(self) -> dict:
        from dataclasses import asdict

        return {"method": self.name, "args": asdict(self.args) if self.args is not None else {}}


def method_defaults(name: str) -> dict:
    """The versioned defaults file ``configs/methods/<name>.yaml`` (keys ``args`` and ``run``)."""
    try:
        return packaged_yaml("methods", f"{name}.yaml")
    except GsloraError:  # a method without a defaults file simply has none
        return {}


def per_task(value, position: int):
    """A scalar, or a per-task list whose last value repeats for later tasks."""
    if isinstance(value, list):
        return value[min(position, len(value) - 1)]
    return value
