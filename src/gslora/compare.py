"""The comparison: every method from the same checkpoint, task plan and replay / forget subsets (one seed).

- ``single``: the paper's 100−Y settings scaled to the class count C (Y = 5%, 10%, 50%, 90% of C), one run each;
- ``continual``: 4 tasks of 20% of the classes each.

Output folder: ``comparison.md``, ``comparison.csv``, ``comparison.json`` (written last: its presence marks a
finished comparison), ``plots/h_mean.png`` and ``runs/<method>/<run label>/``, each method's run folder (so a killed
comparison continues with ``resume=True``: finished runs are read back, an unfinished one resumes). A method that
raises is reported as failed with its error; the others still run.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import shutil
import time
import traceback
from pathlib import Path

from matplotlib.figure import Figure

from ._version import __version__
from .config import RunConfig, from_dict, to_dict
from .data.base import DataBundle
from .errors import GsloraError
from .files import atomic_write_json, atomic_write_text
from .forget import run_forgetting
from .methods import get_method, list_methods
from .presets import resolve
from .report import fmt, markdown, save_figure
from .rundir import RunFolder

log = logging.getLogger(__name__)

SETTINGS = ("single", "continual")
SINGLE_FRACTIONS = (0.05, 0.10, 0.50, 0.90)
CONTINUAL_TASKS, CONTINUAL_FRACTION = 4, 0.20


def setting_plans(setting: str, num_classes: int) -> list[tuple[str, str]]:
    """(label, tasks spec) of each run of a setting. Single step: ``C-Y`` for Y = round(p·C), at least 1 and leaving
    at least one class; continual: one run ``4xK`` with K = round(0.2·C)."""
    if setting == "single":
        out = []
        for p in SINGLE_FRACTIONS:
            y = min(max(1, round(p * num_classes)), num_classes - 1)
            if all(spec != f"1x{y}" for _, spec in out):
                out.append((f"{num_classes}-{y}", f"1x{y}"))
        return out
    if setting == "continual":
        k = max(1, round(CONTINUAL_FRACTION * num_classes))
        if CONTINUAL_TASKS * k >= num_classes:
            raise GsloraError(f"the continual setting forgets {CONTINUAL_TASKS} x {k} classes, which needs more than "
                              f"{CONTINUAL_TASKS * k} classes; the model has {num_classes}.")
        return [("continual", f"{CONTINUAL_TASKS}x{k}")]
    raise GsloraError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}.")


def parse_methods(spec: str | list[str]) -> list[str]:
    """``"all"`` or a comma-separated list of method names (checked against the registry)."""
    names = spec if isinstance(spec, list) else [m.strip() for m in spec.split(",") if m.strip()]
    if names == ["all"]:
        return list_methods()
    if not names:
        raise GsloraError("--methods is empty; pass 'all' or names like gslora,ewc,lwf.")
    unknown = [m for m in names if m not in list_methods()]
    if unknown:
        raise GsloraError(f"unknown method {unknown[0]!r}; choose from {', '.join(list_methods())} or 'all'.")
    return list(dict.fromkeys(names))


def method_config(name: str, base: dict, tasks: str, own: dict | None = None) -> RunConfig:
    """The run config of one method: the user's shared ``base``, then ``own`` (run settings for this method only),
    then the task plan, resolved (:func:`gslora.presets.resolve`: what is still unset comes from the method preset)."""
    data = {**base, **(own or {}), "method": name, "tasks": tasks}
    return resolve(from_dict(RunConfig, data, where=f"comparison config ({name})"))


def run_comparison(model, classes: list[str], data: DataBundle, setting: str, methods: list[str] | str = "all",
                  base_config: dict | None = None, method_args: dict[str, dict] | None = None,
                  out_dir: str | Path | None = None, overwrite: bool = False, progress: bool = False,
                  on_method_done=None, source_checkpoint: str | Path | None = None,
                  method_run: dict[str, dict] | None = None, resume: bool = False) -> dict:
    """Run every method of ``methods`` on a fresh copy of ``model`` for each run of ``setting``; return (and write
    to ``out_dir``) the comparison. ``method_args``: per-method overrides of the packaged defaults;
    ``method_run``: per-method run settings (e.g. ``{"gslora": {"lr": 3e-3}}``) over the shared ``base_config``.
    ``on_method_done(entry)`` is called after each method (the CLI prints progress with it). ``resume``: continue a
    killed comparison in ``out_dir`` (every method run has its own run folder under ``runs/``)."""
    names = parse_methods(methods)
    plans = setting_plans(setting, len(classes))
    base = dict(base_config or {})
    if "method_args" in base:
        raise GsloraError("the comparison's shared config must not hold method_args (they differ per method); pass "
                          "per-method overrides instead (--method-set METHOD.KEY=VALUE).")
    base.pop("method", None)
    base.pop("tasks", None)
    method_args = dict(method_args or {})
    method_run = dict(method_run or {})
    unknown = [m for m in (*method_args, *method_run) if m not in names]
    if unknown:
        raise GsloraError(f"method arguments given for {unknown[0]!r}, which is not compared; compared: "
                          f"{', '.join(names)}.")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if (out / "comparison.json").exists() and not overwrite:
            raise GsloraError(f"{out} already holds a finished comparison (comparison.json); choose another --out or "
                              "pass --overwrite.")
        if (out / "runs").is_dir() and not (overwrite or resume):
            raise GsloraError(f"{out} holds an unfinished comparison; pass --resume to continue it or --overwrite to "
                              "start over.")
        if overwrite:
            shutil.rmtree(out / "runs", ignore_errors=True)
            (out / "comparison.json").unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    base_cfg = method_config(names[0], base, plans[0][1])  # validates the shared keys once, before any run
    entries = []
    for name in names:
        entry = {"method": name, "status": "ok", "error": None, "runs": [], "wall_seconds": 0.0}
        t0 = time.perf_counter()
        try:
            for label, tasks in plans:
                cfg = method_config(name, base, tasks, method_run.get(name))
                method = get_method(name, **method_args.get(name, {}))
                run_dir = out / "runs" / name / label if out is not None else None
                if resume and run_dir is not None and RunFolder(run_dir).is_finished():
                    results = RunFolder.load(run_dir).results
                else:
                    results = run_forgetting(copy.deepcopy(model), classes, data, cfg, method=method,
                                             progress=progress, out_dir=run_dir, resume=resume,
                                             source_checkpoint=source_checkpoint).results
                entry["runs"].append({"label": label, "tasks_spec": tasks, "config": to_dict(cfg),
                                      "method": method.describe(), "tasks": results["tasks"],
                                      "wall_seconds": results["wall_seconds"]})
        except Exception as e:  # a failing method is reported, the others still run
            entry["status"] = "failed"
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc(limit=8)
            log.warning("method %s failed: %s", name, entry["error"])
        entry["wall_seconds"] = time.perf_counter() - t0
        entries.append(entry)
        if on_method_done is not None:
            on_method_done(entry)
    comparison = {
        "gslora_version": __version__,
        "setting": setting,
        "plans": [{"label": label, "tasks": tasks} for label, tasks in plans],
        "seed": base_cfg.seed,
        "epochs": base_cfg.epochs,
        "data": data.describe(),
        "model": dict(model.config),
        "source_checkpoint": str(Path(source_checkpoint).resolve()) if source_checkpoint else None,
        "methods": entries,
    }
    if out is not None:
        write_comparison(out, comparison)
    return comparison


# ---------------------------------------------------------------------------------------------------------------------
# Tables and plot


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
            if comparison["setting"] == "continual" and r:
                label = f"T{r['task']} {r['setting']}"
            cols.append({"run": i, "task": j, "label": label, "old": bool(r and r["n_old"]),
                         "pre": r["pretrained"] if r else None})
    return cols


def _cell_rows(entry: dict, col: dict) -> dict | None:
    if entry["status"] != "ok":
        return None
    return entry["runs"][col["run"]]["tasks"][col["task"]]


def tunable_ratio_of(entry: dict) -> float | None:
    rows = [r for run in entry["runs"] for r in run["tasks"]]
    return sum(r["tunable_ratio"] for r in rows) / len(rows) if rows else None


def comparison_markdown_table(comparison: dict) -> str:
    """The paper's layout: method rows; tunable ratio; per setting / task H, Acc_r, Acc_f (and Acc_o); wall time."""
    cols = _columns(comparison)
    header, sub = ["Method", "Tunable ratio"], ["", ""]
    pre = ["Pre-train", "-"]
    for c in cols:
        names = ["H ↑", "Acc_r ↑", "Acc_f ↓"] + (["Acc_o ↓"] if c["old"] else [])
        header += [c["label"]] + [""] * (len(names) - 1)
        sub += names
        p = c["pre"] or {}
        pre += ["-", fmt(p.get("acc_r")), fmt(p.get("acc_f"))] + (["-"] if c["old"] else [])
    header += ["Time (s)", "Status"]
    sub += ["", ""]
    pre += ["", ""]
    lines = [header, sub, pre]
    for e in comparison["methods"]:
        ratio = tunable_ratio_of(e)
        line = [e["method"], "-" if ratio is None else f"{ratio:.2f}%"]
        for c in cols:
            r = _cell_rows(e, c)
            n = 4 if c["old"] else 3
            if r is None:
                line += ["failed"] + ["-"] * (n - 1)
            else:
                line += [fmt(r["h_mean"]), fmt(r["acc_r"]), fmt(r["acc_f"])] + ([fmt(r["acc_o"])] if c["old"] else [])
        status = "ok" if e["status"] == "ok" else "failed: " + e["error"].replace("|", "/").replace("\n", " ")[:160]
        line += [f"{e['wall_seconds']:.1f}", status]
        lines.append(line)
    return markdown(lines)


def comparison_markdown(comparison: dict) -> str:
    d, m = comparison["data"], comparison["model"]
    plans = ", ".join(f"{p['label']} ({p['tasks']})" for p in comparison["plans"])
    return "\n".join([
        f"# Forgetting comparison: {comparison['setting']} on {d['name']}",
        "",
        f"Model `{m['arch']}` ({m['num_classes']} classes), {comparison['epochs']} epochs per task, seed "
        f"{comparison['seed']}, gslora {comparison['gslora_version']}. Runs: {plans}. Every method starts from the "
        "same checkpoint with the same task plan and replay / forget subsets. Accuracies in %, test split; H-Mean uses "
        "the drop from the start of each task (Retrain: from the pre-trained model). Tunable ratio: mean over tasks of "
        "trainable / all parameters (SSD: parameters it dampened). Time: wall seconds for all runs of the method.",
        "",
        comparison_markdown_table(comparison),
        "",
    ])


CSV_FIELDS = ["method", "status", "run", "task", "setting", "tunable_ratio", "h_mean", "acc_r", "acc_f", "acc_o",
              "drop", "acc_f_before", "acc_r_pretrained", "acc_f_pretrained", "val_h_mean", "trainable_params", "steps",
              "train_seconds", "wall_seconds", "method_wall_seconds", "error"]


def comparison_csv(comparison: dict) -> str:
    """Long format: one line per method and task (one line for a failed method)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for e in comparison["methods"]:
        if e["status"] != "ok":
            w.writerow({"method": e["method"], "status": e["status"], "error": e["error"],
                        "method_wall_seconds": f"{e['wall_seconds']:.2f}"})
            continue
        for run in e["runs"]:
            for r in run["tasks"]:
                w.writerow({**{k: r.get(k) for k in CSV_FIELDS if k in r}, "method": e["method"], "status": "ok",
                            "run": run["label"], "acc_f_before": r["before"]["acc_f"],
                            "acc_r_pretrained": r["pretrained"]["acc_r"], "acc_f_pretrained": r["pretrained"]["acc_f"],
                            "val_h_mean": r["val"]["h_mean"], "method_wall_seconds": f"{e['wall_seconds']:.2f}"})
    return buf.getvalue()


def h_mean_figure(comparison: dict) -> Figure:
    """H-Mean per setting (single step) or task (continual), one line per method."""
    cols = _columns(comparison)
    x = list(range(len(cols)))
    fig = Figure(figsize=(max(6, 1.4 * len(cols) + 3), 4.5))
    ax = fig.subplots()
    for e in comparison["methods"]:
        if e["status"] != "ok":
            continue
        pts = [(i, _cell_rows(e, c)["h_mean"]) for i, c in zip(x, cols) if _cell_rows(e, c)["h_mean"] is not None]
        if pts:
            style = "o-" if e["method"] == "gslora" else ".--"
            ax.plot(*zip(*pts), style, label=e["method"], linewidth=2.5 if e["method"] == "gslora" else 1.2)
    ax.set_xticks(x, [c["label"] for c in cols])
    ax.set_xlabel("setting" if comparison["setting"] == "single" else "task")
    ax.set_ylabel("H-Mean (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"H-Mean per {'setting' if comparison['setting'] == 'single' else 'task'} and method "
                 f"({comparison['data']['name']})")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def write_comparison(out_dir: Path, comparison: dict) -> None:
    """Plot, Markdown and CSV first; ``comparison.json`` last, so its presence means the comparison finished."""
    out_dir = Path(out_dir)
    comparison["plots"] = [str(save_figure(h_mean_figure(comparison), out_dir / "plots" / "h_mean.png")
                               .relative_to(out_dir))]
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(comparison))
    atomic_write_text(out_dir / "comparison.csv", comparison_csv(comparison))
    atomic_write_json(out_dir / "comparison.json", comparison)


run_benchmark = run_comparison  # the earlier name
