"""Evidence that forgetting holds: recovery test, linear probe, membership inference, retrain gap, relearn time.

Accuracy on forgotten classes falling to zero proves little on its own: masking the head does that too, and the
paper's Fig. 6 shows such forgetting comes back within 20 epochs of retraining the head. An audit compares the final
model of a run with the original pre-trained model (and, when given, a model retrained without the forgotten classes
and other forgotten models such as head forgetting):

1. **Recovery test** (the paper's Fig. 6): backbone frozen, only the head retrained with CE on ``ratio`` of each
   forgotten and remaining class's training images; forget / remain test accuracy per epoch.
2. **Linear probe**: logistic regression on frozen penultimate features (embeddings) of the train split, all classes;
   its test accuracy on the forgotten classes.
3. **Membership inference**: a loss-based attack (per-sample CE, logistic regression, stratified k-fold, balanced)
   telling forgotten-class training images from forgotten-class test images; 0.5 is ideal.
4. **Retrain gap**: absolute gaps of Acc_f, Acc_r, MIA accuracy and probe Acc_f to a retrained model, and their mean.
   The reference is ``retrain-full`` (a fresh model trained from scratch on every training image of the remaining
   classes with the pre-training recipe): given as a checkpoint / run folder, or trained by the audit itself.
5. **Relearn time**: a copy of the whole model fine-tuned on ``ratio`` of each forgotten class's training images;
   epochs until forget test accuracy is back to ``relearn_fraction`` of the original model's.

The recovery and relearn images are training images the forgetting run never used (an attacker who wants a person
back has new photos): outside every task's replay and forget subsets, read from the run's ``plan.json``
(:func:`recorded_subsets`; re-derived from its settings for runs written before it recorded them). A class with no
such image left falls back to its images the run used, and the report counts those classes (``audit_images``).

Library code: returns dicts, never prints; every number carries the split it was computed on.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .config import DEFAULT_DEPTH_TARGET, parse_depth_target
from .data.base import DataBundle, check_data_matches
from .data.plan import Task, select_per_class
from .depth import embed_images
from .errors import GsloraError
from .files import atomic_write_json, atomic_write_text, check_writable
from .report import save_figure
from .report.audit import (  # noqa: F401 (rendering lives in gslora.report; re-exported here)
    audit_markdown,
    audit_tables,
    probe_mia_figure,
    recovery_figure,
    recovery_summary,
    relearn_summary,
)
from .rundir import RunFolder

log = logging.getLogger(__name__)


@dataclass
class AuditConfig:
    epochs: int = 20  # recovery test: epochs of head retraining
    ratio: float = 0.1  # fraction of each class's training images used by the recovery test and relearning
    recovery_lr: float = 3e-3  # AdamW, no weight decay, constant
    recovery_batch_size: int = 32
    threshold: float = 0.5  # "recovered" = forget test accuracy ≥ threshold × the original model's
    relearn_epochs: int = 20  # cap of the relearn-time fine-tuning (0: skip)
    relearn_lr: float = 1e-3  # AdamW on the whole model, no weight decay
    relearn_batch_size: int = 16
    relearn_fraction: float = 0.9  # "relearned" = forget test accuracy ≥ relearn_fraction × the original model's
    probe_c: float = 1.0  # inverse L2 strength of the logistic-regression probe (on standardised features)
    probe_max_iter: int = 2000
    mia_folds: int = 5
    batch_size: int = 256  # for computing embeddings
    seed: int = 1337
    device: str = "auto"

    def validate(self) -> AuditConfig:
        for name in ("epochs", "recovery_batch_size", "relearn_batch_size", "batch_size", "probe_max_iter"):
            if getattr(self, name) < 1:
                raise GsloraError(f"audit {name} must be at least 1, got {getattr(self, name)}.")
        if self.relearn_epochs < 0:
            raise GsloraError(f"audit relearn_epochs must be 0 or more, got {self.relearn_epochs}.")
        if self.mia_folds < 2:
            raise GsloraError(f"audit mia_folds must be at least 2, got {self.mia_folds}.")
        for name in ("ratio", "threshold", "relearn_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise GsloraError(f"audit {name} must be in (0, 1], got {getattr(self, name)}.")
        for name in ("recovery_lr", "relearn_lr", "probe_c"):
            if getattr(self, name) <= 0:
                raise GsloraError(f"audit {name} must be > 0, got {getattr(self, name)}.")
        return self


# ---------------------------------------------------------------------------------------------------------------------
# Features and accuracies


embed_dataset = embed_images  # penultimate features and labels of every image, in order, on the CPU


def _acc(pred: torch.Tensor, y: torch.Tensor, classes) -> float | None:
    """Top-1 accuracy in percent over the samples whose label is in ``classes``; None when there are none."""
    mask = torch.isin(y, torch.as_tensor(sorted(classes), dtype=torch.long))
    return 100.0 * (pred[mask] == y[mask]).float().mean().item() if mask.any() else None


@torch.no_grad()
def _head_logits(head: nn.Module, emb: torch.Tensor, device, batch_size: int = 4096) -> torch.Tensor:
    was_training = head.training
    head.eval()
    out = torch.cat([head(emb[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(emb), batch_size)])
    head.train(was_training)
    return out


def set_accuracy(head: nn.Module, emb: torch.Tensor, y: torch.Tensor, forget, remain, device) -> dict:
    """Acc_f / Acc_r (%) of ``head`` on precomputed embeddings, top-1 over all logits, no margin."""
    pred = _head_logits(head, emb, device).argmax(-1)
    return {"acc_f": _acc(pred, y, forget), "acc_r": _acc(pred, y, remain)}


# ---------------------------------------------------------------------------------------------------------------------
# 1. Recovery test


def _first_at_or_above(values: list, target: float) -> int | None:
    return next((i for i, v in enumerate(values) if v is not None and v >= target), None)


def recovery_test(model, train_emb, train_y, test_emb, test_y, subset_idx, forget, remain, original_acc_f,
                  cfg: AuditConfig, device, images: str = "") -> dict:
    """Retrain a copy of the head (backbone frozen, so embeddings are computed once) with CE (training margin) on the
    training images ``subset_idx`` (``images`` says which they are); forget / remain test accuracy before training
    (epoch 0) and after every epoch."""
    head = copy.deepcopy(model.head).to(device).float().requires_grad_(True)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.recovery_lr, weight_decay=0.0)
    x_all, y_all = train_emb[subset_idx], train_y[subset_idx]
    gen = torch.Generator().manual_seed(cfg.seed)
    curve = [set_accuracy(head, test_emb, test_y, forget, remain, device)]
    for _ in range(cfg.epochs):
        head.train()
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), cfg.recovery_batch_size):
            b = perm[i:i + cfg.recovery_batch_size]
            x, y = x_all[b].to(device), y_all[b].to(device)
            loss = F.cross_entropy(head(x, y), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        curve.append(set_accuracy(head, test_emb, test_y, forget, remain, device))
    last_pred = _head_logits(head, test_emb, device).argmax(-1)
    acc_f = [c["acc_f"] for c in curve]
    target = cfg.threshold * original_acc_f if original_acc_f is not None else None
    reached = _first_at_or_above(acc_f, target) if target is not None else None
    return {
        "split": (f"head retrained on train split subset ({len(subset_idx)} images: {cfg.ratio:g} of each forgotten "
                  f"and remaining class{images}); accuracies on test split"),
        "epochs": list(range(cfg.epochs + 1)),
        "acc_f": acc_f,
        "acc_r": [c["acc_r"] for c in curve],
        "original_acc_f": original_acc_f,
        "threshold": cfg.threshold,
        "target_acc_f": target,
        "recovered_at_epoch": reached,
        "max_acc_f": max((a for a in acc_f if a is not None), default=None),
        "final_acc_f": acc_f[-1],
        "final_acc_r": curve[-1]["acc_r"],
        "recovered_fraction": (acc_f[-1] / original_acc_f) if original_acc_f and acc_f[-1] is not None else None,
        "per_class_final_acc_f": per_class_accuracy(last_pred, test_y, forget),
    }


# ---------------------------------------------------------------------------------------------------------------------
# 2. Linear probe


def _probe_predict(fit_emb, fit_y, emb, cfg: AuditConfig) -> torch.Tensor:
    """Predictions on ``emb`` of a logistic regression fit on standardised ``fit_emb`` (the audit's probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.probe_c, max_iter=cfg.probe_max_iter))
    probe.fit(fit_emb.numpy(), fit_y.numpy())
    return torch.as_tensor(probe.predict(emb.numpy()), dtype=torch.long)


def linear_probe(train_emb, train_y, test_emb, test_y, forget, remain, cfg: AuditConfig) -> dict:
    """Logistic regression on standardised embeddings of the train split (all classes); accuracy on the test split."""
    pred = _probe_predict(train_emb, train_y, test_emb, cfg)
    return {
        "split": f"probe fit on train split ({len(train_y)} images, all classes); accuracy on test split",
        "acc_f": _acc(pred, test_y, forget),
        "acc_r": _acc(pred, test_y, remain),
        "per_class_f": per_class_accuracy(pred, test_y, forget),
    }


def strangers_probe(model, strangers: DataBundle, cfg: AuditConfig, device) -> dict:
    """The audit's probe (:func:`linear_probe`'s logistic regression) on ``strangers``, classes none of the audited
    models trained on: fit on their train split, accuracy on their test split. How well a model tells apart people
    it never saw; a model trained on fewer classes (the retrained reference) is often weaker here too, and that part
    of its distance from the original on the forgotten classes is not forgetting (docs/audit.md)."""
    train_emb, train_y = embed_dataset(model, strangers.train, device, cfg.batch_size)
    test_emb, test_y = embed_dataset(model, strangers.test, device, cfg.batch_size)
    pred = _probe_predict(train_emb, train_y, test_emb, cfg)
    return {"split": f"probe fit on the strangers' train split ({len(train_y)} images), accuracy on their test split "
                     f"({len(test_y)} images)", "acc": _acc(pred, test_y, range(strangers.num_classes))}


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, classes) -> dict[int, float | None]:
    """Top-1 accuracy (%) of each class in ``classes`` on its own samples (None: the class has none)."""
    return {int(c): _acc(pred, y, [c]) for c in sorted(classes)}


# ---------------------------------------------------------------------------------------------------------------------
# 3. Membership inference


def per_sample_loss(head: nn.Module, emb: torch.Tensor, y: torch.Tensor, device) -> np.ndarray:
    """CE of the logits the model outputs at test time (no margin) for every sample."""
    logits = _head_logits(head, emb, device)
    return F.cross_entropy(logits, y, reduction="none").numpy()


def membership_inference(member_losses, nonmember_losses, folds: int = 5, seed: int = 1337) -> dict:
    """Loss-based attack: logistic regression on the per-sample loss, stratified ``folds``-fold cross-validation, on a
    balanced set (the larger group subsampled, seeded). Returns out-of-fold accuracy and AUC; 0.5 is chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    m, n = np.asarray(member_losses, dtype=np.float64), np.asarray(nonmember_losses, dtype=np.float64)
    k = min(len(m), len(n))
    if k < folds:
        raise GsloraError(f"membership inference needs at least {folds} members and {folds} non-members, got "
                          f"{len(m)} and {len(n)}; use more data or fewer folds.")
    m, n = rng.choice(m, k, replace=False), rng.choice(n, k, replace=False)
    x = np.log1p(np.maximum(np.concatenate([m, n]), 0.0))[:, None]  # log scale: CosFace losses span 0 to > 100
    y = np.concatenate([np.ones(k), np.zeros(k)])
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(LogisticRegression(), x, y, cv=cv, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, proba))
    return {
        "accuracy": float(((proba >= 0.5) == y).mean()),
        "auc": auc,
        "advantage": abs(auc - 0.5),  # the signal either way: an AUC of 0.2 separates members as well as 0.8
        "members": int(k),
        "non_members": int(k),
        "mean_loss_members": float(m.mean()),
        "mean_loss_non_members": float(n.mean()),
    }


# ---------------------------------------------------------------------------------------------------------------------
# 5. Relearn time


def relearn_time(model, data: DataBundle, forget_idx: list[int], forget, remain, original_acc_f,
                 cfg: AuditConfig, device, images: str = "") -> dict:
    """Fine-tune a copy of the whole model with CE on the forget subset; stop once forget test accuracy reaches
    ``relearn_fraction`` × the original's or after ``relearn_epochs``."""
    from .evaluate import class_counts, set_accuracies

    nc = model.config["num_classes"]
    work = copy.deepcopy(model).to(device).float().requires_grad_(True)
    opt = torch.optim.AdamW(work.parameters(), lr=cfg.relearn_lr, weight_decay=0.0)
    loader = DataLoader(Subset(data.train, forget_idx), batch_size=cfg.relearn_batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    target = cfg.relearn_fraction * original_acc_f if original_acc_f is not None else None

    def evaluate():
        return set_accuracies(*class_counts(work, data.test, nc, device, cfg.batch_size),
                              {"acc_f": forget, "acc_r": remain})

    curve = [evaluate()]
    reached = 0 if target is not None and curve[0]["acc_f"] is not None and curve[0]["acc_f"] >= target else None
    epoch = 0
    while reached is None and epoch < cfg.relearn_epochs:
        work.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(work(x, y), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epoch += 1
        curve.append(evaluate())
        if target is not None and curve[-1]["acc_f"] is not None and curve[-1]["acc_f"] >= target:
            reached = epoch
    return {
        "split": (f"whole model fine-tuned on train split forget subset ({len(forget_idx)} images{images}); "
                  "accuracies on test split"),
        "fraction": cfg.relearn_fraction,
        "target_acc_f": target,
        "max_epochs": cfg.relearn_epochs,
        "relearned_at_epoch": reached,
        "acc_f": [c["acc_f"] for c in curve],
        "acc_r": [c["acc_r"] for c in curve],
    }


# ---------------------------------------------------------------------------------------------------------------------
# The audit


def _audit_one(model, data, forget, remain, cfg, device, original_acc_f=None, recovery_idx=None, forget_idx=None,
               deep=False, images: str = "", relearn: bool = True) -> dict:
    """Accuracies, probe and MIA for one model; with ``deep`` also the recovery test and (with ``relearn``) the
    relearn time."""
    model = model.to(device).eval()
    train_emb, train_y = embed_dataset(model, data.train, device, cfg.batch_size)
    test_emb, test_y = embed_dataset(model, data.test, device, cfg.batch_size)
    out = {
        "accuracy": {"split": "test", **set_accuracy(model.head, test_emb, test_y, forget, remain, device)},
        "probe": linear_probe(train_emb, train_y, test_emb, test_y, forget, remain, cfg),
    }
    fset = torch.as_tensor(sorted(forget), dtype=torch.long)
    tr, te = torch.isin(train_y, fset), torch.isin(test_y, fset)
    mia = membership_inference(per_sample_loss(model.head, train_emb[tr], train_y[tr], device),
                               per_sample_loss(model.head, test_emb[te], test_y[te], device),
                               cfg.mia_folds, cfg.seed)
    out["mia"] = {"split": "members: forgotten classes' train split images; non-members: their test split images",
                  **mia}
    if deep:
        out["recovery"] = recovery_test(model, train_emb, train_y, test_emb, test_y, recovery_idx, forget, remain,
                                        original_acc_f, cfg, device, images)
        out["relearn"] = (relearn_time(model, data, forget_idx, forget, remain, original_acc_f, cfg, device, images)
                          if cfg.relearn_epochs > 0 and relearn else None)
    return out


def run_subset_indices(targets: list[int], tasks: list[Task], seed: int, replay_ratio: float, shots: int = 0,
                       min_replay: int = 1, old_forget_shots: int = 0, min_forget: int | None = None) -> set[int]:
    """Training indices a forgetting run used: every task's replay subset of R_t and forget subset of F_t (plus
    ``old_forget_shots`` images of each earlier-forgotten class), drawn as the runner draws them
    (:func:`gslora.data.plan.select_per_class` with the run's seed, replay_ratio, shots, min_replay and min_forget)."""
    seen: set[int] = set()
    for task in tasks:
        forget_minimum = min_replay if min_forget is None else min_forget
        for classes, minimum in ((task.remain, min_replay), (task.forget, forget_minimum)):
            seen.update(select_per_class(targets, classes, seed, replay_ratio, shots, minimum=minimum))
        if old_forget_shots and task.old:
            seen.update(select_per_class(targets, task.old, seed, shots=old_forget_shots))
    return seen


def recorded_subsets(results: dict) -> set[int] | None:
    """The training images a run trained on (every task's replay and forget images), as its plan recorded them
    (:func:`gslora.forget.plan_with_indices`); None for a run whose plan has no indices."""
    tasks = (results.get("plan") or {}).get("tasks") or []
    if not tasks or any("indices" not in t for t in tasks):
        return None
    return {int(i) for t in tasks for part in ("replay", "forget") for i in t["indices"][part]}


def run_tasks(results: dict) -> list[Task]:
    """The task plan of a run's ``results.json`` as :class:`Task` objects."""
    return [Task(index=int(t["index"]), forget=tuple(int(c) for c in t["forget"]),
                 remain=tuple(int(c) for c in t["remain"]), old=tuple(int(c) for c in t.get("old", ())))
            for t in results["plan"]["tasks"]]


def unseen_per_class(targets: list[int], classes, seen: set[int], seed: int, ratio: float) -> tuple[list[int], dict]:
    """Per class, ``ratio`` of its training images (at least one) drawn (seeded) from those outside ``seen``.

    A class with fewer unseen images than that gets all it has (counted in ``short``); a class with none gets its
    ``select_per_class`` draw over all of its images, which may include ones the run used (``without_unseen``)."""
    by_class: dict[int, list[int]] = {int(c): [] for c in classes}
    for i, t in enumerate(targets):
        if t in by_class:
            by_class[t].append(i)
    out, without, short = [], [], []
    for c, idx in sorted(by_class.items()):
        if not idx:
            continue
        want = max(1, int(round(ratio * len(idx))))
        pool = [i for i in idx if i not in seen]
        if not pool:
            without.append(c)
            out.extend(select_per_class(targets, [c], seed, ratio))
            continue
        if len(pool) < want:
            short.append(c)
        perm = np.random.default_rng([seed, 11, c]).permutation(len(pool))
        out.extend(pool[j] for j in sorted(perm[:want].tolist()))
    return out, {"without_unseen": without, "short": short}


def audit_images(targets: list[int], forget, remain, seed: int, ratio: float,
                 seen: set[int] | None) -> tuple[list[int], list[int], dict]:
    """(recovery images, relearn images, what they are): ``ratio`` of each forgotten and remaining class's training
    images for the recovery test, the forgotten classes' part of them for relearning. With ``seen`` (the run's
    subsets) they are drawn outside it; without, from all training images (the run's subsets unknown)."""
    if seen is None:
        forget_idx = select_per_class(targets, forget, seed, ratio)
        recovery = forget_idx + select_per_class(targets, remain, seed, ratio)
        return recovery, forget_idx, {
            "source": "all training images (the forgetting run's replay / forget subsets are unknown, so some of "
                      "these images may be ones the run used)",
            "run_images": None, "recovery_images": len(recovery), "relearn_images": len(forget_idx),
            "classes_without_unseen": None, "forget_classes_without_unseen": None,
            "remain_classes_without_unseen": None, "classes_short": None}
    forget_idx, f_info = unseen_per_class(targets, forget, seen, seed, ratio)
    remain_idx, r_info = unseen_per_class(targets, remain, seen, seed, ratio)
    without = len(f_info["without_unseen"]) + len(r_info["without_unseen"])
    return forget_idx + remain_idx, forget_idx, {
        "source": "training images outside the forgetting run's replay / forget subsets (unseen by the run)",
        "run_images": len(seen), "recovery_images": len(forget_idx) + len(remain_idx),
        "relearn_images": len(forget_idx),
        "classes_without_unseen": without,
        "forget_classes_without_unseen": f_info["without_unseen"],
        "remain_classes_without_unseen": len(r_info["without_unseen"]),
        "classes_short": len(f_info["short"]) + len(r_info["short"]),
        "fallback": ("a class without an unseen training image is drawn from all of its training images, i.e. "
                     "images the run used" if without else None)}


def depth_fraction(value: float | None, ceiling: float | None, floor: float | None) -> float | None:
    """Where ``value`` sits between the original model (``ceiling``: 0%) and the model retrained without the forgotten
    classes (``floor``: 100%), in percent; above 100 is deeper than retraining, below 0 shallower than the original.
    None when a value is missing or the two references coincide (nothing to place it between)."""
    if value is None or ceiling is None or floor is None or abs(ceiling - floor) < 1e-9:
        return None
    return 100.0 * (ceiling - value) / (ceiling - floor)


def _recovered(m: dict) -> float | None:
    rec = m.get("recovery") or {}
    return None if rec.get("recovered_fraction") is None else 100.0 * rec["recovered_fraction"]


def model_numbers(m: dict) -> dict:
    """One audited model's headline numbers (an entry of an audit report's ``models``): Acc_f and Acc_r (test),
    probe Acc_f, recovery (% of the original's Acc_f after head retraining; None without the recovery test) and
    MIA AUC."""
    return {"acc_f": m["accuracy"]["acc_f"], "acc_r": m["accuracy"]["acc_r"], "probe_f": m["probe"]["acc_f"],
            "recovery": _recovered(m), "mia_auc": (m.get("mia") or {}).get("auc")}


def model_depth(m: dict, original: dict, retrained: dict, names: dict[int, str]) -> dict:
    """A forgotten model's depth (:func:`depth_fraction`) for probe Acc_f, recovery (Acc_f after head retraining, as %
    of the original's Acc_f) and the membership signal (MIA advantage |AUC − 0.5|), on average and per forgotten
    class (probe and recovery; a class's recovery is its accuracy after head retraining, as % of the original's)."""
    def adv(x):
        return abs(x["mia"]["auc"] - 0.5)

    out = {
        "probe_f": depth_fraction(m["probe"]["acc_f"], original["probe"]["acc_f"], retrained["probe"]["acc_f"]),
        "recovery": depth_fraction(_recovered(m), _recovered(original), _recovered(retrained)),
        "mia": depth_fraction(adv(m), adv(original), adv(retrained)),
        "values": {"probe_f": [m["probe"]["acc_f"], original["probe"]["acc_f"], retrained["probe"]["acc_f"]],
                   "recovery": [_recovered(m), _recovered(original), _recovered(retrained)],
                   "mia_advantage": [adv(m), adv(original), adv(retrained)],
                   "order": "this model, original, retrained"},
        "per_class": {},
    }
    for c, name in names.items():
        per = [x["probe"]["per_class_f"].get(c) for x in (m, original, retrained)]
        recs = [(x.get("recovery") or {}).get("per_class_final_acc_f", {}).get(c) for x in (m, original, retrained)]
        out["per_class"][name] = {"probe_f": depth_fraction(*per), "recovery": depth_fraction(*recs),
                                  "probe_f_values": per, "recovered_acc_f_values": recs}
    return out


def retrain_gap(forgotten: dict, retrained: dict) -> dict:
    """Absolute gaps (percentage points) of Acc_f, Acc_r, MIA accuracy and probe Acc_f, and their mean."""
    pairs = {
        "acc_f": (forgotten["accuracy"]["acc_f"], retrained["accuracy"]["acc_f"]),
        "acc_r": (forgotten["accuracy"]["acc_r"], retrained["accuracy"]["acc_r"]),
        "mia": (100 * forgotten["mia"]["accuracy"], 100 * retrained["mia"]["accuracy"]),
        "probe_acc_f": (forgotten["probe"]["acc_f"], retrained["probe"]["acc_f"]),
    }
    gaps = {k: (None if a is None or b is None else abs(a - b)) for k, (a, b) in pairs.items()}
    known = [v for v in gaps.values() if v is not None]
    return {"split": "as for each metric (test split; MIA as accuracy in %)", **gaps,
            "average": sum(known) / len(known) if known else None}


def audit(model, original, data: DataBundle, forget, remain, retrained=None, compare: dict | None = None,
          config: AuditConfig | None = None, progress: bool = False, extra: dict | None = None,
          seen: set[int] | None = None, strangers: DataBundle | None = None) -> dict:
    """Audit ``model`` (forgotten) against ``original``; class ids ``forget`` / ``remain`` index ``data``'s classes.

    ``compare`` maps labels to other forgotten models (e.g. head forgetting) that get the same recovery test.
    ``retrained`` (a model never taught the forgotten classes) adds the retrain gap. ``seen``: the training indices
    the forgetting run used (:func:`run_subset_indices`); the recovery and relearn images are drawn outside them
    (None: from all training images, and the report says the run's subsets were unknown). ``strangers``: other
    classes than ``data``'s, which no model here trained on: every model also gets :func:`strangers_probe`. Models are
    not modified.
    """
    from .distributed import resolve_device

    cfg = (config or AuditConfig()).validate()
    forget, remain = sorted(int(c) for c in forget), sorted(int(c) for c in remain)
    if not forget or not remain:
        raise GsloraError("an audit needs at least one forgotten and one remaining class.")
    if set(forget) & set(remain):
        raise GsloraError("forgotten and remaining classes overlap; check the run's plan.")
    device = resolve_device(cfg.device)
    compare = dict(compare or {})
    recovery_idx, forget_idx, images = audit_images(data.train.targets, forget, remain, cfg.seed, cfg.ratio, seen)
    if images["classes_without_unseen"]:
        log.warning("%d classes have no training image outside the forgetting run's subsets; their recovery / "
                    "relearn images are ones the run used", images["classes_without_unseen"])
    unseen_note = "; unseen by the forgetting run" if seen is not None else "; the run's subsets unknown"
    # the recovery test runs on the original (the ceiling) and on the retrained model (the floor) too: depth is
    # where a forgotten model sits between them
    jobs = [("original", original, True), ("forgotten", model, True)]
    jobs += [(label, m, True) for label, m in compare.items()]
    if retrained is not None:
        jobs.append(("retrained", retrained, True))
    models: dict[str, dict] = {}
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="audit", disable=not progress, leave=False, dynamic_ncols=True)
    original_acc_f = None
    for label, m, deep in jobs:
        bar.set_postfix_str(label)
        t0 = time.perf_counter()
        work = copy.deepcopy(m)
        if hasattr(work, "config"):  # the audit reads the model itself, not its deployed output mask
            work.config.pop("masked_classes", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            models[label] = _audit_one(work, data, forget, remain, cfg, device, original_acc_f,
                                       recovery_idx, forget_idx, deep, unseen_note,
                                       relearn=label not in ("original", "retrained"))
            if strangers is not None:
                models[label]["strangers_probe"] = strangers_probe(work, strangers, cfg, device)
        models[label]["seconds"] = time.perf_counter() - t0
        if label == "original":
            original_acc_f = models[label]["accuracy"]["acc_f"]
        bar.update(1)
    bar.close()
    report = {
        "classes": {"forget": [data.classes[c] for c in forget], "n_forget": len(forget), "n_remain": len(remain)},
        "data": data.describe(),
        "config": asdict(cfg),
        "device": str(device),
        "audit_images": {**images, "forget_classes_without_unseen": (
            None if images["forget_classes_without_unseen"] is None
            else [data.classes[c] for c in images["forget_classes_without_unseen"]])},
        "models": models,
        "compare": list(compare),
        "retrain_gap": retrain_gap(models["forgotten"], models["retrained"]) if retrained is not None else None,
        "depth": ({label: model_depth(models[label], models["original"], models["retrained"],
                                      {c: data.classes[c] for c in forget})
                   for label in ("forgotten", *compare)} if retrained is not None else None),
        "strangers": strangers.describe() if strangers is not None else None,
        "wall_seconds": time.perf_counter() - start,
        **(extra or {}),
    }
    return report


# ---------------------------------------------------------------------------------------------------------------------
# The gate: the cheap part of the audit after each task of a run (``gslora forget --audit``)

def _folds(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """A fold number per image: each class's images (seeded order) dealt round-robin over ``k`` folds."""
    fold = torch.zeros(len(labels), dtype=torch.long)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        perm = torch.as_tensor(np.random.default_rng([seed, 13, int(c)]).permutation(len(idx)))
        fold[idx[perm]] = torch.arange(len(idx)) % k
    return fold


def _cross_validated(model, emb, y, forget, remain, cfg: AuditConfig, device, k: int) -> dict:
    """Probe and head-retraining predictions for every image, each from a fit on the other folds."""
    fold = _folds(y, k, cfg.seed)
    probe_pred = torch.full_like(y, -1)
    recovered = 0.0
    fset = torch.as_tensor(sorted(forget), dtype=torch.long)
    for j in range(k):
        fit, score = fold != j, fold == j
        if not score.any() or len(y[fit].unique()) < 2:
            continue
        probe_pred[score] = _probe_predict(emb[fit], y[fit], emb[score], cfg)
        n_f = int(torch.isin(y[score], fset).sum())
        if n_f:
            rec = recovery_test(model, emb[fit], y[fit], emb[score], y[score], torch.arange(int(fit.sum())), forget,
                                remain, None, cfg, device)
            recovered += rec["final_acc_f"] * n_f
    n_forget = int(torch.isin(y, fset).sum())
    return {"probe_f": _acc(probe_pred, y, forget), "probe_r": _acc(probe_pred, y, remain),
            "recovered_acc_f": recovered / n_forget if n_forget else None}


def depth_gate(start, model, dataset, forget, remain, spec: str = DEFAULT_DEPTH_TARGET, retrained=None,
               config: AuditConfig | None = None, device="cpu", folds: int = 3) -> dict:
    """The gate of ``gslora forget --audit`` for one task: how deep the forgetting of ``model`` (the task's result)
    goes on ``dataset`` (the task's check images: its validation split and training images outside the task's
    replay / forget subsets, none of them trained on), measured against ``start`` (the model at the task's start)
    and, when given, ``retrained`` (a model never taught the forgotten classes).

    Every image is scored by fits on the other ``folds`` (cross-validation, folds dealt per class): a logistic-
    regression probe on the embeddings (probe Acc_f), and the head retrained for ``config.epochs`` epochs (recovery:
    Acc_f after it, as % of the task-start model's plain Acc_f on the same images). ``spec`` sets the targets
    (:data:`DEPTH_TARGETS`); ``certified`` is whether all of them hold."""
    cfg = (config or AuditConfig()).validate()
    targets = parse_depth_target(spec)
    t0 = time.perf_counter()
    keep = set(int(c) for c in forget) | set(int(c) for c in remain)

    def measure(m):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            m = copy.deepcopy(m).to(device).eval()
            emb, y = embed_dataset(m, dataset, device, cfg.batch_size)
            mask = torch.isin(y, torch.as_tensor(sorted(keep), dtype=torch.long))
            emb, y = emb[mask], y[mask]
            plain = set_accuracy(m.head, emb, y, forget, remain, device)
            return {**_cross_validated(m, emb, y, forget, remain, cfg, device, folds), "acc_f": plain["acc_f"],
                    "acc_r": plain["acc_r"], "images": int(len(y)),
                    "forget_images": int(torch.isin(y, torch.as_tensor(sorted(forget))).sum())}

    before, after = measure(start), measure(model)

    def recovery(m):
        base = before["acc_f"]
        return 100.0 * m["recovered_acc_f"] / base if base and m["recovered_acc_f"] is not None else None

    out = {
        "images": after["images"], "forget_images": after["forget_images"], "folds": folds,
        "split": "the task's check images (validation split + training images outside its subsets), "
                 f"{folds}-fold cross-validated",
        "probe_f_before": before["probe_f"], "probe_f": after["probe_f"], "probe_r": after["probe_r"],
        "probe_drop": (None if before["probe_f"] is None or after["probe_f"] is None
                       else before["probe_f"] - after["probe_f"]),
        "acc_f_before": before["acc_f"], "recovered_acc_f": after["recovered_acc_f"], "recovery": recovery(after),
        "retrained": None, "probe_gap": None, "recovery_gap": None,
    }
    if retrained is not None:
        ref = measure(retrained)
        out["retrained"] = {"probe_f": ref["probe_f"], "recovery": recovery(ref)}
        if ref["probe_f"] is not None and after["probe_f"] is not None:
            out["probe_gap"] = after["probe_f"] - ref["probe_f"]
        if out["retrained"]["recovery"] is not None and out["recovery"] is not None:
            out["recovery_gap"] = out["recovery"] - out["retrained"]["recovery"]
    met = {}
    for name, (op, bound) in targets.items():
        value = out.get(name)
        if value is None:
            met[name] = name not in ("probe_gap", "recovery_gap")  # no forgotten image to score: nothing to read
            continue
        met[name] = bool(value >= bound if op == ">=" else value <= bound)
    out.update(target=spec, met=met, certified=all(met.values()), seconds=time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Run folders


def _load_model(path: Path, what: str):
    from .models.checkpoint import load_checkpoint
    from .models.loading import load_any

    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():  # an HF / timm folder (e.g. a run's final/)
        return load_any(path)
    if path.is_dir():
        if not (path / "final.safetensors").is_file():
            raise GsloraError(f"{what} {path} is a folder without a final model (final.safetensors); pass a finished "
                              "run folder or a .safetensors checkpoint.")
        path = path / "final.safetensors"
    return load_checkpoint(path)


def run_classes(results: dict) -> tuple[list[int], list[int]]:
    """Forgotten class ids (union over all tasks) and remaining ids (the last task's remain set) of a run."""
    tasks = results.get("plan", {}).get("tasks") or []
    if not tasks:
        raise GsloraError("the run's results.json has no task plan; it was not written by `gslora forget`.")
    forget = sorted({int(c) for t in tasks for c in t["forget"]})
    return forget, sorted(int(c) for c in tasks[-1]["remain"])


def audit_run(run_dir: str | Path, retrained: str | Path | None = None, original: str | Path | None = None,
              compare: dict | None = None, config: AuditConfig | None = None, data: DataBundle | None = None,
              out_dir: str | Path | None = None, write: bool = True, progress: bool = False,
              retrain_full: bool | dict = False, data_spec: str | None = None,
              strangers: str | DataBundle | None = None) -> dict:
    """Audit the final model of a finished run folder; write ``audit.json``, ``audit.md`` and plots to ``out_dir``
    (default ``RUN/audit``) when ``write``.

    ``original`` defaults to the run's recorded source checkpoint; ``data`` defaults to reloading the run's data spec
    (or ``data_spec``, e.g. the folder moved since the run) and seed; ``compare`` maps labels to run folders,
    checkpoints or models (e.g. a head-forgetting run).
    The retrain gap's reference: ``retrained`` (a checkpoint, or the folder of a ``retrain-full`` run), or with
    ``retrain_full`` (True, or a dict of :class:`~gslora.config.PretrainConfig` overrides) a ``retrain-full`` model
    trained here: from scratch on every training image of the run's remaining classes with the pre-training recipe.
    The recovery / relearn images are drawn outside the run's replay / forget subsets. ``strangers`` (a data spec or
    a DataBundle): classes no model here trained on, read by every model with the audit's probe
    (:func:`strangers_probe`).
    """
    from .data import load_data
    from .data.sources import BUNDLED
    from .models.loading import is_gslora_checkpoint, load_original

    finished = RunFolder.load(run_dir)
    run, results, rcfg = finished.folder.path, finished.results, finished.config
    if write:  # before any work: an unwritable output folder is said now, not after minutes of auditing
        check_writable(Path(out_dir) if out_dir is not None else run / "audit", "audit folder")
    if not finished.final_checkpoint.is_file():
        raise GsloraError(f"run folder {run} has no final model (final.safetensors); the run was interrupted or its "
                          "model was removed, so there is nothing to audit; rerun `gslora forget`.")
    model, meta = _load_model(finished.final_checkpoint, "run")
    src = original or results.get("source_checkpoint")
    if not src:
        raise GsloraError(f"run {run} does not record its source checkpoint; pass the original model with --original.")
    if not Path(src).with_suffix(".safetensors").is_file() and not Path(src).exists():
        raise GsloraError(f"the original model {src} of run {run} is gone; pass it with --original.")
    classes = meta["classes"]
    if model.config.get("imported") or model.config.get("head_subset") or not is_gslora_checkpoint(src):
        orig, orig_meta = load_original(src, model.config, classes)  # loaded, and classes matched, as the run did
    else:
        orig, orig_meta = _load_model(Path(src), "original model")
    if orig_meta["classes"] != classes:
        raise GsloraError(f"the original model {src} has other classes than the run's final model; pass the "
                          "checkpoint the run started from with --original.")
    if data is None:
        spec = data_spec or rcfg.data
        if spec not in BUNDLED and not Path(spec).expanduser().exists():
            raise GsloraError(f"the run's data folder {spec} does not exist (from here); pass it with --data.")
        data = load_data(spec, image_size=model.image_size, seed=rcfg.seed, split_ratio=rcfg.split_ratio,
                         val_ratio=rcfg.val_ratio, preprocessing=model.config.get("preprocessing"))
    check_data_matches(classes, data)
    if isinstance(strangers, (str, Path)):
        strangers = load_strangers(str(strangers), data_spec or rcfg.data, model, rcfg)
    forget, remain = run_classes(results)
    if retrained is not None and retrain_full:
        raise GsloraError("pass either a retrained model or retrain_full (train the reference here), not both.")
    retrained_model, retrained_by = None, None
    if retrained is not None:
        retrained_model, rmeta = _load_model(Path(retrained), "retrained model")
        if rmeta["classes"] != classes:
            raise GsloraError(f"the retrained model {retrained} has other classes than the run's model; it must keep "
                              "the same class list (and simply never have been trained on the forgotten ones).")
        retrained_by = _reference_method(Path(retrained))
    elif retrain_full:
        retrained_model, retrained_by = cached_reference(
            orig, src, rcfg.data if data_spec is None else data_spec, data, remain, rcfg.seed,
            retrain_full if isinstance(retrain_full, dict) else {}, (config or AuditConfig()).device, progress)
    seen = recorded_subsets(results)
    if seen is None:  # a run folder written before plan.json recorded its indices: re-derive them from its settings
        seen = run_subset_indices(data.train.targets, run_tasks(results), rcfg.seed, rcfg.replay_ratio, rcfg.shots,
                                  rcfg.min_replay, rcfg.old_forget_shots, rcfg.forget_minimum)
    others = {}
    for label, m in (compare or {}).items():
        if isinstance(m, nn.Module):
            others[label] = m
        else:
            others[label], cmeta = _load_model(Path(m), f"comparison model {label!r}")
            if cmeta["classes"] != classes:
                raise GsloraError(f"comparison model {m} has other classes than the run's model.")
    method = (results.get("method") or {}).get("method", "forgotten")
    extra = {"run": str(run.resolve()), "method": method, "original_checkpoint": str(src),
             "retrained_checkpoint": str(retrained) if retrained is not None else None, "retrained_by": retrained_by}
    report = audit(model, orig, data, forget, remain, retrained=retrained_model, compare=others, config=config,
                   progress=progress, extra=extra, seen=seen, strangers=strangers)
    if write:
        write_audit(Path(out_dir) if out_dir is not None else run / "audit", report)
    return report


def same_data(spec: str, other: str) -> bool:
    """Whether two data specs name the same data: the same bundled set, or the same folder however written."""
    from .data.sources import BUNDLED

    if spec in BUNDLED or other in BUNDLED:
        return spec == other
    return Path(spec).expanduser().resolve() == Path(other).expanduser().resolve()


def load_strangers(spec: str, run_spec: str, model, rcfg) -> DataBundle:
    """The strangers' data (``--strangers``) at ``model``'s image size, split as the run ``rcfg`` split its own; never
    the run's own data ``run_spec`` (its classes are not strangers)."""
    from .data import load_data
    from .data.sources import BUNDLED

    if spec not in BUNDLED and not Path(spec).expanduser().exists():
        raise GsloraError(f"the strangers' data {spec} does not exist: give a folder of classes none of the models "
                          "trained on (e.g. other people's photos), or a bundled set.")
    if same_data(spec, run_spec):
        raise GsloraError(f"--strangers {spec} is the run's own data: its classes were trained on. Give a dataset of "
                          "other classes (people no model here saw).")
    return load_data(spec, image_size=model.image_size, seed=rcfg.seed, split_ratio=rcfg.split_ratio,
                     val_ratio=rcfg.val_ratio, preprocessing=model.config.get("preprocessing"))


def reference_cache_dir() -> Path:
    """Where retrained references are kept: ``$GSLORA_CACHE/retrained`` (default ``~/.cache/gslora/retrained``)."""
    import os

    return Path(os.environ.get("GSLORA_CACHE", Path.home() / ".cache" / "gslora")) / "retrained"


def cached_reference(original, source, data_spec: str, data: DataBundle, remain, seed: int, overrides: dict,
                     device: str = "auto", progress: bool = False) -> tuple[nn.Module, dict]:
    """:func:`retrain_full_reference`, trained once per original checkpoint (its weights' hash), data (its spec, split
    sizes and classes), remaining classes, seed and recipe overrides: auditing several runs of one plan trains it
    once. Kept in :func:`reference_cache_dir` as a gslora checkpoint."""
    import hashlib
    import json as _json

    from ._version import __version__
    from .models.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
    from .record import weights_sha256

    key_data = {"weights": weights_sha256(original, []), "data": str(data_spec), "classes": list(data.classes),
                "sizes": [len(data.train), len(data.val), len(data.test)], "remain": sorted(int(c) for c in remain),
                "seed": int(seed), "overrides": overrides or {}, "gslora": __version__}
    key = hashlib.sha256(_json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = reference_cache_dir() / f"retrain-full-{key}.safetensors"
    weights, sidecar = checkpoint_paths(path)
    if weights.is_file() and sidecar.is_file():
        model, meta = load_checkpoint(weights)
        return model.eval(), {**meta.get("retrained_by", {}), "cache": str(weights), "cached": True}
    model, info = retrain_full_reference(original, data, remain, seed, overrides, device, progress)
    try:
        save_checkpoint(model, weights, list(data.classes), extra={"retrained_by": info, "cache_key": key_data})
    except OSError as e:  # a read-only cache only costs the next audit a retraining
        log.warning("could not keep the retrained reference in %s (%s)", weights, e)
    return model, {**info, "cache": str(weights), "cached": False}


def retrain_full_reference(template, data: DataBundle, remain, seed: int, overrides: dict | None = None,
                           device: str = "auto", progress: bool = False) -> tuple[nn.Module, dict]:
    """The ``retrain-full`` reference of a run: a fresh model of ``template``'s architecture (full-size head) trained
    from scratch on every training image of ``remain`` (validation: their validation images) with the pre-training
    recipe (PretrainConfig defaults, then ``seed`` and ``device``, then ``overrides``). Returns (model, what it is)."""
    from .distributed import resolve_device
    from .methods.retrain_full import recipe, retrain_from_scratch

    dev = resolve_device(device)
    cfg = recipe(dict(overrides or {}), seed, dev)
    model, stats, _ = retrain_from_scratch(template, data.train, data.val, remain, cfg, init_seed=seed, device=dev,
                                           progress=progress)
    keep = ("retrain_seconds", "train_images", "val_images", "max_steps", "steps", "best_step", "stopped_early",
            "train_acc", "val_acc", "learned")
    return model.eval(), {"method": "retrain-full", "trained_by": "the audit", **{k: stats.get(k) for k in keep}}


def _reference_method(path: Path) -> dict | None:
    """What made a retrained reference given as a run folder (its results.json); None for a checkpoint. A ``retrain``
    (paper) run trained on the replay subset only: the gap to it is not the literature's retrain gap (a warning)."""
    results = path / "results.json" if path.is_dir() else None
    if results is None or not results.is_file():
        return None
    method = (json.loads(results.read_text()).get("method") or {}).get("method")
    out = {"method": method, "trained_by": f"run {path}"}
    if method != "retrain-full":
        out["note"] = (f"the reference was made by {method!r}, not retrain-full (every training image of the "
                       "remaining classes, the pre-training recipe); the gap to it is not the usual retrain gap")
        log.warning("retrained reference %s: %s", path, out["note"])
    return out


def write_audit(out_dir: Path, report: dict) -> Path:
    """Plots and ``audit.md`` first, ``audit.json`` last (its presence marks a finished audit)."""
    out_dir = Path(out_dir)
    (out_dir / "audit.json").unlink(missing_ok=True)
    report["plots"] = [str(p.relative_to(out_dir)) for p in (
        save_figure(recovery_figure(report), out_dir / "recovery.png"),
        save_figure(probe_mia_figure(report), out_dir / "probe_mia.png"))]
    atomic_write_text(out_dir / "audit.md", audit_markdown(report))
    atomic_write_json(out_dir / "audit.json", report)
    return out_dir
