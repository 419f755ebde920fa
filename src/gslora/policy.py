"""The target policy of a forgetting task: what each task must reach, when training stops, which trial comes next and
which trial is kept. The runner (:mod:`gslora.forget`) asks it; the engine only reports checks and asks whether to
stop. One place for the rule, so a different policy is one class (benchmarks/ keeps the ones measured and not adopted).

    checks:  every ``eval_every`` steps the runner scores the forgetting targets on the check set; the policy says
             ``stop`` once they held at ``target_checks`` consecutive checks, else ``hold`` (train on)
    trials:  the first trial at the configured lr; x2 after a missed accuracy forgetting target (acc_f, acc_o); after
             a missed retention target (unless forgetting took the whole budget) the retention anchor x3 at the same
             lr for a method that has one (GS-LoRA's anchor_weight), else x1/2 the lr; none after a trial that
             missed only a probe target, never a trial made before, at most ``max_trials``
    choice:  the first trial meeting every target, else the best by (all met, validation H, forgetting met)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import RunConfig, parse_target
from .data.plan import Task

FORGETTING_TARGETS = ("acc_f", "acc_o", "probe_f", "probe_keep",
                      "ap_f", "ap_f_share", "ap_o")  # detection's: gslora.detection.config
PROBE_TARGETS = ("probe_f", "probe_keep")


@dataclass
class TargetPolicy:
    """The default policy. ``targets``: metric → upper bound (``RunConfig.target``)."""

    targets: dict[str, float]
    max_trials: int = 3
    target_checks: int = 6

    @classmethod
    def from_config(cls, config: RunConfig) -> TargetPolicy:
        return cls(parse_target(config.target), config.max_trials, config.target_checks)

    @property
    def forgetting(self) -> dict[str, float]:
        """The forgetting targets (acc_f, acc_o): the ones the periodic checks look at."""
        return {k: v for k, v in self.targets.items() if k in FORGETTING_TARGETS}

    def for_method(self, method) -> TargetPolicy:
        """This policy for ``method``: without the probe targets when the method cannot move the embeddings a probe
        reads (head forgetting): they would only cost trials (the probe is still reported)."""
        if getattr(method, "moves_features", True) or not any(k in self.targets for k in PROBE_TARGETS):
            return self
        return dataclasses.replace(self, targets={k: v for k, v in self.targets.items() if k not in PROBE_TARGETS})

    def spec(self, configured: str) -> str:
        """The target string this policy enforces: ``configured`` when it is the same, else its own."""
        if parse_target(configured) == self.targets:
            return configured
        return ",".join(f"{k}<={v:g}" for k, v in self.targets.items())

    def trials_for(self, method) -> int:
        """How many trials a task may have: ``max_trials`` for a method that trains towards targets, else one."""
        return self.max_trials if method.trains and method.uses_targets and self.targets else 1

    def decide(self, checks: list) -> str:
        """``"stop"`` once the forgetting targets held at ``target_checks`` consecutive checks, else ``"hold"``."""
        need = self.target_checks
        return "stop" if len(checks) >= need and all(c.met for c in checks[-need:]) else "hold"

    def check_met(self, metrics: dict) -> bool:
        return forgetting_met(metrics, self.targets)

    def met(self, metrics: dict) -> dict[str, bool]:
        return targets_met(metrics, self.targets)

    def next_trial(self, trials: list[dict], method=None) -> tuple[float, float] | None:
        return next_trial(trials, anchored=bool(getattr(method, "anchored", False)))

    def better(self, record: dict, other: dict) -> bool:
        return _better(record, other)


def checked_classes(task: Task, forgetting: dict) -> dict[str, list[int]]:
    """Per forgetting target of ``forgetting`` (acc_f, acc_o) the classes the periodic check must score: this task's
    forgotten classes for acc_f, the earlier-forgotten ones for acc_o (the probe targets read this task's forgotten
    classes' images too: :func:`probing`)."""
    return {k: list(v) for k, v in (("acc_f", task.forget), ("acc_o", task.old)) if k in forgetting}


def probing(forgetting: dict) -> bool:
    """Whether the periodic check reads the in-loop probe: a probe target is among the forgetting targets (it is fitted
    on every class's check images and scores this task's forgotten classes)."""
    return any(k in forgetting for k in PROBE_TARGETS)


def _brief(metrics: dict) -> dict:
    """The numbers a target looks at: acc_f, acc_r, acc_o, acc_r_drop (vs the pre-trained model), h_mean, and the
    probe's probe_f / probe_keep when measured."""
    if "acc_r_drop" in metrics or "ap_r_drop" in metrics:  # already brief, or detection's metrics
        return metrics
    change = metrics.get("acc_r_change_vs_pretrained")
    out = {"acc_f": metrics["acc_f"], "acc_r": metrics["acc_r"], "acc_o": metrics["acc_o"],
           "acc_r_drop": -change if change is not None else None, "h_mean": metrics["h_mean"]}
    out.update({k: metrics[k] for k in PROBE_TARGETS if k in metrics})
    return out


def forgetting_met(metrics: dict, targets: dict) -> bool:
    """Every forgetting target (acc_f, acc_o) holds; a metric without images (None) holds trivially."""
    return all(metrics.get(k) is None or metrics[k] <= v for k, v in targets.items() if k in FORGETTING_TARGETS)


def targets_met(metrics: dict, targets: dict) -> dict[str, bool]:
    """Per target whether it held; ``acc_r_drop`` within one image's worth (``acc_r_resolution``) when given."""
    brief = _brief(metrics)
    def bound(key, value):
        return max(value, metrics.get("acc_r_resolution", 0.0) + 1e-9) if key == "acc_r_drop" and value >= 0 else value

    return {k: bool(brief.get(k) is None or brief[k] <= bound(k, v)) for k, v in targets.items()}


ANCHOR_STEP = 3.0  # a trial after a retention miss multiplies the retention anchor by this (10 -> 30 -> 90)


def next_trial(trials: list[dict], anchored: bool = False) -> tuple[float, float] | None:
    """The next trial's (lr multiplier, anchor multiplier), or None when the search ends. First (1, 1); then, after
    a trial that missed a forgetting target, twice the lr; after one that met them but missed the retention target,
    for an ``anchored`` method (GS-LoRA's embedding anchor on the replay batch) the anchor x ``ANCHOR_STEP`` at the
    same lr, else half the lr (halving the lr did not win retention back under the class-mean collapse: Georgia Tech
    task 1 kept its check-set drop at 4.5, 4.0, 6.0 over lr x1, x1/2, x1/4; docs/results/DECISIONS.md), unless it
    needed its whole step budget to get there (it ran periodic checks and did not stop early): a trial that forgets
    more slowly would not meet the forgetting target within the same budget, and the search ends. None also when
    the pair was already tried, i.e. the search turned back."""
    if not trials:
        return 1.0, 1.0
    last = trials[-1]
    lr, anchor = last["lr_scale"], last.get("anchor_scale", 1.0)
    met = last["targets_met"]
    if all(v for k, v in met.items() if k in FORGETTING_TARGETS and k not in PROBE_TARGETS):
        if all(v for k, v in met.items() if k not in PROBE_TARGETS):
            return None  # only a probe target missed: it ran its whole budget at it, and a trial at another lr
            # costs a whole budget more for depth the trials did not buy (bundled faces: 3 trials per task, the
            # probe still 83-89% kept; docs/results/DECISIONS.md)
        probe_missed = any(not v for k, v in met.items() if k in PROBE_TARGETS)
        if last.get("checks", 1) and not last.get("stopped_early", True) and not probe_missed:
            return None  # forgetting took the whole budget: a slower trial would not get there in it (without periodic
            # checks, eval_every 0, no trial can stop early, so the budget says nothing; with a probe target missed,
            # the probe kept it training, not the accuracy targets: retention comes first, another trial is made)
        want = (lr, anchor * ANCHOR_STEP) if anchored else (lr * 0.5, anchor)
    else:
        want = (lr * 2.0, anchor)
    if any(abs(want[0] - t["lr_scale"]) < 1e-9 * want[0] and abs(want[1] - t.get("anchor_scale", 1.0)) < 1e-9 * want[1]
           for t in trials):
        return None
    return want


def _better(record: dict, other: dict) -> bool:
    """Trial order: every target met first, then the higher validation H-Mean (the paper's summary of forgetting and
    retention together), then forgetting met. Ranking "forgetting met" above H kept collapsed trials (a trial that
    met acc_f with validation Acc_r 3% won over one at H 70 that missed acc_f by a few points)."""
    def key(r):
        met = r["targets_met"]
        forgot = all(v for k, v in met.items() if k in FORGETTING_TARGETS)
        return (all(met.values()), r["val"]["h_mean"] or 0.0, forgot)
    return key(record) > key(other)


