"""The runner: a model, a data bundle and a config in; per-task results, a final model and a run folder out.

    checkpoint + data → task plan → for each task: prepare (attach LoRA) → train → evaluate → finish (merge)
    → save resume state → … → run folder (see :mod:`gslora.rundir`)

A run killed at any point continues with ``resume=True`` from its last finished task (or its last epoch checkpoint
with ``checkpoint_every``) and ends with the same numbers as an uninterrupted run: each task's random state is
derived from (seed, task index), never from what ran before in the process.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired

import numpy as np
from torch.utils.data import ConcatDataset, Subset

from . import distributed as dist
from ._version import __version__
from .config import RunConfig, to_dict
from .data.base import DataBundle, check_data_matches  # noqa: F401 (re-exported)
from .data.plan import Task, TaskPlan, make_plan, select_per_class
from .depth import keep, model_probes
from .engine import TrainSettings, autocast_dtype, train_task
from .errors import GsloraError
from .evaluate import TaskMetrics, accuracy, class_counts, task_metrics, tunable_ratio
from .files import check_writable
from .methods import Method, TaskContext, get_method
from .missing import MissingCheck
from .models.registry import Classifier, count_parameters
from .policy import (  # noqa: F401 (re-exported: the rule's pieces, as the tests and benchmarks use them)
    FORGETTING_TARGETS,
    TargetPolicy,
    _better,
    _brief,
    checked_classes,
    forgetting_met,
    next_trial,
    probing,
    targets_met,
)
from .practical import check_method_fits, data_constraint, missing_classes
from .presets import resolve
from .problem import Problem, ProblemTask
from .record import append_entry, forgotten_names, new_request_prefix, weights_sha256
from .rundir import RunFolder

log = logging.getLogger(__name__)


class TaskRow(TaskMetrics):
    """One task of ``results["tasks"]`` (= ``RunResult.rows``): the test-split metrics at the top level."""

    task: int
    setting: str  # "<classes before>-<forgotten>", e.g. "100-20"
    forget: list[str]  # the class names forgotten in this task
    n_forget: int
    n_remain: int
    n_old: int
    n_missing: int  # remaining classes without any data (missing classes, gslora.practical): scored as acc_m
    missing: list[str]  # their names
    probe_f: float | None  # the in-loop probe (gslora.depth) on the forgotten classes' test images, leave-one-out
    probe_keep: float | None  # probe_f as % of the task-start model's on the same images
    probe_o: float | None  # the same probe scored on the earlier-forgotten classes' test images (None on a first task)
    probe_o_before: float | None  # probe_o under the task-start model: probe_o − probe_o_before is depth given back
    val: TaskMetrics  # the same metrics on the validation split
    targets: dict  # the target spec and, per target, whether it held on validation and on test
    trials: list[dict]  # per trial: lr, steps, whether it stopped early, validation metrics, targets met
    chosen_trial: int  # 1-based
    tunable_ratio: float  # % of the model's parameters trained (SSD: dampened)
    trainable_params: int
    replay_images: int
    forget_images: int
    steps: int
    train_seconds: float
    wall_seconds: float
    method_info: dict  # what the method reports (GS-LoRA: group norms, ‖ΔW‖/‖W‖, blocks selected, adapter)
    missing_check: NotRequired[dict]  # with --missing-check-data: acc, images, change vs before the first task


@dataclass
class RunResult:
    results: dict
    model: Classifier
    plan: TaskPlan
    out_dir: Path | None = None

    @property
    def rows(self) -> list[TaskRow]:
        """One dict per task (the ``tasks`` of ``results``); method-specific numbers under ``method_info``."""
        return self.results["tasks"]


def task_seed(seed: int, task_index: int) -> int:
    """The seed of one task's random state, derived from the run seed and the task index alone."""
    digest = hashlib.sha256(f"gslora/task/{seed}/{task_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _accuracies(model, data: DataBundle, split, num_classes: int, cfg: RunConfig, device) -> tuple:
    dataset = getattr(data, split) if isinstance(split, str) else split
    return class_counts(model, dataset, num_classes, device, cfg.eval_batch_size,
                        margin_at_test=cfg.margin_at_test, num_workers=cfg.num_workers,
                        autocast_dtype=autocast_dtype(cfg.precision))


def run_forgetting(model: Classifier, classes: list[str], data: DataBundle, config: RunConfig,
                   out_dir: str | Path | None = None, history: list | None = None, overwrite: bool = False,
                   progress: bool = False, method: Method | None = None,
                   source_checkpoint: str | Path | None = None, resume: bool = False, record: list | None = None,
                   request_id: str | None = None, force: bool = False,
                   on_task: Callable[[dict, int], None] | None = None,
                   policy: TargetPolicy | None = None, problem: Problem | None = None) -> RunResult:
    """Run the task sequence of ``config`` on ``model`` (modified in place and returned as ``result.model``).

    ``config`` is resolved first (:func:`gslora.presets.resolve`: unset training settings come from the method's
    preset). ``resume``: continue the unfinished run in ``out_dir`` (started fresh when there is none); without it
    an unfinished run there is an error, as is a finished one without ``overwrite``. ``source_checkpoint`` (the path
    the model was loaded from) is recorded so audits can find the original model.

    ``history`` / ``record``: what the model went through before (the ``history`` and ``record`` of its checkpoint's
    meta, :func:`gslora.models.loading.load_any`). Every class they name stays forgotten: it is never replayed, it
    is scored as Acc_o in every task, an ``NxK`` plan draws from the other classes, and naming it again is an error.
    Each task appends one entry to the record (:mod:`gslora.record`), its request id ``request_id/task<i>``
    (default: the start time and a random suffix). With ``config.mask_outputs`` the returned model masks every
    forgotten class's output (``model.config["masked_classes"]``).

    Before anything is written, the data is checked (every class has a training, a validation or second training,
    and a test image), the run folder is checked to be writable, and a new run's model is scored on the data: a
    model no better than chance (one-sided binomial test, p > 0.001) is refused with the likely causes, unless
    ``force`` (then it goes on with a warning, recorded in ``results["warnings"]``).

    ``on_task(row, number of tasks)`` is called with each finished task's row (the CLI prints a line from it).
    ``policy``: targets, stopping, trials and the trial kept (default :class:`gslora.policy.TargetPolicy` from
    ``config``: target, target_checks, max_trials); another policy is a subclass of it.

    ``problem``: what is forgotten (:mod:`gslora.problem`; default :class:`Classification`; detection:
    :class:`gslora.detection.problem.Detection`, whose config is a :class:`gslora.detection.config.DetectionConfig`).
    The loop, trials, policy, resume and run folder are the same for every problem.
    """
    problem = problem or Classification()
    config = problem.resolve(config)
    method = method or problem.method(config)
    problem.check_inputs(classes, data)
    record = list(record or [])
    prior = [class_id_in_record(c, classes) for c in forgotten_names(record, history)]
    plan = make_plan(classes, config.tasks, seed=config.seed, forgotten=prior)
    # few-shot / missing classes: a method needing more data than the setting gives is refused before the run folder
    check_method_fits(method, data_constraint(config, missing_classes(config, plan, classes)))
    missing = problem.missing_check(model, config)  # its errors come before the run folder
    device = dist.resolve_device(config.device)
    dist.init_from_env(device)
    folder = RunFolder(out_dir) if out_dir is not None else None
    writes = folder is not None and dist.is_main()
    problem.check_images(data, classes)
    if writes:
        folder.check(overwrite, resume)
        check_writable(folder.path, "run folder")

    # the model as it came (masked classes included) is what the record's first new entry starts from; the run itself
    # works on the unmasked model (training and the paper's metrics), and masks again when it finishes
    start_hash = weights_sha256(model) if problem.keeps_record else None
    if record and record[-1].get("weights_after") != start_hash:
        log.warning("the model's weights are not the ones the last entry of its record describes; `gslora verify` "
                    "will report the record broken at the first entry of this run")
    prefix = request_id or new_request_prefix()
    model = problem.prepare(model, device)
    nc = len(classes)
    warnings: list[str] = []
    counts_start = None
    if not (resume and folder is not None and folder.is_unfinished()):  # a new run: does the model fit the data?
        counts_start = problem.fit_problem(model, data, classes, config, device, force, warnings)
    plan_record = problem.plan_record(plan, classes, data, config)  # plan.json: what each task used, exactly
    policy = (policy or problem.policy(config)).for_method(method)
    state = None
    if writes:  # under torchrun, rank 0 alone checks and writes the folder
        folder.start(config, plan_record, overwrite=overwrite, resume=resume)
    if folder is not None and resume:
        state = folder.load_task_state(config)
    original = copy.deepcopy(model).eval().requires_grad_(False)
    missing_before = _missing_check(missing, model, config, device)  # the model as given (also when resuming)
    total_params = count_parameters(model)
    if state is None:
        counts_orig = counts_start or {s: problem.scores(model, data, s, nc, config, device) for s in ("test", "val")}
        counts_now, rows, history, spent = dict(counts_orig), [], list(history or []), 0.0
        weights_before = start_hash
        problem.start(model, data, config, device)
    else:
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"], device)
        problem.load_state_dict(state.get("problem") or {})
        counts_orig, counts_now = state["counts_orig"], state["counts_now"]
        rows, history, spent = state["rows"], state["history"], state["wall_seconds"]
        record, prefix, weights_before = state.get("record", record), state.get("request_prefix", prefix), \
            state.get("weights_after", start_hash)
    run_start = time.perf_counter()
    for position, task in enumerate(plan.tasks):
        if position < len(rows):
            continue  # finished before the resume
        epoch_state = folder.load_epoch_state(task.index) if resume and folder is not None else None
        row, model, counts_after = _run_task(model, method, task, position, plan, classes, data, config, device,
                                             original, counts_orig, counts_now, total_params,
                                             folder if writes else None, progress, epoch_state, policy,
                                             plan_record["tasks"][position]["indices"], problem)
        if missing.active:
            row["missing_check"] = _missing_check(missing, model, config, device, missing_before)
        if problem.keeps_record:
            masked = _masked_after(plan, position) if config.mask_outputs else []
            row["deployed"] = _deployed_metrics(model, data, task, masked, row, config, device)
            weights_after = weights_sha256(model, masked)
            record = append_entry(record, _entry(f"{prefix}/task{task.index}", task, row, classes, config, method,
                                                 weights_before, weights_after, masked))
            weights_before = weights_after
        rows.append(row)
        if on_task is not None and dist.is_main():
            on_task(row, len(plan.tasks))
        counts_now = counts_after
        history.append({"task": task.index, "method": method.name, "forgotten": row["forget"]})
        log.info("%s", problem.log_task(row))
        if writes and position + 1 < len(plan.tasks):
            folder.save_task_state(position + 1, {
                "config": to_dict(config), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "method": method.state_dict(), "rows": rows, "history": history, "counts_orig": counts_orig,
                "counts_now": counts_now, "wall_seconds": spent + time.perf_counter() - run_start,
                "record": record, "request_prefix": prefix, "weights_after": weights_before,
                "problem": problem.state_dict(),
            })

    results = problem.results(model=model, method=method, config=config, data=data, classes=classes, device=device,
                              source_checkpoint=source_checkpoint, plan=plan, plan_record=plan_record, rows=rows,
                              wall_seconds=spent + time.perf_counter() - run_start, warnings=warnings,
                              total_params=total_params, missing=missing, missing_before=missing_before,
                              record=record, counts_orig=counts_orig)
    if writes:
        problem.finish(folder, results, model, classes, history, record, data)
    return RunResult(results=results, model=model, plan=plan, out_dir=folder.path if folder is not None else None)


class Classification(Problem):
    """Image classification: accuracies per class, Acc_f / Acc_r / Acc_o (:mod:`gslora.evaluate`), replay and forget
    subsets per class (:func:`task_subsets`), the erasure record and the masked deployment."""

    name = "classification"
    keeps_record = True

    def resolve(self, config: RunConfig) -> RunConfig:
        return resolve(config)

    def method(self, config: RunConfig) -> Method:
        return get_method(config.method, **config.method_args)

    def policy(self, config: RunConfig) -> TargetPolicy:
        return TargetPolicy.from_config(config)

    def check_inputs(self, classes: list[str], data: DataBundle) -> None:
        check_data_matches(classes, data)

    def check_images(self, data: DataBundle, classes: list[str]) -> None:
        check_class_images(data, classes)

    def missing_check(self, model, config: RunConfig) -> MissingCheck:
        return MissingCheck.setup(model, config.missing_check_data)

    def prepare(self, model, device):
        model.config.pop("masked_classes", None)
        return model.to(device)

    def scores(self, model, data: DataBundle, split, num_classes: int, config: RunConfig, device) -> tuple:
        return _accuracies(model, data, split, num_classes, config, device)

    def fit_problem(self, model, data, classes, config, device, force: bool, warnings: list) -> dict:
        nc = len(classes)
        counts_start = {s: _accuracies(model, data, s, nc, config, device) for s in ("test", "val")}
        fit = model_fit_problem(counts_start, nc)
        if fit and not force:
            raise GsloraError(fit + " Pass --force (force=True) to go on anyway.")
        if fit:
            log.warning("%s Going on (forced).", fit)
            warnings.append(fit)
        return counts_start

    def plan_record(self, plan: TaskPlan, classes: list[str], data: DataBundle, config: RunConfig) -> dict:
        return plan_with_indices(plan, classes, data, config)

    def task(self, model, task, classes, data, config, device, original, counts_orig, counts_now, used, policy,
             method, plan) -> ProblemTask:
        return _classification_task(model, task, classes, data, config, device, original, counts_orig, counts_now,
                                    used, policy, method, plan)

    def log_task(self, row: dict) -> str:
        return (f"task {row['task']}: acc_f {row['acc_f']:.2f} acc_r {row['acc_r']:.2f} acc_o {row['acc_o']} "
                f"H {row['h_mean'] or 0.0:.2f}")

    def results(self, *, model, method, config, data, classes, device, source_checkpoint, plan, plan_record, rows,
                wall_seconds, warnings, total_params, missing, missing_before, record, counts_orig) -> dict:
        results = {
            "gslora_version": __version__,
            "method": method.describe(),
            "config": to_dict(config),
            "data": data.describe(),
            "model": {**model.config, "parameters": total_params},
            "device": str(device),
            "source_checkpoint": str(Path(source_checkpoint).resolve()) if source_checkpoint else None,
            "plan": plan_record,
            "missing_check": missing.summary(missing_before),
            "tasks": rows,
            "wall_seconds": wall_seconds,
            "warnings": warnings,
        }
        if config.mask_outputs:
            model.config["masked_classes"] = _masked_after(plan, len(plan.tasks) - 1)
        results["masked_classes"] = [classes[c] for c in model.config.get("masked_classes", [])]
        results["record"] = record
        results["certified"] = (None if not config.audit else all(r["audit"]["certified"] for r in rows))
        return results

    def finish(self, folder: RunFolder, results: dict, model, classes, history, record, data) -> None:
        folder.finish(results, model, classes, history, record)


def check_class_images(data: DataBundle, classes: list[str]) -> None:
    """Every class needs a training image, a validation image (or a second training image, for the check set) and a
    test image, or its tasks cannot be scored: a one-sentence error naming the first class short of them."""
    nc = len(classes)
    count = {s: np.bincount(np.asarray(getattr(data, s).targets, dtype=np.int64), minlength=nc)
             for s in ("train", "val", "test")}
    short = [c for c in range(nc) if count["train"][c] < 1 or count["test"][c] < 1
             or (count["val"][c] < 1 and count["train"][c] < 2)]
    if short:
        c = short[0]
        more = f" (and {len(short) - 1} more classes)" if len(short) > 1 else ""
        raise GsloraError(
            f"class {classes[c]!r}{more} has {count['train'][c]} training, {count['val'][c]} validation and "
            f"{count['test'][c]} test image(s); forgetting needs at least 1 training, 1 validation and 1 test image "
            "per class (a class folder of 3 or more images: gslora splits it into train / validation / test).")


def model_fit_problem(counts: dict, num_classes: int) -> str | None:
    """One sentence when the model scores no better than chance on the data (test and validation images together;
    one-sided binomial test against 1 / classes, p > 0.001); None when it fits."""
    from scipy.stats import binom

    correct = int(counts["test"][0].sum() + counts["val"][0].sum())
    total = int(counts["test"][1].sum() + counts["val"][1].sum())
    chance = 1.0 / max(num_classes, 1)
    if total == 0 or binom.sf(correct - 1, total, chance) <= 1e-3:
        return None
    return (f"the model scores {100.0 * correct / total:.1f}% on the data's {total} test and validation images, no "
            f"better than chance ({100 * chance:.1f}% for {num_classes} classes), so it does not fit this data; "
            "likely causes: its preprocessing (mean / std, resizing; a Hugging Face folder without "
            "preprocessor_config.json), its architecture arguments (a torchvision VisionTransformer needs "
            "--model-arg num_heads=N), or its class order (--classes FILE names each output).")


def class_id_in_record(name: str, classes: list[str]) -> int:
    """The class id of a class a model's record names as forgotten; a name the model does not have is an error."""
    if name not in classes:
        raise GsloraError(f"the model's record names {name!r} as forgotten, but the model has no class of that name; "
                          "use the model with the class list it was exported with.")
    return classes.index(name)


def _masked_after(plan: TaskPlan, position: int) -> list[int]:
    """Every class forgotten once task ``position`` (0-based) is done: earlier requests' and this run's so far."""
    return sorted(set(plan.forgotten_before) | {c for t in plan.tasks[:position + 1] for c in t.forget})


def _deployed_metrics(model, data: DataBundle, task: Task, masked: list[int], row: dict, config: RunConfig,
                      device) -> dict:
    """Test-split Acc_f / Acc_r / Acc_o of the model as deployed: the ``masked`` classes' outputs masked."""
    from .evaluate import set_accuracies

    model.config["masked_classes"] = masked
    try:
        counts = _accuracies(model, data, "test", len(data.classes), config, device)
    finally:
        model.config.pop("masked_classes", None)
    gone = {data.classes.index(m) for m in row["missing"]}
    acc_r = [c for c in task.remain if c not in gone]
    return {"masked": len(masked), **set_accuracies(*counts, {"acc_f": task.forget, "acc_r": acc_r,
                                                               "acc_o": task.old})}


def _entry(request: str, task: Task, row: dict, classes: list[str], config: RunConfig, method: Method,
           weights_before: str, weights_after: str, masked: list[int]) -> dict:
    """The record entry of one finished task (:func:`gslora.record.append_entry` adds time, version and hashes)."""
    defaults = to_dict(resolve(RunConfig(method=config.method)))
    settings = {k: v for k, v in to_dict(config).items() if v != defaults.get(k)}
    info = row.get("method_info") or {}
    audit = row.get("audit")
    return {
        "request": request,
        "task": task.index,
        "classes": [{"name": classes[c], "index": int(c)} for c in task.forget],
        "weights_before": weights_before,
        "weights_after": weights_after,
        "method": method.name,
        "settings": settings,
        "blocks_changed": info.get("selected_blocks"),
        "trainable_share": row["tunable_ratio"],
        "targets": {"spec": row["targets"]["spec"], "check": row["targets"]["val"], "test": row["targets"]["test"]},
        "metrics": {k: row[k] for k in ("acc_f", "acc_r", "acc_o", "h_mean")},
        "deployed": row.get("deployed"),
        "steps": row["steps"],
        "wall_seconds": row["wall_seconds"],
        "masked": [int(c) for c in masked],
        "audit": ({k: audit[k] for k in ("target", "met", "probe_f_before", "probe_f", "probe_drop", "recovery",
                                          "probe_gap", "recovery_gap", "retrained", "images", "forget_images",
                                          "seconds")} if audit else None),
        "certified": audit["certified"] if audit else None,
    }


def _missing_check(check: MissingCheck, model, config: RunConfig, device, before: dict | None = None) -> dict | None:
    """The missing-class check's value for ``model`` (None when the check is skipped); ``change`` against ``before``."""
    if not check.active:
        return None
    value = check.evaluate(model, device, config.eval_batch_size, config.num_workers, autocast_dtype(config.precision))
    if before is not None:
        value["change"] = value["acc"] - before["acc"]
    return value


def _run_task(model, method: Method, task: Task, position: int, plan: TaskPlan, classes, data: DataBundle,
              config: RunConfig, device, original, counts_orig, counts_now, total_params, folder: RunFolder | None,
              progress: bool, epoch_state: dict | None, policy: TargetPolicy, used: dict[str, list[int]],
              problem: Problem | None = None):
    """One task: subsets, then trials of prepare → train (stopping at the validation target) → finish, the chosen
    trial evaluated on test. Returns (row, merged model, scores after the task). ``used``: the task's images, as
    plan.json records them (the problem's ``plan_record``, e.g. :func:`task_subsets`); ``problem``: what the data,
    the check and the row are (default classification).

    The task has ``max_trials`` step budgets. Every trial trains from the task's start; the first uses the configured
    lr. A trial that missed the forgetting target is followed by one at twice the lr; one that met it but missed the
    retention target by one with a 3x retention anchor (GS-LoRA), or at half the lr (methods without one), unless it
    needed its whole budget to forget; the search ends when it
    would turn back to a trial already made. The first trial meeting every target on validation is kept, else the
    best. The rule is the policy's (:class:`gslora.policy.TargetPolicy`); only the check set is ever looked at to
    choose."""
    t0 = time.perf_counter()
    nc = len(classes)
    problem = problem or Classification()
    forgetting = policy.forgetting
    use_targets = method.trains and method.uses_targets
    n_trials = policy.trials_for(method)
    setup = problem.task(model, task, classes, data, config, device, original, counts_orig, counts_now, used, policy,
                         method, plan)
    check = setup.check

    start_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    method_start = copy.deepcopy(method.state_dict())
    trials: list[dict] = []
    best = None  # (record, weights, method state, info, summary)
    first_trial = 0
    if epoch_state is not None and "trial" in epoch_state:
        first_trial, trials, best = epoch_state["trial"], epoch_state["trials"], epoch_state["best"]
    k = first_trial
    while True:
        scales = policy.next_trial(trials, method)
        if len(trials) >= n_trials or scales is None:
            break
        scale, anchor_scale = scales
        if k > 0:
            model.load_state_dict(start_weights)
            method.load_state_dict(copy.deepcopy(method_start), device)
        trial_cfg = dataclasses.replace(config, lr=config.lr * scale, min_lr=config.min_lr * scale)
        adapter_dir = None
        if folder is not None and config.save_adapters:
            adapter_dir = folder.adapter_dir(task.index)
            adapter_dir = adapter_dir.with_name(f"{adapter_dir.name}.trial{k}") if n_trials > 1 else adapter_dir
        ctx = TaskContext(
            task=task, position=position, num_tasks=len(plan.tasks), num_classes=nc, config=trial_cfg, device=device,
            remain_data=setup.remain_data, forget_data=setup.forget_data,
            train_data=setup.train_data, val_data=setup.val_data, constraint=setup.constraint,
            original_model=original, out_dir=folder.path if folder is not None else None, progress=progress,
            adapter_dir=adapter_dir, anchor_scale=anchor_scale,
        )
        with dist.seeded(task_seed(config.seed, task.index) + k, device):  # the trial's own random state
            work = method.prepare(model, ctx)
            trainable = sum(p.numel() for p in method.trainable_parameters(work))
            if method.trains:
                resume_from = epoch_state if epoch_state is not None and epoch_state.get("trial", 0) == k else None
                on_checkpoint = None
                if folder is not None:
                    def on_checkpoint(s, k=k, best=best):
                        folder.save_epoch_state(task.index, {**s, "trial": k, "trials": trials, "best": best})
                summary = train_task(work, method, ctx, state=resume_from, on_checkpoint=on_checkpoint,
                                     check=check if use_targets and forgetting and config.eval_every else None,
                                     decide=policy.decide, seed_offset=7919 * k,
                                     settings=TrainSettings.of(trial_cfg))
            else:
                summary = {"steps": 0, "budget": 0, "train_seconds": 0.0, "checks": [], "stopped_early": False}
            model, info = method.finish(work, ctx)
        model.eval()
        info = dict(info)
        info.setdefault("trainable_params", trainable)
        val = setup.validate(model)
        record = {"trial": k + 1, "lr": trial_cfg.lr, "lr_scale": scale, "anchor_scale": anchor_scale,
                  "steps": summary["steps"],
                  "budget": summary["budget"], "stopped_early": summary["stopped_early"],
                  "checks": len(summary["checks"]), "val": _brief(val), "targets_met": policy.met(val)}
        trials.append(record)
        if best is None or policy.better(record, best[0]):
            best = (record, {k2: v.detach().to("cpu", copy=True) for k2, v in model.state_dict().items()},
                    copy.deepcopy(method.state_dict()), info, summary)
        if all(record["targets_met"].values()) or not use_targets:
            break
        k += 1
    record, weights, method_state, info, summary = best
    if len(trials) > 1:  # the chosen trial's weights, method state and adapter
        model.load_state_dict(weights)
        method.load_state_dict(copy.deepcopy(method_state), device)
    if folder is not None and n_trials > 1:
        _keep_adapter(folder, task.index, record["trial"] - 1, info)
    trainable = info.pop("trainable_params")
    row, counts_after = setup.result(model, record, trials, info, summary, trainable, total_params, start_weights,
                                     progress, t0)
    return row, model, counts_after


def _classification_task(model, task: Task, classes, data: DataBundle, config: RunConfig, device, original,
                         counts_orig, counts_now, used: dict[str, list[int]], policy: TargetPolicy, method: Method,
                         plan: TaskPlan) -> ProblemTask:
    """A classification task for the loop: its replay / forget subsets (``used``), the check set (the validation
    split plus ``check_train``), the periodic check on the forgetting targets, the per-trial validation and the
    results row (Acc_f / Acc_r / Acc_o on test)."""
    nc = len(classes)
    missing = missing_classes(config, plan, classes)  # remaining classes without any data (gslora.practical)
    replayed = [c for c in task.remain if c not in set(missing)]
    remain_idx, forget_idx, extra = used["replay"], used["forget"], used["check_train"]
    vs_pre = method.drop_against_pretrained
    forgetting = policy.forgetting
    if extra:
        check_set = ConcatDataset([data.val, Subset(data.train, extra)])
        check_orig = _accuracies(original, data, check_set, nc, config, device)
        check_now = _accuracies(model, data, check_set, nc, config, device)
    else:
        check_set, check_orig, check_now = "val", counts_orig["val"], counts_now["val"]
    val_remain_images = int(sum(check_orig[1][c] for c in replayed))

    # the in-loop probe (gslora.depth): a ridge read-out of every class of the task with data, leave-one-out on their
    # check images (for the row: their test images), scored on this task's forgotten classes; probe_keep compares
    # with the task-start model on the same images
    probed = set(task.forget) | set(task.old) | set(replayed)
    probe_sets = {"check": _subset_of_classes(data, check_set, probed),
                  "test": Subset(data.test, [i for i, t in enumerate(data.test.targets) if int(t) in probed])}
    # on the test images (the row) also probe_o, the earlier-forgotten classes' (from the same fit), at the task start
    # and after it: whether this task gave back depth an earlier one reached (it moves people no loss term sees;
    # docs/results/DECISIONS.md#depth)
    scores = {"check": {"probe_f": task.forget}, "test": {"probe_f": task.forget, "probe_o": task.old}}
    probe_start = {k: model_probes(model, v, device, scores[k]) for k, v in probe_sets.items()}

    def probe(m, where: str = "check") -> dict:
        got = model_probes(m, probe_sets[where], device, scores[where])
        out = {"probe_f": got["probe_f"], "probe_keep": keep(got["probe_f"], probe_start[where]["probe_f"])}
        if "probe_o" in got:
            out.update(probe_o=got["probe_o"], probe_o_before=probe_start[where]["probe_o"])
        return out

    def validate(m) -> dict:
        counts = _accuracies(m, data, check_set, nc, config, device)
        metrics = task_metrics(check_now, counts, check_orig, task, vs_pre, missing)
        # one validation image of the remaining classes is worth this many points of acc_r: a retention target
        # finer than that cannot be told from noise, so it counts as met within one image
        return {**_brief(metrics), **probe(m), "acc_r_resolution": 100.0 / max(val_remain_images, 1)}

    # the periodic check only decides whether the forgetting targets hold, so it scores only the check images of the
    # classes they look at: this task's forgotten classes for acc_f, the earlier-forgotten ones only when acc_o is a
    # target. The same acc_f / acc_o as the whole check set at a fraction of its cost (faces 4x20: 180 of 900 images
    # on task 1; 180 instead of 720 on task 4 without an acc_o target); retention is scored once per trial, on the
    # whole set
    checked = checked_classes(task, forgetting)
    forgetting_set = _subset_of_classes(data, check_set, {c for v in checked.values() for c in v})

    reads_probe = probing(forgetting)

    def check(m) -> tuple[bool, dict]:
        correct, total = _accuracies(m, data, forgetting_set, nc, config, device)
        metrics = {k: accuracy(correct, total, v) for k, v in checked.items()}
        if not reads_probe:
            return policy.check_met(metrics), metrics
        if not policy.check_met(metrics):  # the probe is read only once the accuracy targets hold
            return False, metrics
        metrics.update(probe(m))
        return policy.check_met(metrics), metrics

    def result(model, record, trials, info, summary, trainable, total_params, start_weights, progress, t0):
        counts_after = {s: _accuracies(model, data, s, nc, config, device) for s in ("test", "val")}
        test = {**task_metrics(counts_now["test"], counts_after["test"], counts_orig["test"], task, vs_pre, missing),
                **probe(model, "test")}
        row: TaskRow = {
            "task": task.index,
            "setting": f"{len(task.remain) + len(task.forget)}-{len(task.forget)}",
            "forget": [classes[c] for c in task.forget],
            "n_forget": len(task.forget), "n_remain": len(task.remain), "n_old": len(task.old),
            "n_missing": len(task.remain) - len(replayed),
            "missing": [classes[c] for c in task.remain if c not in set(replayed)],
            **test,
            "val": task_metrics(counts_now["val"], counts_after["val"], counts_orig["val"], task, vs_pre, missing),
            "check": {**record["val"], "images": int(check_orig[1].sum()), "train_images": len(extra)},
            "targets": {"spec": policy.spec(config.target), "val": record["targets_met"],
                        "test": policy.met(_brief(test))},
            "trials": trials,
            "chosen_trial": record["trial"],
            "tunable_ratio": tunable_ratio(trainable, total_params),
            "trainable_params": trainable,
            "replay_images": len(remain_idx), "forget_images": len(forget_idx),
            "steps": record["steps"], "steps_all_trials": sum(t["steps"] for t in trials),
            "train_seconds": summary["train_seconds"],
            "wall_seconds": time.perf_counter() - t0,
            "method_info": info,
        }
        if config.audit:
            row["audit"] = _gate(model, start_weights, data, check_set, task, replayed, config, device, progress)
            log.info("task %d: depth gate %s (probe Acc_f %s -> %s, recovery %s%%)", task.index,
                     "met" if row["audit"]["certified"] else "MISSED", row["audit"]["probe_f_before"],
                     row["audit"]["probe_f"], row["audit"]["recovery"])
        return row, counts_after

    return ProblemTask(remain_data=Subset(data.train, remain_idx), forget_data=Subset(data.train, forget_idx),
                       check=check, validate=validate, result=result, train_data=data.train, val_data=data.val,
                       constraint=data_constraint(config, missing))


def _gate(model, start_weights: dict, data: DataBundle, check_set, task: Task, replayed: list[int],
          config: RunConfig, device, progress: bool) -> dict:
    """``--audit``: the cheap depth check of the task on its check images (:func:`gslora.audit.depth_gate`), with
    a model retrained from scratch without the forgotten classes when ``audit_retrain_full``."""
    from .audit import AuditConfig, depth_gate, retrain_full_reference
    from .config import RETRAIN_DEPTH_TARGET

    t0 = time.perf_counter()
    start = copy.deepcopy(model)
    start.load_state_dict(start_weights)
    spec, retrained, retrain_seconds = config.audit_target, None, None
    if config.audit_retrain_full:
        retrained, _ = retrain_full_reference(model, data, task.remain, config.seed, {}, str(device), progress)
        retrain_seconds = time.perf_counter() - t0
        spec = ",".join(p for p in (spec, RETRAIN_DEPTH_TARGET) if p)
    images = _subset_of_classes(data, check_set, set(task.forget) | set(replayed))
    gate = depth_gate(start, model, images, task.forget, replayed, spec, retrained=retrained,
                      config=AuditConfig(seed=config.seed), device=device)
    return {**gate, "seconds": time.perf_counter() - t0, "retrain_seconds": retrain_seconds}


def task_subsets(task: Task, data: DataBundle, config: RunConfig, missing) -> dict[str, list[int]]:
    """The training images one task uses, as indices into ``data.train``: ``replay`` (its remaining classes that keep
    data), ``forget`` (its forgotten classes, plus ``old_forget_shots`` of each earlier-forgotten one), and
    ``check_train`` (up to ``check_train_images`` per class outside those two, added to the validation split as the
    task's check set: looked at to stop and choose, never trained on). Seeded: the same for every trial and run."""
    replayed = [c for c in task.remain if c not in set(missing)]
    replay = select_per_class(data.train.targets, replayed, config.seed, config.replay_ratio, config.shots,
                              minimum=config.min_replay)
    forget = select_per_class(data.train.targets, task.forget, config.seed, config.replay_ratio, config.shots,
                              minimum=config.forget_minimum)
    if config.old_forget_shots and task.old:
        forget += select_per_class(data.train.targets, task.old, config.seed, shots=config.old_forget_shots)
    # the check set every selection looks at: the validation split plus, per class of the task, up to
    # check_train_images training images outside the task's subsets (never trained on in this task; RunConfig)
    check_train = check_images(data.train.targets, [c for c in task.remain + task.forget + task.old
                                                    if c not in missing],
                               set(replay) | set(forget), config.check_train_images if not config.shots else 0,
                               config.seed)
    return {"replay": replay, "forget": forget, "check_train": check_train}


def plan_with_indices(plan: TaskPlan, classes: list[str], data: DataBundle, config: RunConfig) -> dict:
    """The plan as ``plan.json`` and ``results["plan"]`` hold it: per task its classes and the exact training images
    it used (:func:`task_subsets`, indices into the train split) and its missing classes (no replay data); the
    check set is the whole validation split plus ``check_train``. Audits read the images from here."""
    out = plan.to_dict(classes)
    missing = missing_classes(config, plan, classes)
    for task, entry in zip(plan.tasks, out["tasks"]):
        entry["indices"] = task_subsets(task, data, config, missing)
        entry["missing_classes"] = sorted(int(c) for c in set(missing) & set(task.remain))
    out["indices_of"] = "the train split (seeded; check set = the validation split + check_train)"
    return out




def check_images(targets: list[int], classes, exclude: set, per_class: int, seed: int) -> list[int]:
    """Up to ``per_class`` training indices per class outside ``exclude`` (the task's replay and forget subsets),
    seeded; they join the validation split as the check set of the task (``RunConfig.check_train_images``)."""
    if per_class <= 0:
        return []
    wanted = set(int(c) for c in classes)
    by_class: dict[int, list[int]] = {c: [] for c in sorted(wanted)}
    for i, t in enumerate(targets):
        if t in wanted and i not in exclude:
            by_class[t].append(i)
    out = []
    for c, idx in by_class.items():
        perm = np.random.default_rng([seed, 11, c]).permutation(len(idx))
        out.extend(idx[j] for j in sorted(perm[:per_class].tolist()))
    return out


def _subset_of_classes(data: DataBundle, check_set, classes: set) -> Subset:
    """The images of ``check_set`` (``"val"``, or the validation split + a Subset of training images) whose class is
    in ``classes``."""
    if isinstance(check_set, str):
        dataset, labels = data.val, list(data.val.targets)
    else:
        val, extra = check_set.datasets
        dataset, labels = check_set, list(val.targets) + [data.train.targets[i] for i in extra.indices]
    return Subset(dataset, [i for i, t in enumerate(labels) if int(t) in classes])


def _keep_adapter(folder: RunFolder, task_index: int, trial: int, info: dict) -> None:
    """Rename the chosen trial's adapter folder to the task's and delete the other trials' adapters."""
    final = folder.adapter_dir(task_index)
    for path in sorted(final.parent.glob(f"{final.name}.trial*")):
        if path.name == f"{final.name}.trial{trial}":
            if final.exists():
                shutil.rmtree(final)
            path.rename(final)
        else:
            shutil.rmtree(path)
    if "adapter" in info and final.exists():
        info["adapter"] = folder.relative(final)
