"""Packaged YAML presets (each method's defaults, the demo) and the one place a run config is resolved.

``resolve(config)`` is what ``run_forgetting``, every CLI command and the comparison pass a RunConfig through: the
training settings the user left unset (None, see ``config.PRESET_KEYS``) come from the method's preset
(``configs/methods/<method>.yaml``, key ``run``), else from the global default of the field. The resolved config is
the one written to ``config.yaml``; resolving it again changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
from pathlib import Path

import yaml

from .config import PRESET_KEYS, RunConfig, build_config, from_dict
from .errors import GsloraError


def packaged_yaml(*parts: str) -> dict:
    """A YAML file shipped inside the package (``gslora/configs/...``)."""
    ref = resources.files("gslora").joinpath("configs", *parts)
    if not ref.is_file():
        raise GsloraError(f"no packaged config {'/'.join(parts)}.")
    return yaml.safe_load(ref.read_text(encoding="utf-8")) or {}


def method_preset(name: str) -> dict:
    """The versioned defaults file ``configs/methods/<name>.yaml`` (keys ``args``, ``run``, ``protocols`` and
    ``tune``, the search space of ``gslora tune``: :func:`method_tune_space`). Every method ships one: a missing file
    is an error (it would silently mean "no defaults"). A preset may start with ``inherit: OTHER``: OTHER's preset,
    with this file's keys on top (``args`` and ``run`` merged key by key)."""
    folder = resources.files("gslora").joinpath("configs", "methods")
    ref = folder.joinpath(f"{name}.yaml")
    if not ref.is_file():
        known = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise GsloraError(f"unknown method {name!r}: there is no preset configs/methods/{name}.yaml; choose one of "
                          f"{', '.join(known)} (a method of your own ships its preset too, even an empty one).")
    preset = yaml.safe_load(ref.read_text(encoding="utf-8")) or {}
    parent = preset.pop("inherit", None)
    if parent is None:
        return preset
    base = method_preset(parent)
    merged = {**base, **preset}
    for key in ("args", "run"):
        if key in base or key in preset:
            merged[key] = {**(base.get(key) or {}), **(preset.get(key) or {})}
    return merged


def method_run_preset(name: str) -> dict:
    """The run settings a method prefers (its preset's ``run`` mapping), checked against ``PRESET_KEYS``."""
    run = method_preset(name).get("run") or {}
    bad = [k for k in run if k not in PRESET_KEYS]
    if bad:
        raise GsloraError(f"the preset of method {name!r} sets {bad[0]!r}, which a method preset may not choose; "
                          f"allowed: {', '.join(PRESET_KEYS)}.")
    return run


# Run settings a search space (``tune:`` in a method preset) may vary: the learning rate and its schedule's ends, never
# the training budget (epochs, max_steps, batch_size), which every method shares.
TUNABLE_RUN_KEYS = ("lr", "min_lr", "weight_decay")
TUNE_KINDS = ("log", "uniform", "choice")


def method_tune_space(name: str) -> dict:
    """The search space of ``gslora tune`` for method ``name``: its preset's ``tune`` mapping, checked and returned as
    ``{"run": {key: {kind: values}}, "args": {key: {kind: values}}}``.

    ``run`` keys are among ``TUNABLE_RUN_KEYS``; ``args`` keys name an argument of the preset's ``args`` (a dotted key
    such as ``pretrain.lr`` reaches into a mapping argument). Each knob is ``{log: [low, high]}`` (log-uniform,
    0 < low < high), ``{uniform: [low, high]}`` (low < high) or ``{choice: [value, ...]}`` (at least one value).
    {} when the preset has no ``tune`` key (``gslora tune`` then refuses the method)."""
    preset = method_preset(name)
    tune = preset.get("tune")
    if tune is None:
        return {}
    return check_tune_space(tune, preset.get("args") or {},
                            f"the tune: search space of method {name!r} (configs/methods/{name}.yaml)")


def check_tune_space(tune, args: dict, where: str) -> dict:
    """``tune`` (a preset's ``tune`` mapping) checked against the method's arguments ``args`` (name → default; a
    dotted knob needs a mapping argument) and returned as ``{"run": {...}, "args": {...}}``; every problem is one
    GsloraError starting with ``where``. Shared by the classification presets and detection's
    (:func:`gslora.detection.methods.tune_space`)."""
    if not isinstance(tune, dict):
        raise GsloraError(f"{where} must be a mapping with keys run and args, got {tune!r}.")
    bad = [k for k in tune if k not in ("run", "args")]
    if bad:
        raise GsloraError(f"{where} has the key {bad[0]!r}; only run (run settings) and args (method arguments) are "
                          "allowed.")
    out: dict[str, dict] = {"run": {}, "args": {}}
    for section in ("run", "args"):
        knobs = tune.get(section) or {}
        if not isinstance(knobs, dict):
            raise GsloraError(f"{where}: {section} must be a mapping of knob names to ranges, got {knobs!r}.")
        for key, spec in knobs.items():
            if section == "run" and key not in TUNABLE_RUN_KEYS:
                raise GsloraError(f"{where} varies the run setting {key!r}; a search space may vary only "
                                  f"{', '.join(TUNABLE_RUN_KEYS)} (the training budget is the same for every method).")
            if section == "args":
                head, dot, _ = str(key).partition(".")
                if head not in args:
                    raise GsloraError(f"{where} varies {key!r}, which is not an argument of the method; its arguments: "
                                      f"{', '.join(args) or 'none'}.")
                if dot and not isinstance(args[head], dict):
                    raise GsloraError(f"{where} varies {key!r}, but the argument {head!r} is not a mapping.")
            out[section][str(key)] = _check_knob(spec, f"{where}, knob {section}.{key}")
    if not out["run"] and not out["args"]:
        raise GsloraError(f"{where} is empty; give at least one knob under run or args.")
    return out


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return isinstance(v, str)


def _check_knob(spec, where: str) -> dict:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in TUNE_KINDS:
        raise GsloraError(f"{where} must be one of {{log: [low, high]}}, {{uniform: [low, high]}} or "
                          f"{{choice: [values]}}, got {spec!r}.")
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise GsloraError(f"{where}: choice needs a non-empty list of values, got {values!r}.")
        return {kind: list(values)}
    if not (isinstance(values, list) and len(values) == 2 and all(_is_number(v) for v in values)):
        raise GsloraError(f"{where}: {kind} needs [low, high] (two numbers), got {values!r}.")
    low, high = float(values[0]), float(values[1])  # YAML 1.1 reads 1e-3 (no dot) as a string
    if not (math.isfinite(low) and math.isfinite(high) and low < high) or (kind == "log" and low <= 0):
        need = "0 < low < high" if kind == "log" else "low < high"
        raise GsloraError(f"{where}: {kind} needs {need}, got [{values[0]}, {values[1]}].")
    return {kind: [low, high]}


def protocol_of(config: RunConfig) -> str:
    """``config.protocol``, with ``auto`` read from the data budget and the tasks: ``shots`` > 0 is the few-shot
    setting (the GS-LoRA++ paper: k images per class, batch 4), else one task (e.g. ``1x10``) is the single-step
    setting."""
    if config.protocol != "auto":
        return config.protocol
    if config.shots > 0:
        return "few_shot"
    from .data.plan import parse_tasks

    parsed = parse_tasks(config.tasks)
    n = parsed[0] if isinstance(parsed, tuple) else len(parsed)
    return "single_step" if n == 1 else "continual"


def protocol_preset(method: str, protocol: str) -> dict:
    """The method's settings for one protocol (``protocols: <protocol>: {args, run}`` in its preset file)."""
    entry = (method_preset(method).get("protocols") or {}).get(protocol) or {}
    bad = [k for k in entry.get("run") or {} if k not in PRESET_KEYS]
    if bad:
        raise GsloraError(f"the {protocol} preset of method {method!r} sets {bad[0]!r}, which a preset may not choose.")
    return entry


def demo_preset() -> dict:
    """``configs/demo.yaml``: the demo's model, pre-training and run settings."""
    return packaged_yaml("demo.yaml")


def resolve(config: RunConfig) -> RunConfig:
    """A copy of ``config`` with every unset training setting filled: the method's protocol preset (``protocol``:
    auto → single_step for one task, else continual), then the method preset, then the global default. The protocol
    preset's method args go under the user's ``method_args``, so they show in ``config.yaml``.

    Validated; idempotent (a resolved config resolves to itself).
    """
    config.validate()
    protocol = protocol_of(config)
    proto = protocol_preset(config.method, protocol)
    where = f"preset of method {config.method!r}"
    preset = from_dict(RunConfig, method_run_preset(config.method), where=where)
    proto_run = from_dict(RunConfig, proto.get("run") or {}, where=f"{protocol} {where}")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    filled = {"protocol": protocol, "method_args": {**(proto.get("args") or {}), **config.method_args}}
    if config.epochs is not None and config.max_steps is None:
        filled["max_steps"] = 0  # the user asked for epochs: they set the budget, not the preset's step count
    for key in PRESET_KEYS:
        if getattr(config, key) is None and key not in filled:
            for source in (proto_run, preset):
                if getattr(source, key) is not None:
                    filled[key] = getattr(source, key)
                    break
            else:
                filled[key] = fields[key].metadata["default"]
    return dataclasses.replace(config, **filled).validate()


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None, **flags) -> RunConfig:
    """Defaults, the YAML file at ``path``, ``key=value`` overrides and keyword flags (None: not given), resolved."""
    return resolve(build_config(RunConfig, path, overrides, **flags))
