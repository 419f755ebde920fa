"""Detection as a problem of the one task loop (:mod:`gslora.problem`, :func:`gslora.forget.run_forgetting`): COCO AP
per category, AP_f / AP_r / AP_o per task on the test split, the check set the validation split.

    run folder (gslora.rundir.RunFolder, as classification's, with the detector's own final model and report):
      config.yaml  plan.json  state/ (while unfinished)  adapters/task<i>/
      final/                 the final detector (save_pretrained folder + gslora_detection.json, its history)
      plots/boxes.png        the same test images before and after each task, with predicted boxes
      results.md             Table-2 layout;  results.json (written last: it marks a finished run)

Subsets: a seeded ``replay_ratio`` of the training images is the run's image pool (the same for every task); a task
trains on the pool's images holding a box of its remaining categories (the replay subset, other boxes removed) and
on those holding a box of its forgotten ones (the forget subset). plan.json records both, as indices into the train
split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .._version import __version__
from ..config import to_dict
from ..errors import GsloraError
from ..files import atomic_write_text
from ..methods import get_problem_method
from ..missing import MissingCheck
from ..policy import TargetPolicy
from ..problem import Problem, ProblemTask
from ..rundir import RunFolder
from . import methods as _methods  # noqa: F401 (registers the detection methods)
from .config import DetectionConfig, parse_detection_target
from .data import DetectionData
from .evaluate import det_task_metrics, per_class_ap, predict, sets_from_classes
from .models import freeze_batch_norm, save_detector

log = logging.getLogger(__name__)

FINAL = "final"  # the run folder's final detector (save_pretrained folder)


def available_images(n: int, ratio: float, seed: int) -> list[int]:
    """The training images the run may use: a seeded ``ratio`` of them (at least one), the same for every task."""
    perm = np.random.default_rng([seed, 9]).permutation(n)
    return sorted(perm[: max(1, int(round(ratio * n)))].tolist())


def _ap(per_class, classes) -> float | None:
    return sets_from_classes(per_class, {"s": classes})["s"]["ap"]


class Detection(Problem):
    """Object detection (DETR / Deformable DETR): ``data`` a :class:`~gslora.detection.data.DetectionData`, the
    config a :class:`~gslora.detection.config.DetectionConfig`, the methods those of the detection registry.
    ``figure_images``: test images shown in ``plots/boxes.png``."""

    name = "detection"
    keeps_record = False

    def __init__(self, figure_images: int = 4):
        self.figure_images = figure_images
        self.pictures: list = []  # (label, predictions on the figure's images) before the run and after each task

    # --- settings ---------------------------------------------------------------------------------------------------
    def resolve(self, config: DetectionConfig) -> DetectionConfig:
        if not isinstance(config, DetectionConfig):
            raise GsloraError("a detection run takes a DetectionConfig (gslora.detection.config.detection_config), "
                              f"not a {type(config).__name__}.")
        return config.validate()

    def method(self, config: DetectionConfig):
        return get_problem_method("detection", config.method, **config.method_args)

    def policy(self, config: DetectionConfig) -> TargetPolicy:
        return TargetPolicy(parse_detection_target(config.target), config.max_trials, config.target_checks)

    # --- inputs -----------------------------------------------------------------------------------------------------
    def check_inputs(self, classes: list[str], data: DetectionData) -> None:
        if list(classes) != list(data.classes):
            raise GsloraError(f"the data's categories ({', '.join(data.classes[:5])}, ...) differ from the model's "
                              f"({', '.join(classes[:5])}, ...); use the data the detector was trained on.")

    def check_images(self, data: DetectionData, classes: list[str]) -> None:
        pass  # a category without boxes in a split scores None there; the plan checks each task's training images

    def missing_check(self, model, config) -> MissingCheck:
        return MissingCheck(None, None, skipped="a detector has no cut head (--head-subset is classification's)")

    def prepare(self, model, device):
        return freeze_batch_norm(model).to(device)  # a live batch norm would drift in train mode

    def scores(self, model, data: DetectionData, split, num_classes: int, config, device) -> list:
        dataset = getattr(data, split) if isinstance(split, str) else split
        return per_class_ap(model, dataset, device, config.eval_batch_size)

    def _shown(self, data: DetectionData):
        return data.test.subset(range(min(self.figure_images, len(data.test))))

    def start(self, model, data: DetectionData, config, device) -> None:
        self.pictures = [("pre-trained", predict(model, self._shown(data), device))]

    def plan_record(self, plan, classes: list[str], data: DetectionData, config) -> dict:
        out = plan.to_dict(classes)
        pool = available_images(len(data.train), config.replay_ratio, config.seed)
        labels = [set(int(c) for c in data.train.images[i].labels) for i in range(len(data.train))]
        for task, entry in zip(plan.tasks, out["tasks"]):
            replay = [i for i in pool if labels[i] & set(task.remain)]
            forget = [i for i in pool if labels[i] & set(task.forget)]
            if not forget or not replay:
                which = "forget" if not forget else "remaining"
                raise GsloraError(f"task {task.index}: the {len(pool)} available training images hold no box of the "
                                  f"{which} classes; raise replay_ratio.")
            entry["indices"] = {"replay": replay, "forget": forget, "check_train": []}
            entry["missing_classes"] = []
        out["indices_of"] = ("the train split (a seeded replay_ratio of its images; each task trains on those holding "
                             "a box of its classes, the other boxes removed; check set = the validation split)")
        return out

    # --- one task ---------------------------------------------------------------------------------------------------
    def task(self, model, task, classes, data: DetectionData, config, device, original, counts_orig, counts_now,
             used: dict, policy: TargetPolicy, method, plan) -> ProblemTask:
        nc = len(classes)
        sets = {"forget": task.forget, "remain": task.remain, "old": task.old, "all": range(nc)}
        remain_data = data.train.subset(used["replay"]).restrict(task.remain)
        forget_data = data.train.subset(used["forget"]).restrict(task.forget)
        before_f = _ap(counts_now["val"], task.forget)  # the check set's AP_f at the task's start

        def share(ap):
            return None if ap is None or not before_f else 100.0 * ap / before_f

        def check(m) -> tuple[bool, dict]:
            per_class = self.scores(m, data, "val", nc, config, device)
            metrics = {"ap_f": _ap(per_class, task.forget), "ap_o": _ap(per_class, task.old) if task.old else None}
            metrics["ap_f_share"] = share(metrics["ap_f"])
            return policy.check_met(metrics), metrics

        def validate(m) -> dict:
            after = self.scores(m, data, "val", nc, config, device)
            metrics = det_task_metrics(sets_from_classes(counts_now["val"], sets), sets_from_classes(after, sets),
                                       sets_from_classes(counts_orig["val"], sets))
            return {**metrics, "ap_f_share": share(metrics["ap_f"])}

        def result(model, record, trials, info, summary, trainable, total_params, start_weights, progress, t0):
            after = {s: self.scores(model, data, s, nc, config, device) for s in ("test", "val")}
            test = det_task_metrics(sets_from_classes(counts_now["test"], sets), sets_from_classes(after["test"], sets),
                                    sets_from_classes(counts_orig["test"], sets))
            test_share = None if not test["ap_f_before"] or test["ap_f"] is None else \
                100.0 * test["ap_f"] / test["ap_f_before"]
            self.pictures.append((f"after task {task.index}", predict(model, self._shown(data), device)))
            row = {
                "task": task.index, "setting": f"{nc - len(task.old)}-{len(task.forget)}", "n_old": len(task.old),
                "forget": [classes[c] for c in task.forget], **test,
                "ap_all": sets_from_classes(after["test"], sets)["all"]["ap"],
                "class_ap": {classes[c]: (r or {}).get("ap") for c, r in enumerate(after["test"])},
                "val": record["val"], "targets": {"spec": config.target, "val": record["targets_met"],
                                                  "test": policy.met({**test, "ap_f_share": test_share})},
                "trials": trials, "chosen_trial": record["trial"],
                "tunable_ratio": 100.0 * trainable / total_params, "trainable_params": trainable,
                "replay_images": len(remain_data), "forget_images": len(forget_data),
                "steps": record["steps"], "steps_all_trials": sum(t["steps"] for t in trials),
                "stopped_early": summary["stopped_early"], "checks": summary["checks"],
                "train_seconds": summary["train_seconds"], "wall_seconds": time.perf_counter() - t0,
                "method_info": info,
            }
            return row, after

        return ProblemTask(remain_data=remain_data, forget_data=forget_data, check=check, validate=validate,
                           result=result, train_data=data.train, val_data=data.val)

    def log_task(self, row: dict) -> str:
        return f"task {row['task']}: AP_f {row['ap_f']} AP_r {row['ap_r']}"

    # --- resume -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"pictures": [[label, dets] for label, dets in self.pictures]}

    def load_state_dict(self, state: dict) -> None:
        self.pictures = [(label, dets) for label, dets in state.get("pictures", [])]

    # --- the end ----------------------------------------------------------------------------------------------------
    def results(self, *, model, method, config, data, classes, device, source_checkpoint, plan, plan_record, rows,
                wall_seconds, warnings, total_params, missing, missing_before, record, counts_orig) -> dict:
        nc = len(classes)
        return {
            "gslora_version": __version__, "problem": self.name, "setting": "detection",
            "method": method.describe(), "config": to_dict(config), "data": data.describe(),
            "classes": list(classes), "device": str(device),
            "model": {"arch": model.config.model_type, "parameters": total_params,
                      "encoder_layers": model.config.encoder_layers, "decoder_layers": model.config.decoder_layers},
            "source_checkpoint": str(Path(source_checkpoint).resolve()) if source_checkpoint else None,
            "plan": plan_record,
            "pretrained": {"ap_all": _ap(counts_orig["test"], range(nc)),
                           "class_ap": {classes[c]: (r or {}).get("ap") for c, r in enumerate(counts_orig["test"])}},
            "tasks": rows, "wall_seconds": wall_seconds, "warnings": warnings,
        }

    def finish(self, folder: RunFolder, results: dict, model, classes, history, record, data) -> None:
        from .report import boxes_figure, results_markdown

        def write(path: Path) -> None:
            save_detector(model, path / FINAL, classes, extra={"history": history, "image_size": data.train.image_size})
            (path / "plots").mkdir(exist_ok=True)
            boxes_figure(self._shown(data), self.pictures, classes, path / "plots" / "boxes.png")
            results["final_checkpoint"] = FINAL
            results["plots"] = ["plots/boxes.png"]
            atomic_write_text(path / "results.md", results_markdown(results))

        folder.finish_with(results, write)

