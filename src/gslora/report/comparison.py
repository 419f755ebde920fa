"""A comparison (``gslora.compare``) as Markdown / CSV tables and a :class:`~matplotlib.figure.Figure`."""

from __future__ import annotations

import csv
import io

from matplotlib.figure import Figure

from .tables import fmt, markdown
from .tuning import comparison_tuning_text


def _metric(comparison: dict) -> tuple[str, str]:
    """(key prefix, column name) of the comparison's metric: accuracy, or AP for a detection comparison."""
    return ("ap", "AP") if comparison.get("problem") == "detection" else ("acc", "Acc")


def _pretrained(r: dict) -> dict:
    """The pre-trained model's numbers on a task's sets (a detection row has them flat: ap_r_pretrained, ...)."""
    if "pretrained" in r:
        return r["pretrained"]
    return {"ap_r": r.get("ap_r_pretrained"), "ap_f": r.get("ap_f_pretrained")}


def _columns(comparison: dict) -> list[dict]:
    """One column group per run (single step) or per task (continual), with the Pre-train numbers of the first method
    that produced them (every method starts from the same model, so they agree)."""
    ok = [e for e in comparison["methods"] if e["status"] == "ok"]
    cols = []
    for i, plan in enumerate(comparison["plans"]):
        rows = ok[0]["runs"][i]["tasks"] if ok else []
        n_tasks = len(rows) if rows else 1
        for j in range(n_tasks):
            r = rows[j] if rows else None
            label = plan["label"] if comparison["setting"] == "single" else (r["setting"] if r else f"T{j + 1}")
            if comparison["setting"] != "single" and r:
                label = f"T{r['task']} {r['setting']}"
            cols.append({"run": i, "task": j, "label": label, "old": bool(r and r["n_old"]),
                         "missing": bool(r and r.get("n_missing")), "pre": _pretrained(r) if r else None})
    return cols


def _label(method: str) -> str:
    """The method's table name (``retrain`` is "retrain (paper)", ``retrain-full`` "retrain (full)")."""
    from ..methods import method_label

    return method_label(method)


def _cell_rows(entry: dict, col: dict) -> dict | None:
    if entry["status"] != "ok":
        return None
    return entry["runs"][col["run"]]["tasks"][col["task"]]


def has_acc_m(comparison: dict) -> bool:
    """Whether the comparison ran with missing classes (then every table shows Acc_m next to Acc_r)."""
    return any(c["missing"] for c in _columns(comparison))


def _status(entry: dict) -> str:
    if entry["status"] == "ok":
        return "ok"
    return f"{entry['status']}: " + entry["error"].replace("|", "/").replace("\n", " ")[:160]


def tunable_ratio_of(entry: dict) -> float | None:
    rows = [r for run in entry["runs"] for r in run["tasks"]]
    return sum(r["tunable_ratio"] for r in rows) / len(rows) if rows else None


def comparison_markdown_table(comparison: dict) -> str:
    """The paper's layout: method rows; tunable ratio; per setting / task H, Acc_r, Acc_m (with missing classes),
    Acc_f (and Acc_o); wall time. A failed method says so, a method the setting's data constraint rules out is
    marked "not run" with what it needs."""
    cols = _columns(comparison)
    k, name = _metric(comparison)
    header, sub = ["Method", "Tunable ratio"], ["", ""]
    pre = ["Pre-train", "-"]
    for c in cols:
        names = (["H ↑", f"{name}_r ↑"] + ([f"{name}_m ↑"] if c["missing"] else []) + [f"{name}_f ↓"]
                 + ([f"{name}_o ↓"] if c["old"] else []))
        header += [c["label"]] + [""] * (len(names) - 1)
        sub += names
        p = c["pre"] or {}
        pre += (["-", fmt(p.get(f"{k}_r"))] + ([fmt(p.get(f"{k}_m"))] if c["missing"] else [])
                + [fmt(p.get(f"{k}_f"))] + (["-"] if c["old"] else []))
    header += ["Time (s)", "Status"]
    sub += ["", ""]
    pre += ["", ""]
    lines = [header, sub, pre]
    for e in comparison["methods"]:
        ratio = tunable_ratio_of(e)
        line = [_label(e["method"]), "-" if ratio is None else f"{ratio:.2f}%"]
        for c in cols:
            r = _cell_rows(e, c)
            n = 3 + c["old"] + c["missing"]
            if r is None:
                line += [e["status"]] + ["-"] * (n - 1)
            else:
                line += ([fmt(r["h_mean"]), fmt(r[f"{k}_r"])] + ([fmt(r.get(f"{k}_m"))] if c["missing"] else [])
                         + [fmt(r[f"{k}_f"])] + ([fmt(r[f"{k}_o"])] if c["old"] else []))
        line += [f"{e['wall_seconds']:.1f}", _status(e)]
        lines.append(line)
    return markdown(lines)


def comparison_markdown(comparison: dict) -> str:
    d, m = comparison["data"], comparison["model"]
    plans = ", ".join(f"{p['label']} ({p['tasks']})" for p in comparison["plans"])
    constraint = comparison.get("constraint")
    setting_text = (f"Data constraint of this setting: {constraint}, the same for every method; a method that needs "
                    "more data is marked not run. " if constraint else "")
    if comparison.get("problem") == "detection":
        setting_text += ("Detection: COCO AP (.50:.95, %) instead of accuracy, on the test split; H-Mean of AP_r and "
                         "the drop of AP_f. ")
    if has_acc_m(comparison):
        setting_text += ("Acc_m: the missing classes (remaining, without any replay or validation data); Acc_r and "
                         "H-Mean: the remaining classes that keep their replay data. ")
    return "\n".join([
        f"# Forgetting comparison: {comparison['setting']} on {d['name']}",
        "",
        f"Model `{m['arch']}` ({m['num_classes']} classes), {comparison['epochs']} epochs per task, seed "
        f"{comparison['seed']}, gslora {comparison['gslora_version']}. Runs: {plans}. Every method starts from the "
        "same checkpoint with the same task plan and replay / forget subsets. Accuracies in %, test split; H-Mean uses "
        "the drop from the start of each task (both retrains: from the pre-trained model; retrain (paper) trains on "
        "the replay subset, retrain (full) on every training image of the remaining classes with the pre-training "
        "recipe). Tunable ratio: mean over tasks of "
        "trainable / all parameters (SSD: parameters it dampened). Time: wall seconds for all runs of the method. "
        + setting_text,
        "",
        comparison_markdown_table(comparison),
        "",
        *([comparison_depth_text(comparison), ""] if comparison.get("depth") else []),
        comparison_tuning_text(comparison),
        "",
    ])


def comparison_depth_table(comparison: dict) -> str:
    """Depth per method and run (``gslora benchmark --depth``): probe Acc_f, recovery, MIA AUC, and the distance of
    the first two to the model retrained without the forgotten classes (+: shallower than it)."""
    depth = comparison["depth"]["runs"]
    lines = [["Method", "Run", "Acc_f", "Probe Acc_f ↓", "Recovery (%) ↓", "MIA AUC", "Probe − retrained",
              "Recovery − retrained"]]
    for label, run in depth.items():
        for name, key in (("original", "original"), ("retrain (reference)", "retrained")):
            m = run[key]
            lines.append([name, label, fmt(m["acc_f"]), fmt(m["probe_f"]), fmt(m["recovery"]),
                          fmt(m["mia_auc"], 3), "-", "-"])
        for method, m in run["methods"].items():
            gap = [("-" if m[k] is None else f"{m[k]:+.1f}") for k in ("probe_gap", "recovery_gap")]
            lines.append([_label(method), label, fmt(m["acc_f"]), fmt(m["probe_f"]), fmt(m["recovery"]),
                          fmt(m["mia_auc"], 3), *gap])
    return markdown(lines)


def comparison_depth_text(comparison: dict) -> str:
    return "\n".join([
        "## Depth",
        "",
        "Each method's model after the run's last task, audited with every forgotten class: probe Acc_f (a linear "
        "probe on the embeddings, test split), recovery (Acc_f after 20 epochs of head retraining on training images "
        "no run used, % of the original's) and MIA AUC, against a model retrained from scratch without the forgotten "
        "classes (`gslora audit --retrain-full`'s reference) and the original. The gaps are points above the retrained "
        "model (0: as deep as retraining; +: shallower).",
        "",
        comparison_depth_table(comparison),
    ])


CSV_FIELDS = ["method", "status", "run", "task", "setting", "tunable_ratio", "h_mean", "acc_r", "acc_m", "acc_f",
              "acc_o", "n_missing", "drop", "acc_f_before", "acc_r_pretrained", "acc_f_pretrained", "val_h_mean",
              "trainable_params", "steps", "train_seconds", "wall_seconds", "method_wall_seconds", "error"]

DETECTION_CSV_FIELDS = ["method", "status", "run", "task", "setting", "tunable_ratio", "h_mean", "ap_r", "ap_f", "ap_o",
                        "drop", "ap_f_before", "ap_r_pretrained", "ap_f_pretrained", "val_h_mean", "trainable_params",
                        "steps", "train_seconds", "wall_seconds", "method_wall_seconds", "error"]


def comparison_csv(comparison: dict) -> str:
    """Long format: one line per method and task (one line for a failed method); AP columns for detection."""
    detection = comparison.get("problem") == "detection"
    fields = DETECTION_CSV_FIELDS if detection else CSV_FIELDS
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for e in comparison["methods"]:
        if e["status"] != "ok":
            w.writerow({"method": e["method"], "status": e["status"], "error": e["error"],
                        "method_wall_seconds": f"{e['wall_seconds']:.2f}"})
            continue
        for run in e["runs"]:
            for r in run["tasks"]:
                # a detection row has its pre-trained / before numbers flat (ap_r_pretrained, ...), in fields already
                nested = {} if detection else {"acc_f_before": r["before"]["acc_f"],
                                               "acc_r_pretrained": r["pretrained"]["acc_r"],
                                               "acc_f_pretrained": r["pretrained"]["acc_f"]}
                w.writerow({**{k: r.get(k) for k in fields if k in r}, "method": e["method"], "status": "ok",
                            "run": run["label"], **nested, "val_h_mean": r["val"]["h_mean"],
                            "method_wall_seconds": f"{e['wall_seconds']:.2f}"})
    return buf.getvalue()


def h_mean_figure(comparison: dict, key: str = "h_mean") -> Figure:
    """H-Mean (or another metric of the task rows, ``key``: e.g. ``acc_m``) per setting (single step) or task
    (continual and its constrained variants), one line per method."""
    cols = _columns(comparison)
    x = list(range(len(cols)))
    fig = Figure(figsize=(max(6, 1.4 * len(cols) + 3), 4.5))
    ax = fig.subplots()
    for e in comparison["methods"]:
        if e["status"] != "ok":
            continue
        pts = [(i, _cell_rows(e, c).get(key)) for i, c in zip(x, cols) if _cell_rows(e, c).get(key) is not None]
        if pts:
            ours = e["method"] in ("gslora", "gslora++")
            ax.plot(*zip(*pts), "o-" if ours else ".--", label=_label(e["method"]), linewidth=2.5 if ours else 1.2)
    ax.set_xticks(x, [c["label"] for c in cols])
    ax.set_xlabel("setting" if comparison["setting"] == "single" else "task")
    name = {"h_mean": "H-Mean", "acc_m": "Acc_m (missing classes)", "acc_r": "Acc_r"}.get(key, key)
    ax.set_ylabel(f"{name} (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{name} per {'setting' if comparison['setting'] == 'single' else 'task'} and method "
                 f"({comparison['data']['name']}, {comparison['setting']})")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig
