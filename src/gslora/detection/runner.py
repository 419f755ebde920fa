"""The detection forgetting runner: a detector, COCO-style data and a config in; per-task AP_r / AP_f / AP_o, H-Mean,
a final model and a run folder out. Same plan, same engine, same method interface as classification.

    RUN/
      config.yaml  plan.json
      adapters/task<i>/      GS-LoRA's per-task adapter (PEFT format; groups left exactly zero are not stored)
      final/                 the final detector (save_pretrained folder + gslora_detection.json)
      plots/boxes.png        the same test images before and after each task, with predicted boxes
      results.md             Table-2 layout;  results.json (written last: it marks a finished run)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..data.plan import make_plan
from ..distributed import resolve_device
from ..engine import train_task
from ..errors import GsloraError
from ..files import atomic_write_json, atomic_write_text
from ..methods.base import Method, TaskContext
from .data import DetectionData
from .evaluate import det_task_metrics, per_class_ap, predict, sets_from_classes
from .methods import get_detection_method
from .models import count_parameters, freeze_batch_norm, save_detector

log = logging.getLogger(__name__)


@dataclass
class DetRunConfig:
    """One detection forgetting run. The engine reads the training fields by the same names as a RunConfig."""

    data: str = "digits"  # "digits" (bundled) or a COCO-format folder
    tasks: Any = "4x2"  # "NxK" (forget backwards through the seeded class order) or class lists "a,b;c"
    method: str = "gslora"  # gslora | finetune | l2
    method_args: dict = field(default_factory=dict)
    seed: int = 1337
    max_steps: int = 150  # step budget per task (training stops earlier at the validation target)
    epochs: int = 1  # used only when max_steps is 0
    batch_size: int = 8  # remain batch and forget batch size
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_epochs: int = 0
    grad_clip: float = 0.1  # DETR's max gradient norm (the paper's detection protocol)
    replay_ratio: float = 0.1  # fraction of the training images available to the run (replay and forget images)
    eval_every: int = 25  # steps between validation checks (0: train the whole budget)
    target_checks: int = 1  # consecutive checks the forgetting target must hold before training stops
    forget_target: float = 0.2  # stop once validation AP_f ≤ this share of its value before the task
    image_size: int = 64  # side the images are resized to (the model's input)
    device: str = "auto"
    precision: str = "fp32"
    eval_batch_size: int = 32
    num_workers: int = 0
    augment: bool = False  # the engine's augmentation moves pixels, not boxes: always off for detection
    checkpoint_every: int = 0

    def validate(self) -> DetRunConfig:
        if not 0 < self.replay_ratio <= 1:
            raise GsloraError(f"replay_ratio must be in (0, 1], got {self.replay_ratio}.")
        for name in ("batch_size", "eval_batch_size", "image_size", "target_checks"):
            if getattr(self, name) < 1:
                raise GsloraError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("max_steps", "eval_every", "grad_clip", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise GsloraError(f"{name} must be 0 or more, got {getattr(self, name)}.")
        if self.max_steps == 0 and self.epochs < 1:
            raise GsloraError("with max_steps 0, epochs must be at least 1.")
        if self.lr <= 0:
            raise GsloraError(f"lr must be > 0, got {self.lr}.")
        if self.augment:
            raise GsloraError("augment must be false for detection (the augmentation does not move the boxes).")
        return self


@dataclass
class DetRunResult:
    results: dict  # what results.json holds
    model: torch.nn.Module  # the final (merged) detector

    @property
    def rows(self) -> list[dict]:
        return self.results["tasks"]


def available_images(n: int, ratio: float, seed: int) -> list[int]:
    """The training images the run may use: a seeded ``ratio`` of them (at least one), the same for every task."""
    perm = np.random.default_rng([seed, 9]).permutation(n)
    return sorted(perm[: max(1, int(round(ratio * n)))].tolist())


def run_detection_forgetting(model: torch.nn.Module, classes: list[str], data: DetectionData, config: DetRunConfig,
                             out_dir: str | Path | None = None, overwrite: bool = False, progress: bool = False,
                             method: Method | None = None, source_checkpoint: str | Path | None = None,
                             figure_images: int = 4, history: list | None = None) -> DetRunResult:
    """Run the task sequence of ``config`` on ``model`` (modified in place). The results are also ``results.json``
    when ``out_dir`` is given. ``history``: the detector's earlier requests (its sidecar's ``history``); their
    categories stay forgotten (never replayed, scored as AP_o, not named again) and the saved history continues it."""
    config.validate()
    method = method or get_detection_method(config.method, **config.method_args)
    if list(classes) != list(data.classes):
        raise GsloraError(f"the data's categories ({', '.join(data.classes[:5])}, ...) differ from the model's "
                          f"({', '.join(classes[:5])}, ...); use the data the detector was trained on.")
    history = list(history or [])
    earlier = list(dict.fromkeys(c for h in history for c in h.get("forgotten", [])))
    unknown = [c for c in earlier if c not in classes]
    if unknown:
        raise GsloraError(f"the detector's history names {unknown[0]!r} as forgotten, but it has no such category.")
    plan = make_plan(classes, config.tasks, seed=config.seed, forgotten=[classes.index(c) for c in earlier])
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None:
        if (folder / "results.json").exists() and not overwrite:
            raise GsloraError(f"{folder} holds a finished run; choose another --out or pass --overwrite.")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
        atomic_write_json(folder / "plan.json", plan.to_dict(classes))
    device = resolve_device(config.device)
    model = freeze_batch_norm(model).to(device)  # a live batch norm would drift in train mode
    total_params = count_parameters(model)
    nc = len(classes)
    pool = data.train.subset(available_images(len(data.train), config.replay_ratio, config.seed))
    start = time.perf_counter()

    def evaluate(m, split="test"):
        return per_class_ap(m, getattr(data, split), device, config.eval_batch_size)

    test_orig = evaluate(model)
    checking = bool(config.eval_every)  # validation AP is only needed for the stopping checks
    test_now, val_now = test_orig, (evaluate(model, "val") if checking else None)
    shown = data.test.subset(range(min(figure_images, len(data.test))))
    pictures = [("pre-trained", predict(model, shown, device))]
    rows = []
    for position, task in enumerate(plan.tasks):
        sets = {"forget": task.forget, "remain": task.remain, "old": task.old, "all": range(nc)}
        remain_data, forget_data = pool.restrict(task.remain), pool.restrict(task.forget)
        if len(forget_data) == 0 or len(remain_data) == 0:
            which = "forget" if len(forget_data) == 0 else "remaining"
            raise GsloraError(f"task {task.index}: the {len(pool)} available training images hold no box of the "
                              f"{which} classes; raise replay_ratio.")
        val_before_f = sets_from_classes(val_now, {"f": task.forget})["f"]["ap"] if checking else None

        def check(m, forget=task.forget, before=val_before_f):
            ap = sets_from_classes(evaluate(m, "val"), {"f": forget})["f"]["ap"]
            met = before is None or (ap is not None and ap <= config.forget_target * before)
            return met, {"val_ap_f": ap}

        adapter_dir = folder / "adapters" / f"task{task.index}" if folder is not None else None
        ctx = TaskContext(task=task, position=position, num_tasks=len(plan.tasks), num_classes=nc, config=config,
                          device=device, remain_data=remain_data, forget_data=forget_data, out_dir=folder,
                          progress=progress, adapter_dir=adapter_dir, train_data=pool, val_data=data.val)
        t0 = time.perf_counter()
        model = method.prepare(model, ctx)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        summary = train_task(model, method, ctx, check=check if checking else None)
        model, info = method.finish(model, ctx)
        model.eval()
        test_after, val_now = evaluate(model), (evaluate(model, "val") if checking else None)
        metrics = det_task_metrics(sets_from_classes(test_now, sets), sets_from_classes(test_after, sets),
                                   sets_from_classes(test_orig, sets))
        test_now = test_after
        pictures.append((f"after task {task.index}", predict(model, shown, device)))
        rows.append({
            "task": task.index, "setting": f"{nc - len(task.old)}-{len(task.forget)}", "n_old": len(task.old),
            "forget": [classes[c] for c in task.forget], **metrics,
            "ap_all": sets_from_classes(test_after, sets)["all"]["ap"],
            "class_ap": {classes[c]: (r or {}).get("ap") for c, r in enumerate(test_after)},
            "tunable_ratio": 100.0 * trainable / total_params, "trainable_params": trainable,
            "replay_images": len(remain_data), "forget_images": len(forget_data),
            "steps": summary["steps"], "stopped_early": summary["stopped_early"], "checks": summary["checks"],
            "train_seconds": summary["train_seconds"], "wall_seconds": time.perf_counter() - t0, "method_info": info,
        })
        log.info("task %d: AP_f %s AP_r %s", task.index, metrics["ap_f"], metrics["ap_r"])
    results = {
        "setting": "detection", "method": method.describe(), "config": dataclasses.asdict(config),
        "data": data.describe(), "classes": list(classes), "device": str(device),
        "model": {"arch": model.config.model_type, "parameters": total_params,
                  "encoder_layers": model.config.encoder_layers, "decoder_layers": model.config.decoder_layers},
        "source_checkpoint": str(source_checkpoint) if source_checkpoint else None,
        "plan": plan.to_dict(classes),
        "pretrained": {"ap_all": sets_from_classes(test_orig, {"a": range(nc)})["a"]["ap"],
                       "class_ap": {classes[c]: (r or {}).get("ap") for c, r in enumerate(test_orig)}},
        "tasks": rows, "wall_seconds": time.perf_counter() - start,
    }
    if folder is not None:
        from .report import boxes_figure, results_markdown

        history += [{"task": r["task"], "method": method.name, "forgotten": r["forget"]} for r in rows]
        save_detector(model, folder / "final", classes,
                      extra={"history": history, "image_size": data.train.image_size})
        (folder / "plots").mkdir(exist_ok=True)
        boxes_figure(shown, pictures, classes, folder / "plots" / "boxes.png")
        atomic_write_text(folder / "results.md", results_markdown(results))
        atomic_write_json(folder / "results.json", results)
    return DetRunResult(results=results, model=model)
