"""The comparison settings (``single``, ``continual``, ``few-shot``, ``missing``): each one's task plans and data
constraint, the method list, and one method's run config. Shared by :mod:`gslora.compare` and :mod:`gslora.tune`."""

from __future__ import annotations

from .config import RunConfig, from_dict
from .errors import GsloraError
from .methods import list_methods
from .presets import resolve
from .problem import Problem

SETTINGS = ("single", "continual", "few-shot", "missing")
# the shared run settings a constrained setting imposes (the user's --set values of the same keys win)
SETTING_CONSTRAINTS = {"few-shot": {"shots": 4, "batch_size": 4}, "missing": {"missing_ratio": 0.5}}
SINGLE_FRACTIONS = (0.05, 0.10, 0.50, 0.90)
CONTINUAL_TASKS, CONTINUAL_FRACTION = 4, 0.20


def setting_plans(setting: str, num_classes: int) -> list[tuple[str, str]]:
    """(label, tasks spec) of each run of a setting. Single step: ``C-Y`` for Y = round(p·C), at least 1 and leaving
    at least one class; continual (and its constrained variants few-shot, missing): one run ``4xK`` with
    K = round(0.2·C)."""
    if setting == "single":
        out = []
        for p in SINGLE_FRACTIONS:
            y = min(max(1, round(p * num_classes)), num_classes - 1)
            if all(spec != f"1x{y}" for _, spec in out):
                out.append((f"{num_classes}-{y}", f"1x{y}"))
        return out
    if setting in ("continual", *SETTING_CONSTRAINTS):
        k = max(1, round(CONTINUAL_FRACTION * num_classes))
        if CONTINUAL_TASKS * k >= num_classes:
            raise GsloraError(f"the {setting} setting forgets {CONTINUAL_TASKS} x {k} classes, which needs more than "
                              f"{CONTINUAL_TASKS * k} classes; the model has {num_classes}.")
        return [(setting, f"{CONTINUAL_TASKS}x{k}")]
    raise GsloraError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}.")


def _methods_of(problem: str) -> list[str]:
    if problem == "classification":
        return list_methods()
    from .methods import problem_methods

    make_problem(problem)  # its module registers its methods
    return problem_methods(problem)


def parse_methods(spec: str | list[str], problem: str = "classification") -> list[str]:
    """``"all"`` or a comma-separated list of method names (checked against the registry of ``problem``)."""
    known = _methods_of(problem)
    names = spec if isinstance(spec, list) else [m.strip() for m in spec.split(",") if m.strip()]
    if names == ["all"]:
        return known
    if not names:
        raise GsloraError("--methods is empty; pass 'all' or names like gslora,ewc,lwf.")
    unknown = [m for m in names if m not in known]
    if unknown:
        raise GsloraError(f"unknown method {unknown[0]!r}; choose from {', '.join(known)} or 'all'.")
    return list(dict.fromkeys(names))


def method_config(name: str, base: dict, tasks: str, own: dict | None = None,
                  problem: str = "classification") -> RunConfig:
    """The run config of one method: the user's shared ``base``, then ``own`` (run settings for this method only),
    then the task plan, resolved (:func:`gslora.presets.resolve`: what is still unset comes from the method preset;
    detection: over the detection defaults, :func:`gslora.detection.config.detection_config`)."""
    data = {**base, **(own or {}), "method": name, "tasks": tasks}
    if problem == "detection":
        from .detection.config import detection_config

        return detection_config(data)
    return resolve(from_dict(RunConfig, data, where=f"comparison config ({name})"))


PROBLEMS = ("classification", "detection")


def make_problem(name: str) -> Problem:
    """A fresh problem of that name (each run gets its own: a problem may keep per-run state)."""
    if name == "classification":
        from .forget import Classification

        return Classification()
    if name == "detection":
        from .detection.problem import Detection

        return Detection()
    raise GsloraError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}.")
