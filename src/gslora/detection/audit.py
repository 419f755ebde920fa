"""``gslora audit`` on a detection run folder: is the forgotten categories' knowledge gone, or only their outputs?

Two tests, on the run's final detector and on the original one (the ceiling), COCO AP on the test split:

1. **Recovery test** (the paper's Fig. 6 on AP): everything frozen but the classification heads (``class_embed`` /
   ``class_labels_classifier``), which are retrained with the DETR set loss on ``ratio`` of the training images the
   run never used (every category's boxes); AP_f and AP_r after each epoch. ``recovery`` = AP_f after retraining as %
   of the original detector's AP_f (the classification audit's definition, on AP).
2. **Query probe** (the linear probe's detection equivalent): the decoder's final query embedding of each
   ground-truth box (the query the audited detector's own Hungarian matcher assigns to it) is classified by a
   logistic regression fit on the same training images; its accuracy on the test boxes of the forgotten categories
   (``probe_f``) and of the remaining ones (``probe_r``). It is a box-classification accuracy, not an AP: a category
   whose boxes the probe still names was hidden, not forgotten.

The membership-inference attack, relearn time and the retrain gap of the classification audit are not run on
detectors (they read per-image classification losses and a retrained reference that detection does not have).

Library code: returns dicts, never prints.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..audit import AuditConfig, recorded_subsets, run_classes
from ..distributed import resolve_device
from ..errors import GsloraError
from ..files import atomic_write_json, atomic_write_text, check_writable
from ..report import save_figure
from ..report.tables import fmt, markdown
from ..rundir import RunFolder
from .data import DetectionSet, load_detection_data, targets_from_tensor
from .evaluate import per_class_ap, sets_from_classes
from .losses import layer_outputs, set_criterion, set_loss
from .models import freeze_batch_norm, load_detector, unwrap
from .problem import FINAL

HEADS = ("class_embed", "class_labels_classifier")  # the classification heads of Deformable DETR / DETR


def _aps(model, dataset: DetectionSet, forget, remain, device, batch_size: int) -> dict:
    sets = sets_from_classes(per_class_ap(model, dataset, device, batch_size), {"f": forget, "r": remain})
    return {"ap_f": sets["f"]["ap"], "ap_r": sets["r"]["ap"]}


def recovery_test(model, train: DetectionSet, test: DetectionSet, forget, remain, original_ap_f, cfg: AuditConfig,
                  device) -> dict:
    """Retrain a copy's classification heads (all else frozen) with the set loss on ``train``; test AP_f / AP_r
    before (epoch 0) and after every epoch."""
    m = copy.deepcopy(model).to(device)
    heads = [p for n, p in unwrap(m).named_parameters() if n.startswith(HEADS)]
    for p in m.parameters():
        p.requires_grad_(False)
    for p in heads:
        p.requires_grad_(True)
    criterion = set_criterion(m)
    opt = torch.optim.AdamW(heads, lr=cfg.recovery_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train, batch_size=min(cfg.recovery_batch_size, len(train)), shuffle=True, generator=gen)
    curve = [_aps(m, test, forget, remain, device, cfg.batch_size)]
    for _ in range(cfg.epochs):
        m.train()
        for x, y in loader:
            loss, _ = set_loss(criterion, layer_outputs(m, x.to(device)), targets_from_tensor(y.to(device)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        curve.append(_aps(m, test, forget, remain, device, cfg.batch_size))
    ap_f = [c["ap_f"] for c in curve]
    return {
        "split": f"classification heads retrained on {len(train)} training images the run never used; AP on test",
        "epochs": list(range(cfg.epochs + 1)), "ap_f": ap_f, "ap_r": [c["ap_r"] for c in curve],
        "final_ap_f": ap_f[-1], "final_ap_r": curve[-1]["ap_r"], "max_ap_f": max((a for a in ap_f if a is not None),
                                                                                   default=None),
        "recovery": (100.0 * ap_f[-1] / original_ap_f) if original_ap_f and ap_f[-1] is not None else None,
    }


@torch.no_grad()
def query_features(model, dataset: DetectionSet, device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(final decoder query embedding, category) of every ground-truth box of ``dataset``, each box with the query
    the model's Hungarian matcher assigns to it."""
    model.eval()
    matcher = set_criterion(model).matcher
    feats, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out = model(pixel_values=x.to(device))
        targets = targets_from_tensor(y.to(device))
        indices = matcher({"logits": out.logits, "pred_boxes": out.pred_boxes}, targets)
        for b, (queries, boxes) in enumerate(indices):
            feats.append(out.last_hidden_state[b, queries].float().cpu())
            labels.append(targets[b]["class_labels"][boxes].cpu())
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def query_probe(model, train: DetectionSet, test: DetectionSet, forget, remain, cfg: AuditConfig, device) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit_x, fit_y = query_features(model, train, device, cfg.batch_size)
    x, y = query_features(model, test, device, cfg.batch_size)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.probe_c, max_iter=cfg.probe_max_iter))
    probe.fit(fit_x, fit_y)
    pred = probe.predict(x)

    def acc(classes):
        mask = np.isin(y, list(classes))
        return float(100.0 * (pred[mask] == y[mask]).mean()) if mask.any() else None

    return {"split": f"fit on {len(fit_y)} training boxes, scored on {len(y)} test boxes", "probe_f": acc(forget),
            "probe_r": acc(remain)}


def audit_images(n_train: int, seen: set[int], ratio: float, seed: int) -> tuple[list[int], str]:
    """A seeded ``ratio`` of the training images (at least one) outside the run's replay / forget images; the run's
    own images only when it left none."""
    unseen = [i for i in range(n_train) if i not in seen]
    source = "training images the run never used"
    if not unseen:
        unseen, source = sorted(seen), "the run's own training images (it left none unused)"
    k = min(len(unseen), max(1, round(ratio * n_train)))
    pick = np.random.default_rng([seed, 21]).permutation(len(unseen))[:k]
    return sorted(unseen[i] for i in pick), source


def audit_detection_run(run_dir: str | Path, original: str | Path | None = None, config: AuditConfig | None = None,
                        data=None, out_dir: str | Path | None = None, write: bool = True,
                        data_spec: str | None = None) -> dict:
    """Audit the final detector of a finished detection run folder (module docstring); write ``audit.json``,
    ``audit.md`` and ``recovery.png`` to ``out_dir`` (default ``RUN/audit``) when ``write``."""
    cfg = (config or AuditConfig()).validate()
    finished = RunFolder.load(run_dir)
    run, results, rcfg = finished.folder.path, finished.results, finished.config
    if results.get("problem") != "detection":
        raise GsloraError(f"{run} is not a detection run; `gslora audit` audits it as classification.")
    out = Path(out_dir) if out_dir is not None else run / "audit"
    if write:
        check_writable(out, "audit folder")
    if not (run / FINAL / "config.json").is_file():
        raise GsloraError(f"run folder {run} has no final detector ({FINAL}/); there is nothing to audit.")
    t0 = time.perf_counter()
    model, meta = load_detector(run / FINAL)
    src = original or results.get("source_checkpoint")
    if not src or not Path(src).is_dir():
        raise GsloraError(f"the original detector {src} of run {run} is gone; pass it with --original.")
    orig, ometa = load_detector(src)
    classes = meta["classes"]
    if list(ometa["classes"]) != list(classes):
        raise GsloraError(f"the original detector {src} has other categories than the run's; pass the detector the "
                          "run started from with --original.")
    if data is None:
        data = load_detection_data(data_spec or rcfg.data, image_size=rcfg.image_size, seed=rcfg.seed)
    if list(data.classes) != list(classes):
        raise GsloraError("the data's categories differ from the run's detector; pass the run's data with --data.")
    forget, remain = run_classes(results)
    device = resolve_device(cfg.device)
    seen = recorded_subsets(results) or set()
    picked, source = audit_images(len(data.train), seen, cfg.ratio, cfg.seed)
    train = data.train.subset(picked)
    models, start = {}, None
    for key, m in (("original", orig), ("forgotten", model)):
        m = freeze_batch_norm(m).to(device).eval()
        ap = _aps(m, data.test, forget, remain, device, cfg.batch_size)
        if key == "original":
            start = ap["ap_f"]
        models[key] = {"ap": ap, "recovery": recovery_test(m, train, data.test, forget, remain, start, cfg, device),
                       "probe": query_probe(m, train, data.test, forget, remain, cfg, device)}
    report = {
        "problem": "detection", "run": str(run.resolve()), "method": (results.get("method") or {}).get("method"),
        "original_checkpoint": str(src), "forget_classes": [classes[c] for c in forget],
        "remain_classes": [classes[c] for c in remain], "config": {**cfg.__dict__},
        "images": {"source": source, "count": len(picked), "run_images": len(seen)},
        "models": models, "seconds": time.perf_counter() - t0,
        "not_run": "membership inference, relearn time and the retrain gap (classification only)",
    }
    if write:
        write_detection_audit(out, report)
    return report


def audit_table(report: dict) -> str:
    rows = [["Model", "AP_f (test)", "AP_r (test)", f"AP_f after head retraining ({report['config']['epochs']} "
             "epochs)", "Recovery (% of original AP_f)", "Query probe acc_f", "Query probe acc_r"]]
    for key, m in report["models"].items():
        label = f"{report.get('method') or 'forgotten'} (audited)" if key == "forgotten" else key
        rows.append([label, fmt(m["ap"]["ap_f"]), fmt(m["ap"]["ap_r"]), fmt(m["recovery"]["final_ap_f"]),
                     fmt(m["recovery"]["recovery"]), fmt(m["probe"]["probe_f"]), fmt(m["probe"]["probe_r"])])
    return markdown(rows)


def audit_text(report: dict) -> str:
    return "\n".join([
        f"# Audit of detection run {report['run']}", "",
        f"Forgotten categories: {', '.join(map(str, report['forget_classes']))}. Images: "
        f"{report['images']['count']} {report['images']['source']} (recovery and probe). COCO AP .50:.95 in %; the "
        "query probe classifies each box's matched decoder query (accuracy in %).", "",
        audit_table(report), "",
        f"Not run on detectors: {report['not_run']}.", ""])


def recovery_figure(report: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, m in report["models"].items():
        rec = m["recovery"]
        pts = [(e, a) for e, a in zip(rec["epochs"], rec["ap_f"]) if a is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", label=f"{key} AP_f")
    ax.set_xlabel("epoch of head retraining")
    ax.set_ylabel("AP_f (test)")
    ax.legend()
    return fig


def write_detection_audit(out_dir: Path, report: dict) -> Path:
    """``recovery.png`` and ``audit.md`` first, ``audit.json`` last (its presence marks a finished audit)."""
    out_dir = Path(out_dir)
    (out_dir / "audit.json").unlink(missing_ok=True)
    report["plots"] = [str(save_figure(recovery_figure(report), out_dir / "recovery.png").relative_to(out_dir))]
    atomic_write_text(out_dir / "audit.md", audit_text(report))
    atomic_write_json(out_dir / "audit.json", report)
    return out_dir
