"""The comparison: every method from the same checkpoint, task plan and replay / forget subsets (one seed).

- ``single``: the paper's 100−Y settings scaled to the class count C (Y = 5%, 10%, 50%, 90% of C), one run each;
- ``continual``: 4 tasks of 20% of the classes each;
- ``few-shot`` and ``missing``: the continual plan under a data constraint of GS-LoRA++ (the GS-LoRA++ paper,
  :mod:`gslora.practical`): 4 images per class with batch 4, or half of the remaining classes without any data
  (Acc_m). A method that needs data the constraint withholds is marked "not run" in the table instead of running on
  more data than the others.

Output folder: ``comparison.md``, ``comparison.csv``, ``comparison.json`` (written last: its presence marks a
finished comparison), ``plots/h_mean.png`` and ``runs/<method>/<run label>/``, each method's run folder (so a killed
comparison continues with ``resume=True``: finished runs are read back, an unfinished one resumes). A method that
raises is reported as failed with its error; the others still run.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
import traceback
from pathlib import Path

from ._version import __version__
from .config import RunConfig, to_dict
from .data.base import DataBundle
from .errors import GsloraError
from .files import atomic_write_json, atomic_write_text
from .forget import run_forgetting
from .methods import get_method, get_problem_method
from .practical import DataConstraintError
from .report import save_figure
from .report.comparison import (  # noqa: F401 (rendering lives in gslora.report; re-exported here)
    comparison_csv,
    comparison_markdown,
    comparison_markdown_table,
    h_mean_figure,
    has_acc_m,
    tunable_ratio_of,
)
from .rundir import RunFolder
from .settings import (  # noqa: F401 (the settings live in gslora.settings, which gslora.tune reads too)
    CONTINUAL_FRACTION,
    CONTINUAL_TASKS,
    SETTING_CONSTRAINTS,
    SETTINGS,
    SINGLE_FRACTIONS,
    make_problem,
    method_config,
    parse_methods,
    setting_plans,
)

log = logging.getLogger(__name__)

def run_comparison(model, classes: list[str], data: DataBundle, setting: str, methods: list[str] | str = "all",
                  base_config: dict | None = None, method_args: dict[str, dict] | None = None,
                  out_dir: str | Path | None = None, overwrite: bool = False, progress: bool = False,
                  on_method_done=None, source_checkpoint: str | Path | None = None,
                  method_run: dict[str, dict] | None = None, resume: bool = False,
                  tuned: dict | str | Path | None = None, problem: str = "classification",
                  depth: bool | dict = False, strict: bool = False) -> dict:
    """Run every method of ``methods`` on a fresh copy of ``model`` for each run of ``setting``; return (and write
    to ``out_dir``) the comparison. ``method_args``: per-method overrides of the packaged defaults;
    ``method_run``: per-method run settings (e.g. ``{"gslora": {"lr": 3e-3}}``) over the shared ``base_config``.
    ``on_method_done(entry)`` is called after each method (the CLI prints progress with it). ``resume``: continue a
    killed comparison in ``out_dir`` (every method run has its own run folder under ``runs/``). ``tuned``: a tuned
    file of ``gslora tune`` (path or the loaded document, :mod:`gslora.tune`) for the same data and setting: each
    method runs with its chosen values (``method_args`` / ``method_run`` still override them); the table states the
    budget and the values. A method that raises is a "failed" row and the others still run; with ``strict`` the
    error is raised instead (a bug in the code is not a result). ``problem``: ``detection`` compares the detection
    methods on a detector (:mod:`gslora.detection`; AP instead of accuracy; no data-constrained settings).
    ``depth``: after the runs, every method's final model of each run is audited (:func:`comparison_depth`) against
    a model retrained without the run's forgotten classes (cached, one per class set; a dict: overrides of its
    pre-training recipe) and the original: probe Acc_f, recovery and their distance to the retrained model, a table
    of their own in ``comparison.md``."""
    names = parse_methods(methods, problem)
    if problem != "classification" and setting in SETTING_CONSTRAINTS:
        raise GsloraError(f"the {setting} setting does not apply to {problem}; use continual or single.")
    plans = setting_plans(setting, len(classes))
    base = {**SETTING_CONSTRAINTS.get(setting, {}), **(base_config or {})}
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
    tuning = None
    if tuned is not None:
        tuning, method_args, method_run = _apply_tuned(tuned, names, setting, data, classes, method_args, method_run,
                                                       problem)
    out = Path(out_dir) if out_dir is not None else None
    if depth and (problem != "classification" or out is None or source_checkpoint is None):
        raise GsloraError("the depth columns audit each method's run folder against its checkpoint: they need a "
                          "classification comparison with an output folder and its source checkpoint.")
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
    base_cfg = method_config(names[0], base, plans[0][1], problem=problem)  # the shared keys, checked before any run
    entries = []
    for name in names:
        entry = {"method": name, "status": "ok", "error": None, "runs": [], "wall_seconds": 0.0}
        t0 = time.perf_counter()
        try:
            for label, tasks in plans:
                own = {**method_run.get(name, {}), "method_args": method_args.get(name, {})}
                cfg = method_config(name, base, tasks, own, problem=problem)
                method = (get_method(name, **cfg.method_args) if problem == "classification"  # the user's args over
                          else get_problem_method(problem, name, **cfg.method_args))  # the protocol preset's
                run_dir = out / "runs" / name / label if out is not None else None
                if resume and run_dir is not None and RunFolder(run_dir).is_finished():
                    results = RunFolder.load(run_dir).results
                else:
                    results = run_forgetting(copy.deepcopy(model), classes, data, cfg, method=method,
                                             progress=progress, out_dir=run_dir, resume=resume,
                                             source_checkpoint=source_checkpoint,
                                             problem=make_problem(problem)).results
                entry["runs"].append({"label": label, "tasks_spec": tasks, "config": to_dict(cfg),
                                      "method": method.describe(), "tasks": results["tasks"],
                                      "wall_seconds": results["wall_seconds"]})
        except DataConstraintError as e:  # needs data the setting withholds: marked, never run on more data
            entry["status"] = "not run"
            entry["error"] = str(e)
            log.info("method %s not run: %s", name, e)
        except Exception as e:  # a failing method is reported, the others still run (strict: a bug stops the run)
            if strict:
                raise
            entry["status"] = "failed"
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc(limit=8)
            log.warning("method %s failed: %s", name, entry["error"])
        # a run read back or resumed brings the seconds it spent before: a method's time is its runs' time
        entry["wall_seconds"] = (sum(r["wall_seconds"] for r in entry["runs"]) if entry["runs"]
                                 else time.perf_counter() - t0)
        entries.append(entry)
        if on_method_done is not None:
            on_method_done(entry)
    comparison = {
        "gslora_version": __version__,
        "setting": setting,
        "plans": [{"label": label, "tasks": tasks} for label, tasks in plans],
        "seed": base_cfg.seed,
        "epochs": base_cfg.epochs,
        "constraint": _constraint_text(base_cfg, classes),
        "data": data.describe(),
        "model": _model_description(model, classes),
        "source_checkpoint": str(Path(source_checkpoint).resolve()) if source_checkpoint else None,
        "methods": entries,
        "tuning": tuning,
    }
    if problem != "classification":
        comparison["problem"] = problem
    if depth:
        comparison["depth"] = comparison_depth(comparison, lambda method, label: out / "runs" / method / label,
                                               out / "depth", data, progress, depth if isinstance(depth, dict) else {})
    if out is not None:
        write_comparison(out, comparison)
    return comparison


def comparison_depth(comparison: dict, run_dir, out: Path, data: DataBundle | None = None, progress: bool = False,
                     recipe: dict | None = None) -> dict:
    """Per run of the comparison: one audit (:func:`gslora.audit.audit_run`, without the relearn test) of every
    method's final model with the retrained reference trained once (cached per class set) and the original: each
    method's probe Acc_f, recovery (Acc_f after 20 epochs of head retraining, % of the original's), MIA AUC and the
    distance of the first two to the retrained model's. ``run_dir(method, run label)``: the method's run folder;
    the audits are written to ``out/<run>/``; ``data``: None reloads the runs' data."""
    from .audit import AuditConfig, audit_run, model_numbers

    ok = [e["method"] for e in comparison["methods"] if e["status"] == "ok"]
    runs = {}
    for plan in comparison["plans"]:
        label = plan["label"]
        folders = {m: Path(run_dir(m, label)) for m in ok}
        finished = {m: f for m, f in folders.items() if (f / "final.safetensors").is_file()}
        if not finished:
            continue
        first, *others = finished
        report = audit_run(finished[first], compare={m: finished[m] / "final.safetensors" for m in others},
                           config=AuditConfig(relearn_epochs=0), data=data, write=True, out_dir=out / label,
                           progress=progress, retrain_full=dict(recipe) if recipe else True)
        models = report["models"]
        ref, orig = model_numbers(models["retrained"]), model_numbers(models["original"])
        methods = {}
        for method in finished:
            got = model_numbers(models["forgotten" if method == first else method])
            got["probe_gap"] = None if got["probe_f"] is None else got["probe_f"] - ref["probe_f"]
            got["recovery_gap"] = (None if got["recovery"] is None or ref["recovery"] is None
                                   else got["recovery"] - ref["recovery"])
            got["depth"] = {k: v for k, v in report["depth"]["forgotten" if method == first else method].items()
                            if k in ("probe_f", "recovery", "mia")}
            methods[method] = got
        runs[label] = {"original": orig, "retrained": ref, "methods": methods, "audit": str(out / label),
                       "forgotten_classes": report["classes"]["n_forget"], "seconds": report["wall_seconds"]}
    return {"what": "after the run's last task, every forgotten class; probe: logistic regression on train-split "
                    "embeddings, test split; recovery: Acc_f after 20 epochs of head retraining on images the runs "
                    "never used, % of the original's; gaps: this model minus the retrained model (points)",
            "runs": runs}


def _model_description(model, classes: list[str]) -> dict:
    """The model as the comparison records it: a classifier's config; a detector's architecture and class count."""
    if isinstance(model.config, dict):
        return dict(model.config)
    return {"arch": model.config.model_type, "num_classes": len(classes)}


def _constraint_text(cfg: RunConfig, classes: list[str]) -> str | None:
    """The setting's data constraint in words (None: full data), with the batch size few-shot runs at."""
    from .data.plan import make_plan
    from .practical import data_constraint, missing_classes

    text = data_constraint(cfg, missing_classes(cfg, make_plan(classes, cfg.tasks, seed=cfg.seed), classes))
    if text and cfg.shots:
        text += f", batch {cfg.batch_size}"
    return text


def _apply_tuned(tuned, names: list[str], setting: str, data: DataBundle, classes: list[str], method_args: dict,
                 method_run: dict, problem: str = "classification") -> tuple[dict, dict, dict]:
    """The tuned file's chosen values under the explicit per-method settings; and what the table says of them."""
    from .tune import check_tuned, load_tuned, tuned_settings

    source = None
    if isinstance(tuned, (str, Path)):
        source, tuned = str(tuned), load_tuned(tuned)
    else:
        tuned = check_tuned(tuned)
    where = f"tuned file {source}" if source else "the tuned values"
    if tuned.get("problem", "classification") != problem:
        raise GsloraError(f"{where} were chosen for {tuned.get('problem', 'classification')} methods, not {problem}; "
                          f"tune with `gslora tune{' --detection' if problem == 'detection' else ''}`.")
    if tuned["setting"] != setting:
        raise GsloraError(f"{where} were chosen for the {tuned['setting']} setting, not {setting}; tune with "
                          f"--setting {setting} (values differ between the protocols).")
    have, want = tuned["data"], data.describe()
    if have.get("name") != want["name"] or have.get("classes") != len(classes):
        raise GsloraError(f"{where} were chosen on {have.get('name')!r} ({have.get('classes')} classes), but this "
                          f"comparison runs on {want['name']!r} ({len(classes)} classes); tune on this data first.")
    args, run, chosen = dict(method_args), dict(method_run), {}
    for name in names:
        settings = tuned_settings(tuned, name)
        args[name] = {**settings["args"], **method_args.get(name, {})}
        run[name] = {**settings["run"], **method_run.get(name, {})}
        entry = tuned["methods"][name]
        c = entry["chosen"] or {"trial": "-", "score": None, "values": None}  # None: not run under this setting
        chosen[name] = {"trial": c["trial"], "trials": len(entry["trials"]), "val_score": c["score"],
                        "values": c["values"], "overridden": sorted({*method_args.get(name, {}),
                                                                     *method_run.get(name, {})})}
    tuning = {"file": source, "version": tuned["version"], "budget": tuned["budget"],
              "sampler": tuned.get("sampler"), "plan": tuned.get("plan"), "seed": tuned.get("seed"),
              "selection": tuned.get("selection"), "base_config": tuned.get("base_config"), "methods": chosen}
    return tuning, args, run


def write_comparison(out_dir: Path, comparison: dict) -> None:
    """Plot, Markdown and CSV first; ``comparison.json`` last, so its presence means the comparison finished."""
    out_dir = Path(out_dir)
    comparison["plots"] = [str(save_figure(h_mean_figure(comparison), out_dir / "plots" / "h_mean.png")
                               .relative_to(out_dir))]
    if has_acc_m(comparison):  # missing classes: their accuracy per task and method, next to Acc_r
        comparison["plots"].append(str(save_figure(h_mean_figure(comparison, "acc_m"), out_dir / "plots" / "acc_m.png")
                                       .relative_to(out_dir)))
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(comparison))
    atomic_write_text(out_dir / "comparison.csv", comparison_csv(comparison))
    atomic_write_json(out_dir / "comparison.json", comparison)


run_benchmark = run_comparison  # the earlier name
