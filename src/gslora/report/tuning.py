"""A tuning (``gslora.tune``) as Markdown, and the lines a comparison's table adds about the values it ran with."""

from __future__ import annotations

import json

from .tables import fmt, markdown


def _show(v) -> str:
    if v is None:
        return "default"
    if isinstance(v, float):
        return f"{v:.3g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def values_text(values: dict | None) -> str:
    """``lr=0.003, bound=90`` from ``{"run": {...}, "args": {...}}`` (run knobs first; a nested key the recipe leaves
    at its default shows as ``default``)."""
    if not values:
        return "-"
    items = {**(values.get("run") or {}), **(values.get("args") or {})}
    return ", ".join(f"{k}={_show(v)}" for k, v in items.items()) or "-"


def space_text(space: dict) -> str:
    """``lr log [1e-05, 0.001]; lam log [1, 100]``."""
    parts = []
    for section in ("run", "args"):
        for key, spec in (space.get(section) or {}).items():
            kind, vals = next(iter(spec.items()))
            parts.append(f"{key} {kind} [{', '.join(_show(v) for v in vals)}]")
    return "; ".join(parts) or "-"


def _mean(rows: list[dict], key: str) -> float | None:
    if not rows or any(r[key] is None for r in rows):
        return None
    return sum(r[key] for r in rows) / len(rows)


def _label(method: str) -> str:
    from ..methods import method_label

    return method_label(method)


def tuning_markdown(tuned: dict) -> str:
    """The tuned document as a report: the plan and budget, the chosen values per method, then every trial."""
    d, plan = tuned["data"], tuned["plan"]
    detection = tuned.get("problem") == "detection"
    metric = "AP" if detection else "Acc"  # the validation H-Mean is on AP for a detector
    protocol = f", protocol {plan['protocol']}" if plan.get("protocol") else ""
    lines = [
        f"# Tuning: {tuned['setting']} on {d['name']}" + (" (detection)" if detection else ""),
        "",
        f"Budget: **{tuned['budget']} trials per method** ({tuned['sampler']} sampling, seed {tuned['seed']}; trial 1 "
        f"runs the packaged values). Plan: {plan['note']} (`{plan['tasks']}`{protocol}). "
        f"Selection: {tuned['selection']} gslora {tuned['gslora_version']}, {tuned['wall_seconds']:.0f} s in all.",
        "",
    ]
    rows = [["Method", "Chosen values", "Trial", "val H-Mean", "Search space", "Time (s)"]]
    for name, e in tuned["methods"].items():
        c = e["chosen"]
        none = ("not run: the setting withholds data it needs" if e["status"] == "not run"
                else "none: every trial failed")
        rows.append([_label(name), values_text(c["values"]) if c else none,
                     f"{c['trial']} of {len(e['trials'])}" if c else f"- of {len(e['trials'])}",
                     fmt(c["score"]) if c else "-", space_text(e["search_space"]), f"{e['wall_seconds']:.1f}"])
    lines += [markdown(rows), "", "## Every trial (validation split)", ""]
    rows = [["Method", "Trial", "Values", "val H-Mean", f"val {metric}_r", f"val {metric}_f", "Steps", "Status"]]
    for name, e in tuned["methods"].items():
        for t in e["trials"]:
            val = t["val"] or []
            status = "ok" if t["status"] == "ok" else (f"{t['status']}: " + (t["error"] or "")).replace("|", "/")[:120]
            rows.append([_label(name), str(t["trial"]), values_text(t["values"]), fmt(t["score"]),
                         fmt(_mean(val, f"{metric.lower()}_r")), fmt(_mean(val, f"{metric.lower()}_f")),
                         "-" if t["steps"] is None else str(t["steps"]), status])
    lines += [markdown(rows), ""]
    return "\n".join(lines)


def comparison_tuning_text(comparison: dict) -> str:
    """What a comparison table says about the values each method ran with: the tuning budget and the chosen values
    (``gslora benchmark --tuned``), or that every method ran at its packaged values."""
    tuning = comparison.get("tuning")
    if not tuning and comparison.get("problem") == "detection":
        return ("Values: every method at its packaged values (`src/gslora/configs/detection.yaml` and the method "
                "defaults of `gslora/detection/methods.py`), no tuning (`gslora tune --detection`, then `gslora "
                "benchmark --detection --tuned FILE`, gives each method the same trial budget).")
    if not tuning:
        return ("Values: every method at its packaged values (`src/gslora/configs/methods/<name>.yaml`), no tuning "
                "(`gslora tune`, then `gslora benchmark --tuned FILE`, gives each method the same trial budget).")
    plan = tuning.get("plan") or {}
    head = (f"Values: tuned by `gslora tune` with the same budget for every method, **{tuning['budget']} trials** "
            f"({tuning.get('sampler')} sampling) on {plan.get('note', 'the tuning plan')} (`{plan.get('tasks')}`), "
            "each chosen by validation H-Mean only (the test split was withheld while tuning)"
            + (f"; file `{tuning['file']}`" if tuning.get("file") else "") + ".")
    rows = [["Method", "Chosen values", "Trial", "val H-Mean (tuning)"]]
    for name, c in tuning["methods"].items():
        note = f" (overridden here: {', '.join(c['overridden'])})" if c.get("overridden") else ""
        rows.append([_label(name), values_text(c["values"]) + note, f"{c['trial']} of {c['trials']}",
                     fmt(c["val_score"])])
    return head + "\n\n" + markdown(rows)


def trial_line(method: str, trial: dict, budget: int, score: str = "val H", width: int = 12) -> str:
    """The line `gslora tune` prints after each trial: method, trial, score, values, time, and a failure's error."""
    value = "-" if trial["score"] is None else f"{trial['score']:.1f}"
    state = "" if trial["status"] == "ok" else f"  {trial['status'].upper()} ({trial['error']})"
    return (f"  {method:<{width}} trial {trial['trial']}/{budget}  {score} {value:>5}  {values_text(trial['values'])}"
            f"  {trial['wall_seconds']:.1f} s{state}")
