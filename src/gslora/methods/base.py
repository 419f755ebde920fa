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
from torch.utils.data import Dataset, Subset

from ..config import RunConfig, from_dict
from ..data.plan import Task
from ..presets import method_preset

METHODS: dict[str, type[Method]] = {}  # the classification methods
REGISTRY: dict[str, dict[str, type[Method]]] = {"classification": METHODS}  # per problem (gslora.problem)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method selectable by its ``name`` among the methods of its ``problem`` (one file + one
    YAML preset adds a classification method)."""
    methods = REGISTRY.setdefault(cls.problem, {})
    if cls.name in methods and methods[cls.name] is not cls:
        raise ValueError(f"two methods are named {cls.name!r}: {methods[cls.name].__qualname__} and "
                         f"{cls.__qualname__}")
    methods[cls.name] = cls
    return cls


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
    out_dir: Path | None = None  # the run folder (None: the run writes nothing)
    progress: bool = False
    adapter_dir: Path | None = None  # where this task's adapter goes (None: write no adapter)
    train_data: Dataset | None = None  # the whole training split, every class (SSD's D, retrain-full's data);
    #                                    None: see full_training_data
    val_data: Dataset | None = None  # the whole validation split (retrain-full's early stopping); None: none
    anchor_scale: float = 1.0  # this trial's multiplier of the method's retention anchor (gslora.policy.next_trial)
    constraint: str | None = None  # the data the setting withholds (few-shot, missing classes: gslora.practical);
    #                                 None: full data. Under a constraint only the replay / forget subsets exist

    def full_training_data(self) -> tuple[Dataset | None, str]:
        """The whole training split and where it came from: ``train_data`` when the runner passes it ("train_data"),
        else the one dataset both ``remain_data`` and ``forget_data`` are ``Subset``s of (the runner draws both from
        the training split: "parent of the replay / forget subsets"), else (None, "unavailable"). Under a data
        constraint (``constraint``) it is unavailable: the setting gives the replay and forget subsets only."""
        if self.constraint:
            return None, f"unavailable ({self.constraint})"
        if self.train_data is not None:
            return self.train_data, "train_data"
        parents = {id(getattr(d, "dataset", None)) for d in (self.remain_data, self.forget_data)}
        if isinstance(self.remain_data, Subset) and isinstance(self.forget_data, Subset) and len(parents) == 1:
            return self.remain_data.dataset, "parent of the replay / forget subsets"
        return None, "unavailable"


@dataclass
class StepState:
    epoch: int
    step: int  # global step within the task
    total_steps: int
    epochs: int
    autocast: Callable[[], AbstractContextManager] = nullcontext  # wrap forward passes (mixed precision) in this
    lr: float = 0.0  # the learning rate of this step (proximal updates scale their threshold by it)


class Method:
    """Base class. Subclasses set ``name`` and ``Args`` (a dataclass) and override what they need."""

    name: str = "base"
    problem: str = "classification"  # the registry the method is in (gslora.problem): classification | detection
    label: str | None = None  # how tables name the method (None: its name), e.g. "retrain (paper)"
    Args: type | None = None
    trains: bool = True  # False for methods that edit weights without a training loop
    drop_against_pretrained: bool = False  # Drop (and H) vs the original model, not the task's start (Retrain)
    data_needs: str | None = None  # data beyond the replay / forget subsets the method cannot run without (e.g.
    # retrain-full: every training image of the remaining classes); a run under a data constraint refuses it
    uses_targets: bool = True  # stop at the validation forgetting target and retry on a missed retention target;
    # False for methods that forget by construction (Retrain: a fresh model meets acc_f at step 0)
    moves_features: bool = True  # False for methods that leave the embeddings as they are (head forgetting): the
    # probe targets (probe_f, probe_keep: a read-out of the embeddings) are reported but cannot be reached by training
    anchored: bool = False  # True for a method whose retention anchor a trial can strengthen (TaskContext.anchor_scale;
    # GS-LoRA with anchor_weight > 0): after a retention miss the next trial multiplies it instead of halving the lr
    grad_clip: float = 0.0  # > 0: the gradients' total norm is clipped to this before each step (detection: DETR's
    # max gradient norm, the run config's grad_clip)

    def __init__(self, **overrides):
        defaults = method_preset(self.name).get("args", {}) if self.Args is not None else {}
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
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], self.grad_clip)
        optimizer.step()
        return {"loss": float(loss.detach()), **logs}

    def finish(self, model: nn.Module, ctx: TaskContext) -> tuple[nn.Module, dict]:
        return model, {}

    def describe(self) -> dict:
        from dataclasses import asdict

        return {"method": self.name, "args": asdict(self.args) if self.args is not None else {}}

    # --- resumable state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs of this method: by default every attribute that is plain data (tensors, numbers,
        strings, None, lists / tuples / dicts of them; torch generators by their state). Anything else (models,
        loaders, iterators) must be rebuilt by ``prepare``. Override both methods for anything richer."""
        out = {}
        for key, value in vars(self).items():
            if key == "args":
                continue
            if isinstance(value, torch.Generator):
                out[key] = {"__generator_state__": value.get_state()}
            elif _plain(value):
                out[key] = value
        return out

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict`; tensors move to ``device`` (where the run trains) when given."""
        for key, value in state.items():
            if isinstance(value, dict) and "__generator_state__" in value:
                gen = getattr(self, key, None)
                if not isinstance(gen, torch.Generator):
                    gen = torch.Generator()
                    setattr(self, key, gen)
                gen.set_state(value["__generator_state__"])
            else:
                setattr(self, key, _to_device(value, device) if device is not None else value)


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _plain(value) -> bool:
    """Plain data: parameters are references to the model, not data, so they are left out."""
    if isinstance(value, nn.Parameter):
        return False
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


method_defaults = method_preset  # the earlier name


def method_label(name: str) -> str:
    """The name tables show for method ``name``: its class's ``label``, else the name itself."""
    cls = METHODS.get(name)
    return (cls.label if cls is not None and cls.label else None) or name


def per_task(value, position: int):
    """A scalar, or a per-task list whose last value repeats for later tasks."""
    if isinstance(value, list):
        return value[min(position, len(value) - 1)]
    return value
