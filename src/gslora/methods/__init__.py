"""Forgetting methods, selected by name. Each one implements :class:`gslora.methods.base.Method`."""

from __future__ import annotations

from ..errors import GsloraError
from .base import Method, StepState, TaskContext, method_defaults
from .distillation import DER, FDR, DERpp, LwF
from .gslora import GSLoRA
from .lirf import UniformKD
from .regularization import EWC, L2, MAS
from .retrain import HeadForgetting, Retrain
from .scrub import SCRUB, SCRUBS
from .ssd import SSD

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (GSLoRA, L2, EWC, MAS, LwF, DER, DERpp, FDR, SCRUB, SCRUBS, UniformKD, Retrain, HeadForgetting, SSD)
}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str, **args) -> Method:
    if name not in METHODS:
        raise GsloraError(f"unknown method {name!r}; choose one of {', '.join(list_methods())}.")
    return METHODS[name](**args)


__all__ = ["METHODS", "Method", "StepState", "TaskContext", "get_method", "list_methods", "method_defaults",
           "register_method"]
