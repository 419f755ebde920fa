"""Validated run configuration: YAML (or a dict) in, a typed dataclass or one clear error out."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import GsloraError

_PRECISIONS = ("fp32", "bf16")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# Run settings a method preset may choose (``configs/methods/<name>.yaml``, key ``run``). In a RunConfig they are
# None until set: None means "the method's preset, else the global default" (:func:`gslora.presets.resolve`).
PRESET_KEYS = ("epochs", "batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs")


def _preset(default, help: str):
    """A RunConfig field that a method preset may fill: None until the user (or :func:`resolve`) sets it."""
    return field(default=None, metadata={"default": default, "help": help})


@dataclass
class RunConfig:
    """Everything one forgetting run needs besides the checkpoint. Field comments are the documentation.

    The training settings in ``PRESET_KEYS`` default to None ("unset"): :func:`gslora.presets.resolve` fills them from
    the method's preset (``configs/methods/<method>.yaml``, ``run:``), else from the global default in the field's
    metadata. Every entry point (``run_forgetting``, the CLI, the comparison) resolves through that one function.
    """

    data: str = "faces"  # "faces" (bundled) or a folder path (train/ + test/ class folders, or one class folder root)
    split_ratio: float = 0.7  # train fraction per class when the folder has no train/ and test/ split
    val_ratio: float = 0.1  # fraction of each class's training images carved out for validation (model selection)
    tasks: Any = "4x20"  # "NxK", or a list of tasks, each a list of class names or ids
    method: str = "gslora"
    method_args: dict = field(default_factory=dict)  # overrides of configs/methods/<method>.yaml
    seed: int = 1337
    epochs: int | None = _preset(100, "per task; an epoch is one pass over the replay (remain) subset")
    batch_size: int | None = _preset(48, "remain batch and forget batch size")
    lr: float | None = _preset(1e-2, "AdamW learning rate (peak of the cosine schedule)")
    min_lr: float | None = _preset(1e-5, "learning rate at the end of the cosine schedule")
    weight_decay: float | None = _preset(0.05, "AdamW weight decay")
    warmup_epochs: int | None = _preset(0, "linear warm-up epochs before the cosine decay")
    replay_ratio: float = 0.1  # fraction of each class's training images available (replay and forget subsets)
    shots: int = 0  # if > 0: k images per class instead of replay_ratio (few-shot forgetting)
    old_forget_shots: int = 0  # images per earlier-forgotten class kept in the forget batch (0: off, the paper)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast; bf16 is meant for GPUs)
    num_workers: int = 0
    eval_batch_size: int = 256
    margin_at_test: bool = False  # the authors' protocol (CosFace margin at test time); for comparison only
    save_adapters: bool = True  # write each task's LoRA adapter in PEFT format
    checkpoint_every: int = 0  # epochs between in-task resume checkpoints (0: resume from the last finished task)
    preprocessing: dict = field(default_factory=dict)  # mean / std override for an imported model's input

    def validate(self) -> RunConfig:
        """Check ranges; unset (None) preset fields are skipped (they are checked once resolved)."""
        _range("split_ratio", self.split_ratio, 0.0, 1.0, open_=True)
        _range("val_ratio", self.val_ratio, 0.0, 1.0, low_closed=True)
        _range("replay_ratio", self.replay_ratio, 0.0, 1.0, high_closed=True)
        if self.lr is not None:
            _range("lr", self.lr, 0.0, None)
        if self.min_lr is not None:
            _range("min_lr", self.min_lr, 0.0, None, low_closed=True)
        if self.weight_decay is not None:
            _range("weight_decay", self.weight_decay, 0.0, None, low_closed=True)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise GsloraError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("warmup_epochs", "shots", "old_forget_shots", "num_workers", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise GsloraError(f"{name} must be 0 or more, got {getattr(self, name)}.")
        if self.warmup_epochs and self.epochs is not None and self.warmup_epochs >= self.epochs:
            raise GsloraError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs}).")
        if self.precision not in _PRECISIONS:
            raise GsloraError(f"precision must be one of {', '.join(_PRECISIONS)}, got {self.precision!r}.")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise GsloraError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")
        if not isinstance(self.tasks, (str, list)):
            raise GsloraError(f"tasks must be a string like '4x20' or a list of class lists, got {self.tasks!r}.")
        return self

    def is_resolved(self) -> bool:
        return all(getattr(self, k) is not None for k in PRESET_KEYS)


@dataclass
class PretrainConfig:
    """Pre-training from scratch (``gslora pretrain``). ``warmup_epochs`` None: derived from ``epochs``."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3  # the paper's face model used 3e-4 with 10 warm-up epochs on CASIA-Face100
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: int | None = None  # None: min(3, 10% of epochs), so a short run gets a short warm-up
    seed: int = 1337
    device: str = "auto"

    def resolved_warmup(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(3, self.epochs // 10)

    def validate(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise GsloraError(f"pretrain epochs and batch_size must be ≥ 1, got {self.epochs} and {self.batch_size}.")
        if self.lr <= 0:
            raise GsloraError(f"pretrain lr must be > 0, got {self.lr}.")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs < self.epochs:
            raise GsloraError(f"pretrain warmup_epochs must be in [0, epochs), got {self.warmup_epochs} with "
                              f"{self.epochs} epochs.")
        return self


def _range(name, value, low, high, open_=False, low_closed=False, high_closed=False):
    ok = (value >= low if low_closed else value > low) if low is not None else True
    if high is not None:
        ok = ok and (value <= high if high_closed else value < high)
    if not ok:
        lo = "[" if low_closed else "("
        hi = "]" if high_closed else ")"
        span = f"{lo}{low}, {high if high is not None else 'inf'}{hi}"
        raise GsloraError(f"{name} must be in {span}, got {value}.")


# ---------------------------------------------------------------------------------------------------------------------
# Generic typed construction of dataclasses from dicts


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats. Returns the (coerced) value."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:  # Optional[X]: the error names X
            return _coerce(value, args[0], where)
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except GsloraError as e:
                errors.append(e)
        names = " or ".join(_type_name(a) for a in typing.get_args(tp))
        raise GsloraError(f"{where} must be {names}, got {value!r}.")
    if tp is type(None):
        if value is None:
            return None
        raise GsloraError(f"{where} must be null, got {value!r}.")
    if origin is list:
        if not isinstance(value, list):
            raise GsloraError(f"{where} must be a list, got {value!r}.")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise GsloraError(f"{where} must be a mapping, got {value!r}.")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise GsloraError(f"{where} must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise GsloraError(f"{where} must be an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.match(value.strip()):  # YAML 1.1 reads 3e-3 (no dot) as a string
            return float(value)
        raise GsloraError(f"{where} must be a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise GsloraError(f"{where} must be a string, got {value!r}.")
    return value


def from_dict(cls, data: dict | None, where: str = "config", base=None):
    """Build dataclass ``cls`` from ``data``: unknown keys and wrongly typed values are errors naming the key.

    Fields missing from ``data`` come from ``base`` (an instance) or the dataclass defaults.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise GsloraError(
            f"unknown key {unknown[0]!r} in {where}; valid keys are: {', '.join(names)}."
        )
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _coerce(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif base is not None:
            values[f.name] = getattr(base, f.name)
    try:
        return cls(**values)
    except TypeError as e:  # a required field without a value
        raise GsloraError(f"{where} is incomplete: {e}.") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` with the value read as YAML (so numbers, booleans and lists get their types)."""
    if "=" not in text:
        raise GsloraError(f"override {text!r} must look like key=value (e.g. epochs=10 or method_args.beta=0.3).")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def merge_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = dict(data)
    for item in overrides or []:
        key, value = parse_override(item)
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise GsloraError(f"override {item!r}: {p!r} is not a mapping.")
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GsloraError(f"config file {path} does not exist; pass the path of a YAML file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise GsloraError(f"config file {path} is not valid YAML: {e}".rstrip(".") + ".") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GsloraError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}.")
    return data


def config_data(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None,
                **flags) -> dict:
    """The one way every command assembles its settings: ``base`` (e.g. a packaged preset), then the YAML file at
    ``path``, then ``key=value`` overrides, then keyword flags (CLI options; None means "not given")."""
    data = dict(base or {})
    if path:
        data.update(read_yaml(path))
    data = merge_overrides(data, overrides)
    data.update({k: v for k, v in flags.items() if v is not None})
    return data


def build_config(cls, path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None,
                 where: str | None = None, **flags):
    """:func:`config_data` turned into the dataclass ``cls`` (unknown keys and bad types are errors), validated."""
    data = config_data(path, overrides, base, **flags)
    return from_dict(cls, data, where=where or (str(path) if path else "config")).validate()


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
