"""The detection losses of the paper's detection protocol, on top of the matcher and set loss transformers ships for
DETR-family models.

- retention: the standard DETR set loss (Hungarian matching; focal classification for Deformable DETR, CE with the
  no-object weight for DETR; L1; GIoU), summed over the final and the auxiliary decoder layers, with the original
  Deformable DETR weights 2 · L_cls + 5 · L1 + 2 · GIoU;
- forgetting, on images whose targets hold only the forget-class boxes: the same matching, then
  ``max(0, BND − 2 · L_cls)`` while the box terms keep their usual positive weights (5 · L1 + 2 · GIoU).

L_cls of the forgetting term is the classification loss of the *matched* queries on their forget labels (the
positive focal term of the forget-class logit; DETR: the CE of the matched queries). The full focal loss also holds
the "no object" terms of every other query and class: maximising it would reward raising every query's score on the
remaining classes, i.e. false positives everywhere, which is not forgetting.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .models import arch_of, unwrap

CLS_WEIGHT, L1_WEIGHT, GIOU_WEIGHT = 2.0, 5.0, 2.0  # Deformable DETR's cls_loss_coef, bbox_loss_coef, giou_loss_coef


@contextmanager
def _captured(inner: nn.Module, store: dict):
    """Swap the model's loss function for one that keeps the per-layer outputs transformers hands it."""
    from transformers.loss.loss_for_object_detection import _set_aux_loss

    def capture(logits, labels, device, pred_boxes, config, outputs_class=None, outputs_coord=None, **_):
        aux = _set_aux_loss(outputs_class, outputs_coord) if outputs_class is not None else []
        store["layers"] = [*aux, {"logits": logits, "pred_boxes": pred_boxes}]
        return None, None, None

    had = "_loss_function" in inner.__dict__
    old = inner.__dict__.get("_loss_function")
    inner.loss_function = capture
    try:
        yield
    finally:
        if had:
            inner.loss_function = old
        else:
            del inner._loss_function


def layer_outputs(model: nn.Module, pixel_values: torch.Tensor) -> list[dict]:
    """One forward pass; the ``{"logits", "pred_boxes"}`` of every decoder layer, the final layer last (only the
    final one when the model's config has ``auxiliary_loss`` off)."""
    inner = unwrap(model)
    store: dict = {}
    with _captured(inner, store):
        out = model(pixel_values=pixel_values, labels=[])
    return store.get("layers") or [{"logits": out.logits, "pred_boxes": out.pred_boxes}]


def set_criterion(model: nn.Module) -> nn.Module:
    """transformers' own matcher + set loss for the model's family (Deformable DETR: sigmoid focal; DETR: softmax CE
    with the no-object weight)."""
    from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher, DeformableDetrImageLoss
    from transformers.loss.loss_for_object_detection import HungarianMatcher, ImageLoss

    cfg = unwrap(model).config
    if arch_of(model) == "deformable_detr":
        matcher = DeformableDetrHungarianMatcher(class_cost=cfg.class_cost, bbox_cost=cfg.bbox_cost,
                                                 giou_cost=cfg.giou_cost)
        return DeformableDetrImageLoss(matcher=matcher, num_classes=cfg.num_labels, focal_alpha=cfg.focal_alpha,
                                       losses=["labels", "boxes"])
    matcher = HungarianMatcher(class_cost=cfg.class_cost, bbox_cost=cfg.bbox_cost, giou_cost=cfg.giou_cost)
    return ImageLoss(matcher=matcher, num_classes=cfg.num_labels, eos_coef=cfg.eos_coefficient,
                     losses=["labels", "boxes"])


def _num_boxes(targets: list[dict]) -> float:
    return max(1.0, float(sum(len(t["class_labels"]) for t in targets)))


def set_loss(criterion: nn.Module, layers: list[dict], targets: list[dict],
             cls_weight: float = CLS_WEIGHT) -> tuple[torch.Tensor, dict]:
    """The DETR set loss summed over layers: Σ_layers 2·L_cls + 5·L1 + 2·GIoU (``cls_weight`` replaces the 2 of
    L_cls; only pre-training changes it). Returns (loss, per-term sums)."""
    n = _num_boxes(targets)
    cls = l1 = giou = 0.0
    for out in layers:
        idx = criterion.matcher(out, targets)
        cls = cls + criterion.loss_labels(out, targets, idx, n)["loss_ce"]
        boxes = criterion.loss_boxes(out, targets, idx, n)
        l1, giou = l1 + boxes["loss_bbox"], giou + boxes["loss_giou"]
    total = cls_weight * cls + L1_WEIGHT * l1 + GIOU_WEIGHT * giou
    return total, {"cls": _f(cls), "l1": _f(l1), "giou": _f(giou)}


def matched_cls_loss(criterion: nn.Module, out: dict, targets: list[dict], indices, num_boxes: float,
                     focal: bool) -> torch.Tensor:
    """The classification loss of the matched queries on their own labels only (sum / num_boxes).

    ``focal``: α(1−p)^γ · −log p of the label's sigmoid (the positive focal term, α = focal_alpha, γ = 2);
    else the softmax CE of the label."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    labels = torch.cat([t["class_labels"][j] for t, (_, j) in zip(targets, indices)])
    if labels.numel() == 0:
        return out["logits"].sum() * 0.0
    logits = out["logits"][batch_idx, src_idx]  # (n, C) or (n, C + 1)
    if focal:
        z = logits.gather(1, labels[:, None]).squeeze(1)
        p = z.sigmoid()
        alpha = getattr(criterion, "focal_alpha", 0.25)
        per_box = alpha * (1 - p) ** 2 * F.binary_cross_entropy_with_logits(z, torch.ones_like(z), reduction="none")
    else:
        per_box = F.cross_entropy(logits, labels, reduction="none")
    return per_box.sum() / num_boxes


def bounded_detection_forget(l_cls: torch.Tensor, bound: float, cls_weight: float = CLS_WEIGHT) -> torch.Tensor:
    """max(0, BND − 2 · L_cls): pushes the forget boxes' classification loss up until 2 · L_cls reaches ``bound``."""
    return F.relu(bound - cls_weight * l_cls)


def overlapping_indices(out: dict, targets: list[dict], iou: float = 0.5):
    """Per image, every (query, target box) pair whose predicted box overlaps the target with IoU ≥ ``iou``."""
    from transformers.image_transforms import center_to_corners_format
    from transformers.loss.loss_for_object_detection import box_iou

    pairs = []
    for b, t in enumerate(targets):
        if len(t["boxes"]) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            pairs.append((empty, empty))
            continue
        with torch.no_grad():
            ious, _ = box_iou(center_to_corners_format(out["pred_boxes"][b]), center_to_corners_format(t["boxes"]))
        q, j = torch.nonzero(ious >= iou, as_tuple=True)
        pairs.append((q.cpu(), j.cpu()))
    return pairs


def forget_loss(criterion: nn.Module, layers: list[dict], targets: list[dict], bound: float,
                focal: bool, queries: str = "matched") -> tuple[torch.Tensor, dict]:
    """The forgetting loss of the paper's detection protocol on a forget batch (targets: forget-class boxes only):
    Hungarian matching as in the set loss, L_cls = Σ_layers matched-query classification loss, then
    max(0, BND − 2·L_cls) + 5·L1 + 2·GIoU.

    ``queries="overlapping"``: L_cls also covers every other query whose box overlaps a forget box (IoU ≥ 0.5), so
    the queries that would take over the object once the matched one lets go are pushed down together."""
    n = _num_boxes(targets)
    cls = l1 = giou = 0.0
    for out in layers:
        idx = criterion.matcher(out, targets)
        cls_idx = idx if queries == "matched" else overlapping_indices(out, targets)
        cls = cls + matched_cls_loss(criterion, out, targets, cls_idx, n, focal)
        boxes = criterion.loss_boxes(out, targets, idx, n)
        l1, giou = l1 + boxes["loss_bbox"], giou + boxes["loss_giou"]
    hinge = bounded_detection_forget(cls, bound)
    total = hinge + L1_WEIGHT * l1 + GIOU_WEIGHT * giou
    return total, {"forget_cls": _f(cls), "forget_hinge": _f(hinge), "forget_box": _f(L1_WEIGHT * l1
                                                                                             + GIOU_WEIGHT * giou)}


def _f(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
