"""A forgetting *problem* (classification, detection): what the one task loop (:func:`gslora.forget.run_forgetting`)
asks of the data, the model and the metrics. The loop owns the plan, the trials and the policy (targets, stopping,
the trial kept), the engine, resume (task and epoch state in the :class:`~gslora.rundir.RunFolder`) and the folder;
the problem supplies:

    resolve(config), method(config), policy(config)     the run's settings, method (its registry) and target policy
    check_inputs(classes, data)                          one-sentence errors before anything is written
    prepare(model, device)                               the model as the loop trains it
    scores(model, data, split, ...)                      the per-class evaluation of one split ("test", "val")
    fit_problem(...)                                     a new run's check that the model fits the data (or None)
    plan_record(plan, classes, data, config)             plan.json: the exact images each task uses
    task(...)                                            one task's data, check set, periodic check, validation and
                                                         results row (a :class:`ProblemTask`)
    results(...), finish(...)                            results.json and the final model / report files
    state_dict() / load_state_dict(state)                what a resumed run needs of the problem itself

Classification (:class:`gslora.forget.Classification`): accuracies, Acc_f / Acc_r / Acc_o, the erasure record and the
masked deployment. Detection (:class:`gslora.detection.problem.Detection`): COCO AP, AP_f / AP_r / AP_o.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProblemTask:
    """One task as the problem sets it up for the loop: the training subsets the method sees, the periodic check
    (model → (forgetting targets held, metrics)), the per-trial validation (model → metrics the policy reads) and
    ``result`` (→ (results row, scores after the task)) once the trial is chosen."""

    remain_data: Any
    forget_data: Any
    check: Any  # Callable[[nn.Module], tuple[bool, dict]]
    validate: Any  # Callable[[nn.Module], dict]
    result: Any  # Callable[..., tuple[dict, dict]]
    train_data: Any = None
    val_data: Any = None
    constraint: str | None = None
    extra: dict = field(default_factory=dict)


class Problem:
    """The interface (see the module docstring). ``keeps_record``: the loop keeps the model's erasure record
    (:mod:`gslora.record`) and the masked deployment of each task."""

    name = "problem"
    keeps_record = False

    # what every problem supplies (the module docstring says what each is for)
    def resolve(self, config):
        raise NotImplementedError

    def method(self, config):
        raise NotImplementedError

    def policy(self, config):
        raise NotImplementedError

    def check_inputs(self, classes: list[str], data) -> None:
        raise NotImplementedError

    def check_images(self, data, classes: list[str]) -> None:
        raise NotImplementedError

    def missing_check(self, model, config):
        raise NotImplementedError

    def prepare(self, model, device):
        raise NotImplementedError

    def scores(self, model, data, split, num_classes: int, config, device):
        raise NotImplementedError

    def start(self, model, data, config, device) -> None:
        """A new run, before its first task (detection: the figure's first row)."""

    def plan_record(self, plan, classes: list[str], data, config) -> dict:
        raise NotImplementedError

    def task(self, model, task, classes, data, config, device, original, counts_orig, counts_now, used: dict, policy,
             method, plan) -> ProblemTask:
        raise NotImplementedError

    def results(self, **parts) -> dict:
        raise NotImplementedError

    def finish(self, folder, results: dict, model, classes, history, record, data) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def fit_problem(self, model, data, classes, config, device, force: bool, warnings: list) -> dict | None:
        """A new run's scores before the first task when the problem computed them to check the model fits the data
        (None: the loop scores the model itself)."""
        return None

    def log_task(self, row: dict) -> str:
        return f"task {row['task']} done"

