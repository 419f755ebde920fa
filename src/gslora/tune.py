"""One tuning budget for all: every method gets the same number of trials over its documented search space, each
trial scored by validation H-Mean alone; the chosen values go to a versioned file that ``gslora benchmark --tuned``
(:func:`gslora.compare.run_comparison`, ``tuned=``) applies.

    checkpoint + data → the tuning plan (by default the first task of the setting's plan)
        → for each method: trial 1 = its packaged values, trials 2..B drawn from ``tune:`` in its preset
        → each trial: run_forgetting from the same checkpoint, plan and replay / forget subsets, TEST SPLIT WITHHELD
        → score = mean over the tuning tasks of the validation H-Mean → the best trial's values
        → <out>/tuned.yaml (versioned), <out>/tuning.md

The search space of method ``m`` is the ``tune:`` key of ``configs/methods/m.yaml``
(:func:`gslora.presets.method_tune_space`; detection, ``problem="detection"``: its entry in
``configs/detection_tune.yaml``, :func:`gslora.detection.methods.tune_space`): ``run`` knobs (lr, min_lr,
weight_decay) and ``args`` knobs (the method's loss weights; ``pretrain.lr`` reaches into a mapping argument), each
``{log: [low, high]}``, ``{uniform: [low, high]}`` or ``{choice: [...]}``.

Sampling (deterministic: one generator per method, seeded from (seed, method name), so adding a method changes no
other method's trials):

- ``random`` (default): each knob drawn independently (log-uniform for ``log``, uniform for ``uniform``, uniformly
  among the values for ``choice``), numbers rounded to 3 significant digits, a draw equal to an earlier trial redrawn;
- ``grid``: ``ceil((B − 1) ** (1 / d))`` points per range knob (log- or evenly spaced, ends included; ``choice``: its
  values), the Cartesian product in a seeded random order, the first B − 1 points (cycled when the grid is smaller).

Selection: the highest score; ties go to the earlier trial (so the packaged values win a tie); a trial that fails or
has no validation H-Mean ranks last. The runs of a trial see ``data.val`` in place of ``data.test``: the test split is
never evaluated while choosing.

Detection (``problem="detection"``, ``gslora tune --detection``): the same trials, sampling and selection on a
detector, with the detection methods and the detection run config (:mod:`gslora.detection.config`); the score is the
validation H-Mean on AP (``row['val']['h_mean']`` = H(AP_r, AP_f before − AP_f after) on the validation split); the
settings are ``continual`` and ``single`` (few-shot and missing are classification's data constraints).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import random
import time
import traceback
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from ._version import __version__
from .config import RunConfig, from_dict
from .data.base import DataBundle
from .errors import GsloraError
from .files import atomic_write_json, atomic_write_text
from .forget import run_forgetting
from .methods import get_method, get_problem_method, list_methods, problem_methods
from .practical import DataConstraintError
from .presets import TUNABLE_RUN_KEYS, method_preset, method_tune_space
from .settings import PROBLEMS

log = logging.getLogger(__name__)

TUNED_VERSION = 1
SAMPLERS = ("random", "grid")
DEFAULT_BUDGET = 6
TUNED_FILE, PARTIAL_FILE, REPORT_FILE = "tuned.yaml", "tuning.partial.json", "tuning.md"
SELECTION = ("the highest validation H-Mean (mean over the tuning tasks of row['val']['h_mean']); ties go to the "
             "earlier trial; a failed trial ranks last. The test split is withheld: each trial's run sees the "
             "validation split in its place.")


# --- the plan -------------------------------------------------------------------------------------------------------


def tuning_plan(setting: str, num_classes: int, tasks: int = 1, protocol: str = "auto") -> dict:
    """The short plan the trials run: the first ``tasks`` tasks of the continual plan (``4xK`` → ``NxK``: the class
    order and subsets of the same seed make them the comparison's first tasks), or for ``single`` the 10% run
    (``C-Y``, Y = round(0.1·C)), the second of :func:`gslora.compare.setting_plans`; ``few-shot`` and ``missing`` tune
    on the first task of their continual plan under their data constraint. The protocol is the setting's (continual /
    single_step / few_shot) unless ``protocol`` names one."""
    from .settings import CONTINUAL_TASKS, SETTING_CONSTRAINTS, setting_plans

    if not isinstance(tasks, int) or isinstance(tasks, bool) or tasks < 1:
        raise GsloraError(f"the number of tuning tasks must be a positive integer, got {tasks!r}.")
    if setting in ("continual", *SETTING_CONSTRAINTS):
        (_, full), = setting_plans(setting, num_classes)
        if tasks > CONTINUAL_TASKS:
            raise GsloraError(f"the continual plan has {CONTINUAL_TASKS} tasks; tune on 1 to {CONTINUAL_TASKS} of "
                              f"them, got {tasks}.")
        k = full.split("x")[1]
        first = f"the first {tasks} tasks" if tasks > 1 else "the first task"
        # few-shot takes its own protocol preset (batch 4, the few-shot α); missing classes the continual one
        own = "few_shot" if setting == "few-shot" else "continual"
        return {"tasks": f"{tasks}x{k}", "of": full, "protocol": own if protocol == "auto" else protocol,
                "note": f"{first} of the {setting} plan {full}"
                        + (f" ({SETTING_CONSTRAINTS[setting]})" if setting in SETTING_CONSTRAINTS else "")}
    if setting == "single":
        if tasks != 1:
            raise GsloraError(f"the single-step setting has one task per run; tune it with 1 task, got {tasks}.")
        plans = setting_plans("single", num_classes)
        label, spec = plans[1] if len(plans) > 1 else plans[0]
        return {"tasks": spec, "of": label, "protocol": "single_step" if protocol == "auto" else protocol,
                "note": f"the single-step run {label} ({spec})"}
    raise GsloraError(f"setting must be continual, single, few-shot or missing, got {setting!r}.")


# --- sampling -------------------------------------------------------------------------------------------------------


def _rng(seed: int, method: str) -> random.Random:
    digest = hashlib.sha256(f"gslora/tune/{seed}/{method}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _round(v):
    return float(f"{v:.3g}") if isinstance(v, float) else v


def _draw(spec: dict, rng: random.Random):
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        return rng.choice(values)
    low, high = values
    if kind == "log":
        return _round(math.exp(rng.uniform(math.log(low), math.log(high))))
    return _round(rng.uniform(low, high))


def _points(spec: dict, n: int) -> list:
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        return list(values)
    low, high = values
    if n == 1:
        return [_round(math.sqrt(low * high) if kind == "log" else (low + high) / 2)]
    if kind == "log":
        return [_round(math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1))) for i in range(n)]
    return [_round(low + i * (high - low) / (n - 1)) for i in range(n)]


def _knobs(space: dict) -> list[tuple[str, str, dict]]:
    return [(section, key, spec) for section in ("run", "args") for key, spec in space.get(section, {}).items()]


def sample_trials(space: dict, budget: int, seed: int, method: str, sampler: str = "random") -> list[dict]:
    """``budget`` trials as overrides ``{"run": {...}, "args": {...}}``: the first is ``{}`` / ``{}`` (the packaged
    values), the others drawn from ``space`` (see the module docstring for both samplers). Deterministic."""
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise GsloraError(f"the tuning budget must be a positive number of trials, got {budget!r}.")
    if sampler not in SAMPLERS:
        raise GsloraError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}.")
    knobs = _knobs(space)
    trials = [{"run": {}, "args": {}}]
    if budget == 1 or not knobs:
        return trials + [{"run": {}, "args": {}} for _ in range(budget - 1)]
    rng = _rng(seed, method)
    need = budget - 1
    if sampler == "grid":
        n = max(2, math.ceil(need ** (1 / len(knobs)) - 1e-9))
        grid = list(itertools.product(*[_points(spec, n) for _, _, spec in knobs]))
        rng.shuffle(grid)
        points = [grid[i % len(grid)] for i in range(need)]
    else:
        points, seen = [], set()
        for _ in range(need):
            for _attempt in range(50):
                point = tuple(_draw(spec, rng) for _, _, spec in knobs)
                if json.dumps(point) not in seen:
                    break
            seen.add(json.dumps(point))
            points.append(point)
    for point in points:
        trial = {"run": {}, "args": {}}
        for (section, key, _), value in zip(knobs, point):
            trial[section][key] = value
        trials.append(trial)
    return trials


# --- applying values ------------------------------------------------------------------------------------------------


def method_overrides(method: str, args: dict) -> dict:
    """Flat tuned argument values (``{"lam": 5, "pretrain.lr": 1e-3}``) as method arguments: a dotted key is merged
    into the preset's mapping (``pretrain: {..., lr: 1e-3}``; only a dotted key reads the preset, so detection's
    methods, whose spaces have none, need no classification preset)."""
    out: dict = {}
    for key, value in args.items():
        head, dot, rest = key.partition(".")
        if not dot:
            out[head] = value
            continue
        preset = method_preset(method).get("args") or {}
        node = out.setdefault(head, copy.deepcopy(preset.get(head) or {}))
        parts = rest.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _arg_value(args: dict, key: str):
    node = args
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _effective(space: dict, cfg, method) -> dict:
    """The values a run used for every knob of ``space`` (None: a nested key the recipe leaves at its default)."""
    args = method.describe()["args"]
    return {"run": {k: getattr(cfg, k) for k in space.get("run", {})},
            "args": {k: _arg_value(args, k) for k in space.get("args", {})}}


# --- the tuning -----------------------------------------------------------------------------------------------------


def withhold_test(data: DataBundle) -> DataBundle:
    """``data`` with its validation split in place of the test split: what every tuning run sees."""
    return dataclasses.replace(data, test=data.val)


def _score(rows: list[dict]) -> float | None:
    values = [r["val"]["h_mean"] for r in rows]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _best(trials: list[dict]) -> dict | None:
    best = None
    for t in trials:
        if t["status"] == "ok" and t["score"] is not None and (best is None or t["score"] > best["score"]):
            best = t
    return best


BRIEF = {"classification": ("acc_f", "acc_r", "acc_o", "drop", "h_mean"),
         "detection": ("ap_f", "ap_r", "ap_o", "drop", "h_mean")}  # a trial's validation metrics as recorded


def _brief(metrics: dict, problem: str = "classification") -> dict:
    return {k: metrics.get(k) for k in BRIEF[problem]}


def tune_space(name: str, problem: str = "classification") -> dict:
    """Method ``name``'s search space for ``problem`` ({}: it has none)."""
    if problem == "detection":
        from .detection.methods import tune_space as detection_space

        return detection_space(name)
    return method_tune_space(name)


def _space_file(name: str, problem: str) -> str:
    return "configs/detection_tune.yaml" if problem == "detection" else f"configs/methods/{name}.yaml"


def make_method(problem: str, name: str, args: dict):
    """Method ``name`` of ``problem`` with ``args``."""
    return get_method(name, **args) if problem == "classification" else get_problem_method(problem, name, **args)


def _arch(model) -> str | None:
    """A classifier's ``arch``; a detector's transformers model type."""
    return model.config.get("arch") if isinstance(model.config, dict) else model.config.model_type


def run_tuning(model, classes: list[str], data: DataBundle, setting: str = "continual",
               methods: list[str] | str = "all", budget: int = DEFAULT_BUDGET, sampler: str = "random",
               base_config: dict | None = None, method_args: dict[str, dict] | None = None, tasks: int = 1,
               out_dir: str | Path | None = None, overwrite: bool = False, resume: bool = False,
               progress: bool = False, on_trial_done=None, source_checkpoint: str | Path | None = None,
               problem: str = "classification", strict: bool = False) -> dict:
    """Tune every method of ``methods`` with ``budget`` trials each on the tuning plan (:func:`tuning_plan`) and
    return the tuned document (written to ``out_dir/tuned.yaml`` with ``out_dir/tuning.md`` when given).

    ``base_config``: run settings shared by every trial (as the comparison's); ``method_args``: per-method arguments
    fixed in every trial (a fixed knob leaves the search space). ``on_trial_done(method, trial)`` is called after
    each trial. ``resume``: continue a killed tuning in ``out_dir`` (its finished trials are read back). A trial that
    raises is recorded as failed and ranks last; with ``strict`` the error is raised instead. ``problem``:
    ``detection`` tunes the detection methods on a detector (module docstring)."""
    from .settings import SETTING_CONSTRAINTS, method_config, parse_methods

    t_start = time.perf_counter()
    if problem not in PROBLEMS:
        raise GsloraError(f"unknown problem {problem!r}; choose one of {', '.join(PROBLEMS)}.")
    if problem != "classification" and setting in SETTING_CONSTRAINTS:
        raise GsloraError(f"the {setting} setting does not apply to {problem}; use continual or single.")
    names = parse_methods(methods, problem)
    spaces = {}
    for name in names:
        space = tune_space(name, problem)
        if not space:
            raise GsloraError(f"method {name!r} has no search space (a tune: key in {_space_file(name, problem)}); "
                              "add one or leave the method out of --methods.")
        spaces[name] = space
    if sampler not in SAMPLERS:
        raise GsloraError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}.")

    # the setting's data constraint (few-shot: 4 images per class, batch 4; missing: half the remaining classes
    # without data), as the comparison applies it; the user's shared settings go over it
    base = {**SETTING_CONSTRAINTS.get(setting, {}), **(base_config or {})}
    if "method_args" in base:
        raise GsloraError("the shared config must not hold method_args (they differ per method); pass per-method "
                          "values instead (--method-set METHOD.KEY=VALUE).")
    base.pop("method", None)
    base.pop("tasks", None)
    fixed = {k: dict(v) for k, v in (method_args or {}).items()}
    unknown = [m for m in fixed if m not in names]
    if unknown:
        raise GsloraError(f"method arguments given for {unknown[0]!r}, which is not tuned; tuned: {', '.join(names)}.")
    for name, args in fixed.items():  # a fixed argument is not tuned
        spaces[name] = {"run": dict(spaces[name]["run"]),
                        "args": {k: v for k, v in spaces[name]["args"].items() if k.split(".")[0] not in args}}
    plan = tuning_plan(setting, len(classes), tasks, base.get("protocol", "auto"))
    if problem == "classification":
        shared = {**base, "protocol": plan["protocol"]}
    else:  # the protocol picks a classification preset; a detection run's config is the comparison's
        shared, plan = dict(base), {**plan, "protocol": None}
    seed = method_config(names[0], shared, plan["tasks"], problem=problem).seed  # bad shared keys fail here
    trial_sets = {n: sample_trials(spaces[n], budget, seed, n, sampler) for n in names}
    header = {
        "version": TUNED_VERSION,
        "gslora_version": __version__,
        "data": data.describe(),
        "model": {"arch": _arch(model), "num_classes": len(classes)},
        "source_checkpoint": str(Path(source_checkpoint).resolve()) if source_checkpoint else None,
        "setting": setting,
        "plan": plan,
        "seed": seed,
        "budget": budget,
        "sampler": sampler,
        "selection": SELECTION,
        "base_config": base,
    }
    if problem != "classification":
        header["problem"] = problem
    out = Path(out_dir) if out_dir is not None else None
    done: dict[str, list[dict]] = {}
    if out is not None:
        done = _prepare_out(out, header, overwrite, resume)
    tuning_data = withhold_test(data)
    bar = tqdm(total=budget * len(names), desc="tuning", disable=not progress, leave=False, dynamic_ncols=True)
    entries = {}
    for name in names:
        t0 = time.perf_counter()
        trials: list[dict] = []
        for k, over in enumerate(trial_sets[name]):
            previous = done.get(name, [])
            if k < len(previous) and previous[k]["overrides"] == over:
                trials.append(previous[k])
            else:
                trials.append(_run_trial(model, classes, tuning_data, name, k + 1, over, shared, plan,
                                         fixed.get(name, {}), spaces[name], progress, source_checkpoint,
                                         problem=problem, strict=strict))
                if out is not None:
                    done[name] = trials
                    atomic_write_json(out / PARTIAL_FILE, {"header": header, "trials": done})
            bar.update(1)
            if on_trial_done is not None:
                on_trial_done(name, trials[-1])
            if trials[-1]["status"] == "not run":  # the same data is withheld from every other trial
                bar.update(len(trial_sets[name]) - k - 1)
                break
        best = _best(trials)
        chosen = None
        if best is not None:
            values = best["values"]
            chosen = {"trial": best["trial"], "score": best["score"], "values": values,
                      "run": {k: v for k, v in values["run"].items() if v is not None},
                      "args": {k: v for k, v in values["args"].items() if v is not None}}
        not_run = trials[-1]["status"] == "not run"
        entries[name] = {"status": "ok" if chosen else ("not run" if not_run else "failed"),
                         **({"reason": trials[-1]["error"]} if not_run else {}), "search_space": spaces[name],
                         "fixed_args": fixed.get(name, {}), "trials": trials, "chosen": chosen,
                         "wall_seconds": time.perf_counter() - t0}
    bar.close()
    tuned = {**header, "methods": entries, "wall_seconds": time.perf_counter() - t_start}
    if out is not None:
        write_tuned(out / TUNED_FILE, tuned)
        from .report.tuning import tuning_markdown

        atomic_write_text(out / REPORT_FILE, tuning_markdown(tuned))
        (out / PARTIAL_FILE).unlink(missing_ok=True)
    return tuned


def _prepare_out(out: Path, header: dict, overwrite: bool, resume: bool) -> dict:
    if (out / TUNED_FILE).exists() and not overwrite:
        raise GsloraError(f"{out} already holds a finished tuning ({TUNED_FILE}); choose another --out or pass "
                          "--overwrite.")
    partial = out / PARTIAL_FILE
    if partial.exists() and not (overwrite or resume):
        raise GsloraError(f"{out} holds an unfinished tuning ({PARTIAL_FILE}); pass --resume to continue it or "
                          "--overwrite to start over.")
    if overwrite:
        (out / TUNED_FILE).unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if resume and partial.exists():
        saved = json.loads(partial.read_text(encoding="utf-8"))
        if json.loads(json.dumps(header)) != saved.get("header"):
            raise GsloraError(f"the unfinished tuning in {out} was started with other settings (data, plan, budget, "
                              "sampler, seed or shared config); resume it with the same ones or pass --overwrite.")
        return saved.get("trials") or {}
    return {}


def _run_trial(model, classes, data, name, number, over, shared, plan, fixed, space, progress,
               source_checkpoint, problem: str = "classification", strict: bool = False) -> dict:
    from .settings import make_problem, method_config

    t0 = time.perf_counter()
    record = {"trial": number, "overrides": over, "values": None, "status": "ok", "error": None, "score": None,
              "val": None, "steps": None, "wall_seconds": None}
    try:
        args = {**method_overrides(name, over["args"]), **fixed}
        cfg = method_config(name, shared, plan["tasks"], {**over["run"], "method_args": args}, problem=problem)
        method = make_method(problem, name, cfg.method_args)
        record["values"] = _effective(space, cfg, method)
        result = run_forgetting(copy.deepcopy(model), classes, data, cfg, method=method, progress=progress,
                                source_checkpoint=source_checkpoint, problem=make_problem(problem))
        rows = result.rows
        record["val"] = [_brief(r["val"], problem) for r in rows]
        record["score"] = _score(rows)
        record["steps"] = sum(r["steps_all_trials"] for r in rows)
    except DataConstraintError as e:  # the setting withholds data the method needs: no trial of it can run
        record["status"] = "not run"
        record["error"] = str(e)
    except Exception as e:  # a failing trial is recorded and ranks last; the others still run (strict: re-raised)
        if strict:
            raise
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc(limit=6)
        log.warning("tuning %s trial %d failed: %s", name, number, record["error"])
    record["wall_seconds"] = time.perf_counter() - t0
    return record


# --- the tuned file -------------------------------------------------------------------------------------------------


def write_tuned(path: str | Path, tuned: dict) -> Path:
    """The tuned document as YAML (atomically), with a comment saying what it is."""
    text = ("# gslora tune: per method, every trial's values and validation score and the chosen values.\n"
            "# Feed it to `gslora benchmark --tuned FILE`. Selection used the validation split only.\n")
    text += yaml.safe_dump(json.loads(json.dumps(tuned)), sort_keys=False, allow_unicode=True, width=120)
    return atomic_write_text(path, text)


def load_tuned(path: str | Path) -> dict:
    """Read and check a tuned file: its version, and per method known to gslora a chosen ``run`` / ``args`` that the
    method accepts. Every problem is one GsloraError naming the file."""
    path = Path(path)
    if path.is_dir() and (path / TUNED_FILE).is_file():
        path = path / TUNED_FILE
    if not path.is_file():
        raise GsloraError(f"tuned file {path} does not exist; pass the tuned.yaml that `gslora tune` wrote.")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise GsloraError(f"tuned file {path} is not valid YAML ({type(e).__name__}); pass the tuned.yaml that "
                          "`gslora tune` wrote.") from None
    return check_tuned(doc, str(path))


def check_tuned(doc, where: str = "tuned values") -> dict:
    """The checks of :func:`load_tuned` on an already parsed document; returns it."""
    if not isinstance(doc, dict) or "methods" not in doc:
        raise GsloraError(f"{where} is not a tuned file (no methods mapping); pass the tuned.yaml that `gslora tune` "
                          "wrote.")
    if doc.get("version") != TUNED_VERSION:
        raise GsloraError(f"{where} has version {doc.get('version')!r}; this gslora reads version {TUNED_VERSION}. "
                          "Tune again with this version.")
    for key in ("budget", "setting", "data"):
        if key not in doc:
            raise GsloraError(f"{where} lacks {key!r}; pass the tuned.yaml that `gslora tune` wrote.")
    methods = doc["methods"]
    if not isinstance(methods, dict) or not methods:
        raise GsloraError(f"{where}: methods must be a non-empty mapping of method names.")
    problem = doc.get("problem", "classification")
    if problem not in PROBLEMS:
        raise GsloraError(f"{where} is for the unknown problem {problem!r}; this gslora knows {', '.join(PROBLEMS)}.")
    if problem != "classification":
        from .settings import make_problem

        make_problem(problem)  # its module registers its methods
    known = list_methods() if problem == "classification" else problem_methods(problem)
    for name, entry in methods.items():
        if name not in known:
            raise GsloraError(f"{where} has values for unknown method {name!r}; known ({problem}): {', '.join(known)}.")
        if not isinstance(entry, dict) or "chosen" not in entry:
            raise GsloraError(f"{where}: method {name!r} has no chosen entry.")
        chosen = entry["chosen"]
        if chosen is None:
            continue  # every trial failed: the comparison refuses the method
        if not isinstance(chosen, dict) or not isinstance(chosen.get("run", {}), dict) \
                or not isinstance(chosen.get("args", {}), dict):
            raise GsloraError(f"{where}: the chosen values of {name!r} must be a mapping with run and args mappings.")
        bad = [k for k in chosen.get("run", {}) if k not in TUNABLE_RUN_KEYS]
        if bad:
            raise GsloraError(f"{where}: method {name!r} sets the run setting {bad[0]!r}; a tuned file may set only "
                              f"{', '.join(TUNABLE_RUN_KEYS)}.")
        try:
            settings = tuned_settings(doc, name)
            from_dict(RunConfig, settings["run"], where=f"the chosen run settings of {name!r}").validate()
            make_method(problem, name, settings["args"])
        except GsloraError as e:
            raise GsloraError(f"{where}: the chosen values of {name!r} are not valid: {e}") from None
    return doc


def tuned_settings(tuned: dict, method: str) -> dict:
    """``{"run": {...}, "args": {...}}``: what the comparison sets for ``method`` (the chosen values and the
    arguments fixed while tuning)."""
    entry = tuned["methods"].get(method)
    if entry is None:
        raise GsloraError(f"the tuned file has no values for method {method!r} (tuned: {', '.join(tuned['methods'])}); "
                          "tune it too or leave it out of --methods.")
    chosen = entry.get("chosen")
    if chosen is None and entry.get("status") == "not run":  # the comparison marks it not run, with the reason
        return {"run": {}, "args": dict(entry.get("fixed_args") or {})}
    if chosen is None:
        raise GsloraError(f"every tuning trial of method {method!r} failed, so the tuned file chose nothing for it; "
                          "fix the failure and tune again, or leave it out of --methods.")
    args = {**method_overrides(method, chosen.get("args") or {}), **(entry.get("fixed_args") or {})}
    return {"run": dict(chosen.get("run") or {}), "args": args}
