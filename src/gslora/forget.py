"""One forgetting run: a model, a data bundle and a config in; per-task results, a final model and a run folder out.

    checkpoint + data → task plan → for each task: prepare (attach LoRA) → train → evaluate → finish (merge)
    → run folder: config.yaml, plan.json, adapters/, final.safetensors (+ .json), results.{json,csv,md}, plots/
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.data import Subset

from . import __version__
from . import distributed as dist
from .config import RunConfig, to_dict
from .data.base import DataBundle
from .data.plan import TaskPlan, make_plan, select_per_class
from .engine import autocast_dtype, train_task
from .errors import GsloraError
from .evaluate import class_counts, drop, h_mean, set_accuracies, tunable_ratio
from .io import atomic_write_json, atomic_write_text
from .methods import Method, TaskContext, get_method
from .models.registry import Classifier, count_parameters

log = logging.getLogger(__name__)

RESULT_FILES = ("results.json", "results.csv", "results.md")


@dataclass
class RunResult:
    results: dict
    model: Classifier
    plan: TaskPlan
    out_dir: Path | None = None

    @property
    def rows(self) -> list[dict]:
        """One dict per task (the ``tasks`` of ``results``)."""
        return self.results["tasks"]


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished run unless ``overwrite``; with it, remove the old run's outputs first."""
    if (out_dir / "results.json").exists() and not overwrite:
        raise GsloraError(f"{out_dir} already holds a finished run (results.json); choose another --out or pass "
                          "--overwrite.")
    if out_dir.exists() and not out_dir.is_dir():
        raise GsloraError(f"output path {out_dir} exists and is not a folder.")
    if overwrite and out_dir.exists():
        for name in (*RESULT_FILES, "final.safetensors", "final.json", "plan.json", "config.yaml"):
            (out_dir / name).unlink(missing_ok=True)
        for name in ("adapters", "plots"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def check_data_matches(classes: list[str], data: DataBundle) -> None:
    if len(data.classes) != len(classes):
        raise GsloraError(f"the data has {len(data.classes)} classes but the model has {len(classes)}; use the data "
                          "the model was trained on.")
    if list(data.classes) != list(classes):
        diff = next(i for i, (a, b) in enumerate(zip(data.classes, classes)) if a != b)
        raise GsloraError(f"data class {diff} is {data.classes[diff]!r} but the model's class {diff} is "
                          f"{classes[diff]!r}; use the data the model was trained on.")


def _accuracies(model, data: DataBundle, split: str, num_classes: int, cfg: RunConfig, device) -> tuple:
    return class_counts(model, getattr(data, split), num_classes, device, cfg.eval_batch_size,
                        margin_at_test=cfg.margin_at_test, num_workers=cfg.num_workers,
                        autocast_dtype=autocast_dtype(cfg.precision))


def _task_metrics(counts_before, counts_after, counts_orig, task, drop_against_pretrained=False) -> dict:
    sets = {"acc_f": task.forget, "acc_r": task.remain, "acc_o": task.old}
    before = set_accuracies(*(counts_orig if drop_against_pretrained else counts_before), sets)
    after = set_accuracies(*counts_after, sets)
    orig = set_accuracies(*counts_orig, sets)
    d = drop(before["acc_f"], after["acc_f"])
    return {
        **after,
        "drop": d,
        "h_mean": h_mean(after["acc_r"], d),
        "before": before,
        "pretrained": {"acc_f": orig["acc_f"], "acc_r": orig["acc_r"]},
        "acc_r_change_vs_pretrained": after["acc_r"] - orig["acc_r"],
    }


def run_forgetting(model: Classifier, classes: list[str], data: DataBundle, config: RunConfig,
                   out_dir: str | Path | None = None, history: list | None = None, overwrite: bool = False,
                   progress: bool = False, method: Method | None = None,
                   source_checkpoint: str | Path | None = None) -> RunResult:
    """Run the task sequence of ``config`` on ``model`` (modified in place and returned as ``result.model``).

    ``source_checkpoint`` (the path the model was loaded from) is recorded so audits can find the original model.
    """
    config.validate()
    method = method or get_method(config.method, **config.method_args)
    check_data_matches(classes, data)
    plan = make_plan(classes, config.tasks, seed=config.seed)
    device = dist.resolve_device(config.device)
    dist.init_from_env(device)
    out = Path(out_dir) if out_dir is not None else None
    writes = out is not None and dist.is_main()
    if writes:
        prepare_out_dir(out, overwrite)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        atomic_write_json(out / "plan.json", plan.to_dict(classes))

    torch.manual_seed(config.seed)
    model = model.to(device)
    original = copy.deepcopy(model).eval().requires_grad_(False)
    total_params = count_parameters(model)
    nc = len(classes)
    counts_orig = {s: _accuracies(model, data, s, nc, config, device) for s in ("test", "val")}
    counts_now = dict(counts_orig)
    rows, history = [], list(history or [])
    run_start = time.perf_counter()
    for position, task in enumerate(plan.tasks):
        t0 = time.perf_counter()
        remain_idx = select_per_class(data.train.targets, task.remain, config.seed, config.replay_ratio, config.shots)
        forget_idx = select_per_class(data.train.targets, task.forget, config.seed, config.replay_ratio, config.shots)
        if config.old_forget_shots and task.old:
            forget_idx += select_per_class(data.train.targets, task.old, config.seed, shots=config.old_forget_shots)
        ctx = TaskContext(
            task=task, position=position, num_tasks=len(plan.tasks), num_classes=nc, config=config, device=device,
            remain_data=Subset(data.train, remain_idx), forget_data=Subset(data.train, forget_idx),
            original_model=original, out_dir=out if writes else None, progress=progress,
        )
        work = method.prepare(model, ctx)
        trainable = sum(p.numel() for p in method.trainable_parameters(work))
        summary = train_task(work, method, ctx) if method.trains else {"steps": 0, "train_seconds": 0.0}
        model, info = method.finish(work, ctx)
        model.eval()
        vs_pre = method.drop_against_pretrained
        counts_after = {s: _accuracies(model, data, s, nc, config, device) for s in ("test", "val")}
        row = {
            "task": task.index,
            "setting": f"{len(task.remain) + len(task.forget)}-{len(task.forget)}",
            "forget": [classes[c] for c in task.forget],
            "n_forget": len(task.forget), "n_remain": len(task.remain), "n_old": len(task.old),
            **_task_metrics(counts_now["test"], counts_after["test"], counts_orig["test"], task, vs_pre),
            "val": _task_metrics(counts_now["val"], counts_after["val"], counts_orig["val"], task, vs_pre),
            "tunable_ratio": tunable_ratio(info.get("trainable_params", trainable), total_params),
            "trainable_params": info.get("trainable_params", trainable),
            "replay_images": len(remain_idx), "forget_images": len(forget_idx),
            "steps": summary["steps"], "train_seconds": summary["train_seconds"],
            "wall_seconds": time.perf_counter() - t0,
            **{k: v for k, v in info.items() if k != "trainable_params"},
        }
        rows.append(row)
        counts_now = counts_after
        history.append({"task": task.index, "method": method.name, "forgotten": row["forget"]})
        log.info("task %d: acc_f %.2f acc_r %.2f acc_o %s H %.2f", task.index, row["acc_f"], row["acc_r"],
                 row["acc_o"], row["h_mean"] or 0.0)

    results = {
        "gslora_version": __version__,
        "method": method.describe(),
        "config": to_dict(config),
        "data": data.describe(),
        "model": {**model.config, "parameters": total_params},
        "device": str(device),
        "source_checkpoint": str(Path(source_checkpoint).resolve()) if source_checkpoint else None,
        "plan": plan.to_dict(classes),
        "tasks": rows,
        "wall_seconds": time.perf_counter() - run_start,
    }
    if writes:
        from .models.checkpoint import save_checkpoint
        from .report import write_reports

        save_checkpoint(model, out / "final.safetensors", classes, history)
        results["final_checkpoint"] = "final.safetensors"
        write_reports(out, results)  # results.json is written last: its presence marks a finished run
    return RunResult(results=results, model=model, plan=plan, out_dir=out)
