"""COCO bbox AP restricted to class sets (AP_r, AP_f, AP_o), via pycocotools.

``predict`` turns the detector's outputs into COCO detections in each image's own pixels (Deformable DETR: the top
100 (query, class) pairs by sigmoid score, as its post-processing does; DETR: each query's best class by softmax);
``coco_eval`` runs pycocotools' COCOeval once over every category and ``set_ap`` averages its precision table over a
subset of categories exactly as ``COCOeval.summarize`` averages over all of them, so AP of a set is the COCO AP of
the annotations restricted to that set. pycocotools was picked over torchmetrics (whose COCO backend is pycocotools
or faster-coco-eval anyway) for having no further dependency; on the demo's 300 test images one evaluation takes
well under a second.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..evaluate import h_mean
from .data import DetectionSet
from .models import arch_of


@torch.no_grad()
def predict(model: nn.Module, dataset: DetectionSet, device: torch.device | str = "cpu", batch_size: int = 32,
            top_k: int = 100) -> list[dict]:
    """COCO-style detections ({image_id, category_id, bbox [x, y, w, h], score}) for every image of ``dataset``."""
    was_training = model.training
    model.eval()
    focal = arch_of(model) == "deformable_detr"
    dets: list[dict] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    start = 0
    for x, _ in loader:
        out = model(pixel_values=x.to(device))
        logits, boxes = out.logits.float().cpu(), out.pred_boxes.float().cpu()
        for b in range(x.shape[0]):
            im = dataset.images[start + b]
            if focal:
                prob = logits[b].sigmoid()  # (Q, C)
                k = min(top_k, prob.numel())
                scores, flat = prob.flatten().topk(k)
                queries, labels = flat // prob.shape[1], flat % prob.shape[1]
            else:
                prob = logits[b].softmax(-1)[:, :-1]
                scores, labels = prob.max(-1)
                queries = torch.arange(prob.shape[0])
            cx, cy, w, h = boxes[b, queries].unbind(-1)
            xs = ((cx - w / 2) * im.width).tolist()
            ys = ((cy - h / 2) * im.height).tolist()
            ws, hs = (w * im.width).tolist(), (h * im.height).tolist()
            for s, c, x0, y0, ww, hh in zip(scores.tolist(), labels.tolist(), xs, ys, ws, hs):
                dets.append({"image_id": im.image_id, "category_id": dataset.category_ids[c],
                             "bbox": [x0, y0, ww, hh], "score": s})
        start += x.shape[0]
    model.train(was_training)
    return dets


def coco_ground_truth(dataset: DetectionSet) -> dict:
    """The dataset's annotations as a COCO dict (every box, in each image's own pixels)."""
    images, anns = [], []
    for im in dataset.images:
        images.append({"id": im.image_id, "width": im.width, "height": im.height})
        for b, c in zip(im.boxes, im.labels):
            anns.append({"id": len(anns) + 1, "image_id": im.image_id, "category_id": dataset.category_ids[int(c)],
                         "bbox": [float(v) for v in b], "area": float(b[2] * b[3]), "iscrowd": 0})
    cats = [{"id": i, "name": n} for i, n in zip(dataset.category_ids, dataset.classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_eval(gt: dict, dets: list[dict]):
    """pycocotools' COCOeval (bbox) over every category, evaluated and accumulated (its printing silenced)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {k: list(v) for k, v in gt.items()}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(list(dets)) if dets else COCO()
        if not dets:
            coco_dt.dataset = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev


def set_ap(ev, category_ids: Iterable[int]) -> dict[str, float | None]:
    """AP (IoU .50:.95) and AP50 in % over ``category_ids``, all areas, 100 detections per image — COCOeval's
    summarize restricted to those categories; None where the set has no ground-truth box."""
    wanted = set(int(c) for c in category_ids)
    k = [i for i, c in enumerate(ev.params.catIds) if c in wanted]
    if not k:
        return {"ap": None, "ap50": None}
    a = ev.params.areaRngLbl.index("all")
    m = ev.params.maxDets.index(100) if 100 in ev.params.maxDets else len(ev.params.maxDets) - 1
    prec = ev.eval["precision"][:, :, k, a, m]  # (T, R, K)

    def mean(p):
        p = p[p > -1]
        return float(np.mean(p) * 100) if p.size else None

    t50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    return {"ap": mean(prec), "ap50": mean(prec[t50])}


def per_class_ap(model: nn.Module, dataset: DetectionSet, device: torch.device | str = "cpu",
                 batch_size: int = 32) -> list[dict | None]:
    """Each class's {"ap", "ap50"} (%) on ``dataset``; None for a class without ground-truth boxes there."""
    ev = coco_eval(coco_ground_truth(dataset), predict(model, dataset, device, batch_size))
    out = []
    for cid in dataset.category_ids:
        r = set_ap(ev, [cid])
        out.append(None if r["ap"] is None else r)
    return out


def sets_from_classes(per_class: list[dict | None], sets: dict[str, Iterable[int]]) -> dict[str, dict]:
    """Set AP from per-class AP: the mean over the set's classes that have ground truth. This equals COCOeval's AP
    with the annotations restricted to the set (each class contributes the same number of precision entries)."""
    out = {}
    for name, cs in sets.items():
        vals = [per_class[c] for c in cs if per_class[c] is not None]
        out[name] = ({"ap": float(np.mean([v["ap"] for v in vals])), "ap50": float(np.mean([v["ap50"] for v in vals]))}
                     if vals else {"ap": None, "ap50": None})
    return out


def class_set_aps(model: nn.Module, dataset: DetectionSet, sets: dict[str, Iterable[int]],
                  device: torch.device | str = "cpu", batch_size: int = 32) -> dict[str, dict]:
    """{set name: {"ap", "ap50"}} for class sets given as class indices (0..C−1) of ``dataset``."""
    ev = coco_eval(coco_ground_truth(dataset), predict(model, dataset, device, batch_size))
    ids = dataset.category_ids
    return {name: set_ap(ev, [ids[c] for c in cs]) for name, cs in sets.items()}


def det_task_metrics(before: dict, after: dict, original: dict) -> dict:
    """Per task (the paper's metrics on AP): AP_f / AP_r / AP_o after the task, Drop = AP_f(before) − AP_f(after),
    H-Mean = 2·AP_r·Drop / (AP_r + Drop), and AP_r's change against the pre-trained model on the same classes."""
    def g(d, s, k="ap"):
        return (d.get(s) or {}).get(k)

    ap_f_before, ap_f = g(before, "forget"), g(after, "forget")
    drop = None if ap_f_before is None or ap_f is None else ap_f_before - ap_f
    ap_r, ap_r_orig = g(after, "remain"), g(original, "remain")
    return {
        "ap_f": ap_f, "ap50_f": g(after, "forget", "ap50"), "ap_f_before": ap_f_before,
        "ap_f_pretrained": g(original, "forget"),
        "ap_r": ap_r, "ap50_r": g(after, "remain", "ap50"), "ap_r_pretrained": ap_r_orig,
        "ap_r_drop": None if ap_r is None or ap_r_orig is None else ap_r_orig - ap_r,
        "ap_o": g(after, "old"), "ap50_o": g(after, "old", "ap50"),
        "drop": drop, "h_mean": h_mean(ap_r, drop),
    }
