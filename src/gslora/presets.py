"""Packaged YAML presets (each method's defaults, the demo) and the one place a run config is resolved.

``resolve(config)`` is what ``run_forgetting``, every CLI command and the comparison pass a RunConfig through: the
training settings the user left unset (None, see ``config.PRESET_KEYS``) come from the method's preset
(``configs/methods/<method>.yaml``, key ``run``), else from the global default of the field. The resolved config is
the one written to ``config.yaml``; resolving it again changes nothing.
"""

from __future__ import annotations

import dataclasses
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
    """The versioned defaults file ``configs/methods/<name>.yaml`` (keys ``args`` and ``run``); {} when absent."""
    try:
        return packaged_yaml("methods", f"{name}.yaml")
    except GsloraError:  # a method without a defaults file simply has none
        return {}


def method_run_preset(name: str) -> dict:
    """The run settings a method prefers (its preset's ``run`` mapping), checked against ``PRESET_KEYS``."""
    run = method_preset(name).get("run") or {}
    bad = [k for k in run if k not in PRESET_KEYS]
    if bad:
        raise GsloraError(f"the preset of method {name!r} sets {bad[0]!r}, which a method preset may not choose; "
                          f"allowed: {', '.join(PRESET_KEYS)}.")
    return run


def protocol_of(config: RunConfig) -> str:
    """``config.protocol``, with ``auto`` read from the tasks: one task (e.g. ``1x10``) is the single-step setting."""
    if config.protocol != "auto":
        return config.protocol
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
