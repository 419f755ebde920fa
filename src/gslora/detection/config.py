"""A detection run's config: :class:`~gslora.config.RunConfig` plus the two settings only detection has
(``grad_clip``, ``image_size``), with the detection defaults of ``configs/detection.yaml`` (:func:`detection_config`).

Targets on detection (``target``, read by the same policy as classification's, :mod:`gslora.policy`), on the check
set (the validation split), AP in points (COCO AP .50:.95, %):

- ``ap_f<=N``: AP of the categories forgotten in this task (a forgetting target: training stops once it holds);
- ``ap_f_share<=N``: that AP as % of its value before the task (a forgetting target; the default, ``ap_f_share<=20``,
  is the paper's "AP_f at most 20% of what it was");
- ``ap_o<=N``: AP of the categories forgotten in earlier tasks (a forgetting target);
- ``ap_r_drop<=N``: points the remaining categories' AP lies below the pre-trained detector's (retention: a trial
  missing it is retried at half the lr when ``max_trials`` > 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import RunConfig, from_dict, parse_target
from ..errors import GsloraError
from ..presets import packaged_yaml

DETECTION_TARGETS = {
    "ap_f": "AP (points) of the categories forgotten in this task; a forgetting target",
    "ap_f_share": "AP of the categories forgotten in this task as % of its value before the task; a forgetting target",
    "ap_o": "AP (points) of the categories forgotten in earlier tasks; a forgetting target",
    "ap_r_drop": "points the remaining categories' AP lies below the pre-trained detector's; a retention target",
}
# RunConfig settings a detection run has no use for: a value other than RunConfig's default is refused
NOT_FOR_DETECTION = ("shots", "missing_ratio", "missing_classes", "old_forget_shots", "audit", "audit_retrain_full",
                     "margin_at_test", "preprocessing", "missing_check_data", "check_train_images", "mask_outputs",
                     "augment", "min_forget")


@dataclass
class DetectionConfig(RunConfig):
    """One detection forgetting run: every RunConfig key (see ``gslora list --config``) plus these two. Build it with
    :func:`detection_config` for the detection defaults (``configs/detection.yaml``)."""

    grad_clip: float = 0.1  # DETR's max gradient norm (the paper's detection protocol); 0: no clipping
    image_size: int = 64  # side the images are resized to (the model's input)

    def validate(self) -> DetectionConfig:
        RunConfig.validate(dataclasses.replace(self, target=""))  # RunConfig's checks; the target is detection's
        parse_detection_target(self.target)
        defaults = RunConfig()
        for name in NOT_FOR_DETECTION:
            allowed = DEFAULTS_OFF[name] if name in DEFAULTS_OFF else getattr(defaults, name)
            if getattr(self, name) != allowed:
                raise GsloraError(f"{name} = {getattr(self, name)!r} does not apply to detection runs (detection "
                                  f"takes {allowed!r}; build the config with detection_config()).")
        if self.grad_clip < 0:
            raise GsloraError(f"grad_clip must be 0 or more, got {self.grad_clip}.")
        if self.image_size < 1:
            raise GsloraError(f"image_size must be at least 1, got {self.image_size}.")
        for name in ("epochs", "max_steps", "batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs"):
            if getattr(self, name) is None:
                raise GsloraError(f"{name} must be set for a detection run (detection_config() sets every one).")
        return self


# the values configs/detection.yaml gives the classification-only settings (off)
DEFAULTS_OFF = {"augment": False, "check_train_images": 0, "mask_outputs": False}


def detection_defaults() -> dict:
    """``configs/detection.yaml``: the detection defaults over RunConfig's."""
    return packaged_yaml("detection.yaml")


def detection_config(settings: dict | None = None, **overrides) -> DetectionConfig:
    """A validated :class:`DetectionConfig`: the detection defaults, then ``settings``, then keyword overrides."""
    data = {**detection_defaults(), **(settings or {}), **overrides}
    return from_dict(DetectionConfig, data, where="detection run config").validate()


def parse_detection_target(text: str) -> dict[str, float]:
    """``"ap_f_share<=20,ap_r_drop<=3"`` → ``{"ap_f_share": 20.0, "ap_r_drop": 3.0}`` (upper bounds; "": none)."""
    return parse_target(text, DETECTION_TARGETS, "detection target", "ap_f_share<=20,ap_r_drop<=3")
