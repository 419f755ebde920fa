"""Task plans: which classes each forgetting request erases, keeps and has erased before; replay subsets."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import GsloraError


@dataclass(frozen=True)
class Task:
    """One forgetting request. ``index`` counts from 1; class ids index the model's classes."""

    index: int
    forget: tuple[int, ...]  # F_t
    remain: tuple[int, ...]  # R_t = all - F_1 - ... - F_t
    old: tuple[int, ...]  # O_t = F_1 u ... u F_{t-1}


@dataclass
class TaskPlan:
    num_classes: int
    class_order: list[int]
    tasks: list[Task]
    forgotten_before: list[int] = field(default_factory=list)  # forgotten by earlier requests (the model's record)

    def to_dict(self, class_names: list[str] | None = None) -> dict:
        out = {"num_classes": self.num_classes, "class_order": self.class_order, "tasks": []}
        if self.forgotten_before:
            out["forgotten_before"] = list(self.forgotten_before)
            if class_names is not None:
                out["forgotten_before_names"] = [class_names[c] for c in self.forgotten_before]
        for t in self.tasks:
            d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(t).items()}
            if class_names is not None:
                d["forget_names"] = [class_names[c] for c in t.forget]
            out["tasks"].append(d)
        return out


def default_class_order(num_classes: int, seed: int = 1337) -> list[int]:
    """The authors' order: ``random.seed(seed); random.shuffle(list(range(C)))``."""
    order = list(range(num_classes))
    random.Random(seed).shuffle(order)
    return order


_NXK = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_tasks(spec) -> tuple[int, int] | list[list]:
    """``"4x20"`` → (4, 20); ``"a,b;c"`` → [["a", "b"], ["c"]]; a list of lists is returned as is."""
    if isinstance(spec, str):
        m = _NXK.match(spec)
        if m:
            return int(m.group(1)), int(m.group(2))
        tasks = [[c.strip() for c in part.split(",") if c.strip()] for part in spec.split(";")]
        if not tasks or any(not t for t in tasks):
            raise GsloraError(
                f"tasks {spec!r} must be 'NxK' (N tasks of K classes) or class lists like 'a,b;c,d' "
                "(';' between tasks)."
            )
        return tasks
    if isinstance(spec, list) and spec and all(isinstance(t, list) and t for t in spec):
        return spec
    raise GsloraError(f"tasks must be 'NxK' or a non-empty list of non-empty class lists, got {spec!r}.")


def evaluation_sets(class_names: list[str], history: list[dict], specs: list[str] | None) -> dict[str, list[int]]:
    """The class sets ``gslora evaluate`` reports: all classes, the forgotten and remaining ones of a run's
    ``history`` (when it has one), and each comma-separated ``specs`` entry as "set 1", "set 2", ..."""
    sets = {"all": list(range(len(class_names)))}
    forgotten = list(dict.fromkeys(class_id(c, class_names) for h in history for c in h["forgotten"]))
    if forgotten:
        sets["forgotten (history)"] = forgotten
        sets["remaining (history)"] = [c for c in range(len(class_names)) if c not in set(forgotten)]
    for i, spec in enumerate(specs or []):
        sets[f"set {i + 1}"] = [class_id(c.strip(), class_names) for c in spec.split(",") if c.strip()]
    return sets


def class_id(c, class_names: list[str]) -> int:
    """A class given by name or id, as an id; an unknown class is a GsloraError listing valid ones."""
    if isinstance(c, str) and c in class_names:
        return class_names.index(c)
    as_int = c if isinstance(c, int) and not isinstance(c, bool) else None
    if isinstance(c, str) and c.strip().lstrip("-").isdigit():
        as_int = int(c)
    if as_int is not None and 0 <= as_int < len(class_names):
        return as_int
    sample = ", ".join(class_names[:5]) + (", ..." if len(class_names) > 5 else "")
    raise GsloraError(
        f"class {c!r} is not in the model; use one of its {len(class_names)} class names ({sample}) or an id "
        f"in 0..{len(class_names) - 1}."
    )


def make_plan(class_names: list[str], tasks_spec, seed: int = 1337, class_order: list[int] | None = None,
              forgotten: Iterable[int] = ()) -> TaskPlan:
    """Build the plan. ``NxK`` forgets backwards through the seeded class order, as the paper does:
    task i (0-based) forgets ``order[C-K(i+1) : C-Ki]``.

    ``forgotten``: classes earlier requests erased (the model's record). They stay forgotten: an ``NxK`` plan draws
    from the other classes only (the order without them), naming one of them is an error, and every task counts them
    among its old classes (scored as Acc_o, never replayed)."""
    num_classes = len(class_names)
    order = list(class_order) if class_order is not None else default_class_order(num_classes, seed)
    before = sorted(set(int(c) for c in forgotten))
    available = [c for c in order if c not in set(before)]
    earlier = f" ({len(before)} were forgotten by earlier requests)" if before else ""
    parsed = parse_tasks(tasks_spec)
    if isinstance(parsed, tuple):
        n, k = parsed
        if n < 1 or k < 1:
            raise GsloraError(f"tasks {tasks_spec!r} must name at least one task of at least one class.")
        if n * k >= len(available):
            raise GsloraError(
                f"tasks {tasks_spec!r} would forget {n * k} of the model's {len(available)} classes still known"
                f"{earlier}; at least one class must remain (forgetting every class is not a forgetting problem)."
            )
        size = len(available)
        forget_sets = [available[size - k * (i + 1) : size - k * i] for i in range(n)]
    else:
        forget_sets = [[class_id(c, class_names) for c in task] for task in parsed]
        again = [c for fs in forget_sets for c in fs if c in set(before)]
        if again:
            names = ", ".join(repr(class_names[c]) for c in dict.fromkeys(again))
            one = len(set(again)) == 1
            raise GsloraError(
                f"{names} {'was' if one else 'were'} already forgotten by an earlier request (the model's record) and "
                f"{'stays' if one else 'stay'} forgotten; leave {'it' if one else 'them'} out of the tasks."
            )
    seen: dict[int, int] = {}
    for i, fs in enumerate(forget_sets, start=1):
        for c in fs:
            if c in seen:
                where = f"tasks {seen[c]} and {i}" if seen[c] != i else f"task {i} twice"
                raise GsloraError(
                    f"class {class_names[c]!r} is forgotten in {where}; each class may be forgotten once."
                )
            seen[c] = i
    if len(seen) >= len(available):
        raise GsloraError(
            f"the tasks forget all {len(available)} classes the model still knows{earlier}; leave at least one "
            "class to remain."
        )
    tasks, gone = [], list(before)
    for i, fs in enumerate(forget_sets, start=1):
        forget = tuple(sorted(fs))
        old = tuple(sorted(gone))
        gone.extend(fs)
        remain = tuple(c for c in range(num_classes) if c not in set(gone))
        tasks.append(Task(index=i, forget=forget, remain=remain, old=old))
    return TaskPlan(num_classes=num_classes, class_order=order, tasks=tasks, forgotten_before=before)


def select_per_class(targets: list[int], classes, seed: int, ratio: float = 0.1, shots: int = 0,
                     minimum: int = 1) -> list[int]:
    """Indices of a per-class subset: ``shots`` images per class if > 0, else ``ratio`` of them but at least
    ``minimum`` (as far as the class has images).

    Each class has one seeded permutation, so a class keeps the same images across tasks and runs.
    """
    wanted = set(int(c) for c in classes)
    by_class: dict[int, list[int]] = {c: [] for c in sorted(wanted)}
    for i, t in enumerate(targets):
        if t in wanted:
            by_class[t].append(i)
    out = []
    for c, idx in by_class.items():
        if not idx:
            continue
        perm = np.random.default_rng([seed, 7, c]).permutation(len(idx))
        n = shots if shots > 0 else max(1, minimum, int(round(ratio * len(idx))))
        n = min(n, len(idx))
        out.extend(idx[j] for j in sorted(perm[:n].tolist()))
    return out
