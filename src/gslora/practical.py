"""The practical settings of GS-LoRA++ (the GS-LoRA++ paper): few-shot forgetting and missing classes.

- **Few-shot** (``RunConfig.shots = k``): k images per class for both the replay and the forget subsets, batch 4 (the
  ``few_shot`` protocol preset); the engine's epoch follows the longer of the two loaders.
- **Missing classes** (``RunConfig.missing_ratio`` or ``missing_classes``): some remaining classes have no data at
  all: no replay images and no validation images; their test accuracy is reported apart, as ``acc_m``, and ``acc_r``
  covers the remaining classes that keep their replay data.

A run under either constraint gives a method only the replay and forget subsets; a method that needs more
(``Method.data_needs``, e.g. retrain-full's every training image) is refused with :class:`DataConstraintError`
before anything runs, and the comparison marks it as not run instead of letting it use more data.
"""

from __future__ import annotations

import numpy as np

from .config import RunConfig
from .data.plan import TaskPlan, class_id
from .errors import GsloraError


class DataConstraintError(GsloraError):
    """The method needs data that the run's setting (few-shot, missing classes) does not give."""


def missing_classes(config: RunConfig, plan: TaskPlan, class_names: list[str]) -> tuple[int, ...]:
    """The run's missing classes (ids), fixed for the whole run; () when the setting is off.

    ``missing_classes``: the classes named (each must remain after the first task). ``missing_ratio`` p: a seeded draw
    of round(p·n) classes from each group of classes that leave the plan together (forgotten in task 2, in task 3, …,
    and those never forgotten), so every task's remaining set has about the share p missing; the never-forgotten group
    keeps at least one class with data. A missing class that a later task forgets gets its forget images then (a
    forgetting request comes with the images to forget), never replay images."""
    first = plan.tasks[0]
    if config.missing_classes:
        ids = sorted({class_id(c, class_names) for c in config.missing_classes})
        bad = [c for c in ids if c not in set(first.remain)]
        if bad:
            raise GsloraError(f"missing class {class_names[bad[0]]!r} is forgotten in task 1; a missing class must be "
                              "one of the classes that remain after the first task.")
        missing = tuple(ids)
    elif config.missing_ratio > 0:
        groups = [t.forget for t in plan.tasks[1:]]
        gone = {c for t in plan.tasks for c in t.forget}
        groups.append(tuple(c for c in first.remain if c not in gone))
        rng = np.random.default_rng([config.seed, 2501])  # this draw's own generator
        chosen: list[int] = []
        for i, group in enumerate(groups):
            n = int(round(config.missing_ratio * len(group)))
            if i == len(groups) - 1:
                n = min(n, len(group) - 1)
            chosen += [group[j] for j in rng.permutation(len(group))[:n].tolist()]
        missing = tuple(sorted(chosen))
    else:
        return ()
    for t in plan.tasks:
        if not [c for c in t.remain if c not in set(missing)]:
            raise GsloraError(f"every class remaining in task {t.index} is missing, so it has no replay data; lower "
                              "missing_ratio or name fewer missing_classes.")
    return missing


def data_constraint(config: RunConfig, missing: tuple[int, ...] | list[int] = ()) -> str | None:
    """What the run's setting withholds, in words (None: the full-data setting)."""
    parts = []
    if config.shots > 0:
        parts.append(f"few-shot: {config.shots} images per class")
    if missing:
        parts.append(f"missing classes: {len(missing)} remaining classes without any data")
    return "; ".join(parts) or None


def check_method_fits(method, constraint: str | None) -> None:
    """Raise :class:`DataConstraintError` when ``method`` needs data (``Method.data_needs``) that ``constraint``
    withholds."""
    needs = getattr(method, "data_needs", None)
    if constraint and needs:
        raise DataConstraintError(f"{method.name} needs {needs}; this setting gives less ({constraint}), so it is "
                                  "not run")
