"""Forgetting methods, selected by name. Each one implements :class:`gslora.methods.base.Method` and registers itself
with the ``@register`` decorator in its own file; every module of this package is imported here, so a new method is
one file here plus one preset ``configs/methods/<name>.yaml``."""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import GsloraError
from .base import METHODS, REGISTRY, Method, StepState, TaskContext, method_defaults, method_label, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def list_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str, **args) -> Method:
    if name not in METHODS:
        raise GsloraError(f"unknown method {name!r}; choose one of {', '.join(list_methods())}.")
    return METHODS[name](**args)


def problem_methods(problem: str) -> list[str]:
    """The methods registered for ``problem`` (classification: :func:`list_methods`)."""
    return sorted(REGISTRY.get(problem, {}))


def get_problem_method(problem: str, name: str, **args) -> Method:
    """Method ``name`` of ``problem``'s registry (the problem's module registers its methods when imported)."""
    methods = REGISTRY.get(problem, {})
    if name not in methods:
        raise GsloraError(f"unknown {problem} method {name!r}; choose one of {', '.join(sorted(methods))}.")
    return methods[name](**args)


__all__ = ["METHODS", "REGISTRY", "Method", "StepState", "TaskContext", "get_method", "get_problem_method",
           "list_methods", "method_defaults", "method_label", "problem_methods", "register"]
