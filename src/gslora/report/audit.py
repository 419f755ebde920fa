"""An audit report (``gslora.audit``) as Markdown tables and :class:`~matplotlib.figure.Figure` objects."""

from __future__ import annotations

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .tables import fmt, markdown


def recovery_summary(rec: dict) -> str:
    """"epoch k" or "not within N epochs"."""
    if rec["recovered_at_epoch"] is None:
        return f"not within {rec['epochs'][-1]} epochs"
    return f"epoch {rec['recovered_at_epoch']}"


def relearn_summary(rel: dict | None) -> str:
    if rel is None:
        return "-"
    best = max((a for a in rel["acc_f"] if a is not None), default=None)
    if rel["relearned_at_epoch"] is None:
        return f"> {rel['max_epochs']} (max Acc_f {fmt(best)})"
    return f"{rel['relearned_at_epoch']} (max Acc_f {fmt(best)})"


def images_sentence(images: dict | None) -> str:
    """Which training images the recovery and relearn tests used, and the classes that had none unseen."""
    if not images:
        return ""
    if images.get("run_images") is None:
        return f"Images: {images['source']}."
    text = (f"Images: {images['source']} ({images['run_images']} images used by the run; {images['recovery_images']} "
            f"for the recovery test, {images['relearn_images']} for relearning).")
    n = images.get("classes_without_unseen") or 0
    if n:
        names = images.get("forget_classes_without_unseen") or []
        text += (f" **{n} classes had no unseen training image** ({len(names)} forgotten"
                 + (f": {', '.join(map(str, names[:10]))}" + (", ..." if len(names) > 10 else "") if names else "")
                 + f"; {images['remain_classes_without_unseen']} remaining); {images['fallback']}.")
    else:
        text += " Every class had unseen training images."
    if images.get("classes_short"):
        text += f" {images['classes_short']} classes had fewer unseen images than the ratio asks; all were used."
    return text


def _label(report: dict, key: str) -> str:
    return f"{report.get('method', 'forgotten')} (audited)" if key == "forgotten" else key


def audit_tables(report: dict) -> dict[str, str]:
    """Markdown tables: ``evidence`` (accuracy, probe, MIA per model), ``recovery`` and, with a retrained model,
    ``gap``."""
    models = report["models"]
    rows = [["Model", "Acc_f (test)", "Acc_r (test)", "Probe Acc_f (test)", "Probe Acc_r (test)",
             "MIA acc (forget train vs test)", "MIA advantage |AUC − 0.5|", "MIA AUC"]]
    for key, m in models.items():
        rows.append([_label(report, key), fmt(m["accuracy"]["acc_f"]), fmt(m["accuracy"]["acc_r"]),
                     fmt(m["probe"]["acc_f"]), fmt(m["probe"]["acc_r"]), fmt(m["mia"]["accuracy"], 3),
                     fmt(mia_advantage(m["mia"]), 3), fmt(m["mia"]["auc"], 3)])
    tables = {"evidence": markdown(rows)}
    if report.get("strangers"):
        tables["strangers"] = strangers_table(report)
    cfg = report["config"]
    orig_f = models["original"]["accuracy"]["acc_f"]
    rows = [["Model", "Acc_f epoch 0", f"Acc_f epoch {cfg['epochs']}", "max Acc_f", f"% of original ({fmt(orig_f)})",
             f"Acc_r epoch {cfg['epochs']}", f"reaches {cfg['threshold']:.0%} of original Acc_f",
             f"relearn epochs to {cfg['relearn_fraction']:.0%} of original (whole model)"]]
    for key, m in models.items():
        rec = m.get("recovery")
        if rec is None:
            continue
        frac = rec["recovered_fraction"]
        rows.append([_label(report, key), fmt(rec["acc_f"][0]), fmt(rec["final_acc_f"]), fmt(rec["max_acc_f"]),
                     "-" if frac is None else f"{100 * frac:.0f}%", fmt(rec["final_acc_r"]), recovery_summary(rec),
                     relearn_summary(m.get("relearn"))])
    tables["recovery"] = markdown(rows)
    gap = report.get("retrain_gap")
    if gap:
        tables["gap"] = markdown([["ΔAcc_f", "ΔAcc_r", "ΔMIA (acc, %)", "ΔProbe Acc_f", "average"],
                                   [fmt(gap["acc_f"]), fmt(gap["acc_r"]), fmt(gap["mia"]), fmt(gap["probe_acc_f"]),
                                    fmt(gap["average"])]])
    depth = report.get("depth")
    if depth:
        rows = [["Model", "probe Acc_f depth", "recovery depth", "MIA depth", "shallowest class (probe / recovery)"]]
        for key, d in depth.items():
            per = d.get("per_class") or {}
            worst = []
            for name in ("probe_f", "recovery"):
                known = [(v[name], c) for c, v in per.items() if v[name] is not None]
                worst.append(f"{min(known)[1]} {min(known)[0]:.0f}%" if known else "-")
            worst = " / ".join(worst)
            rows.append([_label(report, key), _pct(d["probe_f"]), _pct(d["recovery"]), _pct(d["mia"]), worst])
        tables["depth"] = markdown(rows)
    return tables


def strangers_table(report: dict) -> str:
    """Per model, the audit's probe on the forgotten classes and on the strangers (classes no model trained on), and
    each one's distance from the original: what a model lost on the strangers it lost in general, not by forgetting."""
    models = report["models"]
    orig = models["original"]
    rows = [["Model", "Probe Acc_f (test)", "below the original", "Probe on strangers (test)", "below the original"]]
    for key, m in models.items():
        f, st = m["probe"]["acc_f"], (m.get("strangers_probe") or {}).get("acc")
        below_f = None if f is None or orig["probe"]["acc_f"] is None else orig["probe"]["acc_f"] - f
        below_s = None if st is None or orig["strangers_probe"]["acc"] is None else orig["strangers_probe"]["acc"] - st
        rows.append([_label(report, key), fmt(f), fmt(below_f), fmt(st), fmt(below_s)])
    return markdown(rows)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0f}%"


def audit_markdown(report: dict) -> str:
    t = audit_tables(report)
    cfg, d = report["config"], report["data"]
    parts = [
        f"# Forgetting audit: {report.get('method', 'model')} on {d['name']}",
        "",
        f"{report['classes']['n_forget']} forgotten and {report['classes']['n_remain']} remaining classes; splits: "
        f"train {d['train']}, test {d['test']} images. Device {report['device']}, {report['wall_seconds']:.1f} s.",
        "",
        "## Accuracy, linear probe, membership inference",
        "",
        "Accuracies in % on the test split, top-1 over all classes. Probe: logistic regression on the frozen "
        "penultimate features of the train split (all classes), scored on the test split. MIA: loss-based attack "
        f"({cfg['mia_folds']}-fold cross-validated logistic regression on the per-sample loss, balanced) telling the "
        "forgotten classes' train split images from their test split images. The advantage |AUC − 0.5| is the "
        "membership signal either way (an AUC of 0.2 tells members apart as well as one of 0.8): 0 = none.",
        "",
        t["evidence"],
        "",
        "## Recovery test (paper Fig. 6)",
        "",
        f"Backbone frozen, head retrained for {cfg['epochs']} epochs (AdamW lr {cfg['recovery_lr']:g}, CE with the "
        f"training margin) on {cfg['ratio']:g} of each forgotten and remaining class's train split images; accuracies "
        f"on the test split. Relearn: the whole model fine-tuned (AdamW lr {cfg['relearn_lr']:g}) on {cfg['ratio']:g} "
        f"of the forgotten classes' train split images, at most {cfg['relearn_epochs']} epochs. "
        + images_sentence(report.get("audit_images")),
        "",
        t["recovery"],
        "",
    ]
    if "gap" in t:
        ref = report.get("retrained_by") or {}
        what = (f" (made by {ref['method']}, {ref['trained_by']}"
                + (f", {ref['retrain_seconds']:.0f} s" if ref.get("retrain_seconds") is not None else "") + ")"
                if ref.get("method") else "")
        parts += ["## Gap to the retrained model", "",
                  f"Absolute differences to the retrained model{what} in percentage points (lower is better)."
                  + (f" Note: {ref['note']}." if ref.get("note") else ""), "",
                  t["gap"], ""]
    if "strangers" in t:
        st = report["strangers"]
        parts += ["## People no model saw", "",
                  f"The same probe fit on the train split of {st['name']} ({st['classes']} classes none of these "
                  f"models trained on, {st['train']} train / {st['test']} test images) and scored on its test split. "
                  "A model that reads these strangers below the original lost that much in general (a retrained "
                  "reference learnt from fewer classes); only the rest of its distance on the forgotten classes is "
                  "forgetting of them.", "", t["strangers"], ""]
    if "depth" in t:
        parts += ["## Depth: between the original (0%) and the retrained model (100%)", "",
                  "Where each forgotten model sits between the original model and the model retrained without the "
                  "forgotten classes, for the probe's Acc_f, the recovery test (Acc_f after head retraining) and the "
                  "membership signal (MIA advantage): 0% is as shallow as the original, 100% as deep as retraining, "
                  "above 100% deeper. The recovery test ran on both references too. Per class (probe, recovery) in "
                  "audit.json under depth; the table names the shallowest class.", "", t["depth"], ""]
    return "\n".join(parts)


def recovery_figure(report: dict) -> Figure:
    """Forgotten / remaining test accuracy per epoch of head retraining, per model (the paper's Fig. 6)."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    orig = report["models"]["original"]["accuracy"]
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    ax.axhline(orig["acc_f"], color="grey", ls=":", label="original Acc_f")
    deep = [(k, m) for k, m in report["models"].items() if m.get("recovery")]
    for i, (key, m) in enumerate(deep):
        rec, c = m["recovery"], colors[(i + 1) % len(colors)]
        ax.plot(rec["epochs"], rec["acc_f"], "o-", ms=3, color=c, label=f"{_label(report, key)}: forgotten")
        ax.plot(rec["epochs"], rec["acc_r"], "--", color=c, alpha=0.7, label=f"{_label(report, key)}: remaining")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch of head retraining (backbone frozen)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Recovery test on {report['data']['name']}")
    ax.legend(fontsize=7)
    return fig


def mia_advantage(mia: dict) -> float:
    """The membership signal of an attack, either way: |AUC − 0.5| (0 = none, 0.5 = perfect)."""
    return abs(mia["auc"] - 0.5)


def probe_mia_figure(report: dict) -> Figure:
    """Linear-probe accuracy on the forgotten classes and membership-inference AUC, per model."""
    keys = list(report["models"])
    labels = [_label(report, k).replace(" (audited)", "") for k in keys]
    fig = Figure(figsize=(9, 3.6))
    a1, a2 = fig.subplots(1, 2)
    a1.bar(labels, [report["models"][k]["probe"]["acc_f"] or 0 for k in keys], color="tab:purple")
    a1.set_ylabel("probe accuracy on forgotten classes (%)")
    a1.set_ylim(0, 102)
    a1.set_title("Linear probe (fit: train, score: test)")
    a2.bar(labels, [mia_advantage(report["models"][k]["mia"]) for k in keys], color="tab:orange")
    for x, k in enumerate(keys):
        a2.annotate(f"AUC {report['models'][k]['mia']['auc']:.2f}", (x, mia_advantage(report["models"][k]["mia"])),
                    ha="center", va="bottom", fontsize=7)
    a2.set_ylim(0, 0.55)
    a2.set_ylabel("MIA advantage |AUC − 0.5| (0: no signal)")
    a2.set_title("Membership inference (forgotten classes)")
    for a in (a1, a2):
        a.tick_params(axis="x", labelrotation=20, labelsize=8)
    return fig
