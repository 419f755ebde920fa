"""Command line: ``gslora pretrain | forget | evaluate | demo | audit | benchmark | tune | history | verify | list``.
The only module that prints."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from ._version import __version__
from .config import PRESET_KEYS, PretrainConfig, RunConfig, build_config, config_data, from_dict
from .errors import GsloraError
from .presets import demo_preset, resolve


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with run settings (`gslora list --config` lists every key with its "
                   "default)")
    p.add_argument("--tasks", help="'NxK' (e.g. 4x20, 1x10) or class lists 'a,b;c,d' (';' between tasks); default "
                   "4x20 (said when used)")
    p.add_argument("--method", help="forgetting method (default gslora)")
    p.add_argument("--epochs", type=int, help="epochs per task")
    p.add_argument("--seed", type=int, help="seed for class order, subsets and initialisation (default 1337)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set replay_ratio=0.2 --set method_args.beta=0.3")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out from its last finished task (or epoch checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_config(args, data: str | None = None) -> RunConfig:
    """--config, then --set, then the flags; resolved against the method's preset (the same path as the API)."""
    return resolve(build_config(RunConfig, args.config, args.overrides, tasks=args.tasks, method=args.method,
                                epochs=args.epochs, seed=args.seed, device=args.device, data=data,
                                missing_check_data=getattr(args, "missing_check_data", None),
                                audit=getattr(args, "audit", None) or None,
                                audit_target=getattr(args, "audit_target", None),
                                audit_retrain_full=getattr(args, "retrain_full", None) or None))


def _model_input_args(p: argparse.ArgumentParser, classes_flags: tuple[str, ...] = ("--class-names",)) -> None:
    """The flags that let a command read a model gslora did not write (see docs/models.md)."""
    p.add_argument("--model", help="architecture of a state-dict checkpoint: torchvision:<arch> (vit_b_16, ..., "
                   "VisionTransformer), timm:<name>, or vit_face (the authors' Face Transformer; detected anyway)")
    p.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of the architecture, e.g. --model-arg num_heads=2 or img_size=32; repeatable")
    p.add_argument(*classes_flags, dest="class_file", metavar="FILE",
                   help="the class name of each model output, in order (one per line, or a JSON list)")
    p.add_argument("--head-subset", action="store_true",
                   help="keep only the head rows of the data's classes (e.g. ImageNet-100 from a 1000-way head)")


def _missing_check_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--missing-check-data", dest="missing_check_data", metavar="FOLDER",
                   help="with --head-subset: a folder of class folders named like the original head's classes "
                   "outside the subset; their accuracy under the original full head is reported before and after "
                   "each task (the missing-class check)")


def _load_model_input(args, preprocessing: dict | None = None):
    """--checkpoint (a gslora checkpoint, an HF / timm folder or a state dict) → (model, meta)."""
    from .config import parse_override
    from .models.loading import load_any

    model_args = dict(parse_override(item) for item in args.model_args)
    return load_any(args.checkpoint, model=args.model, model_args=model_args or None,
                    preprocessing=preprocessing or None, classes_file=args.class_file)


def cmd_pretrain(args) -> int:
    from .data import load_data
    from .models import create_model, save_checkpoint
    from .models.checkpoint import checkpoint_paths
    from .pretrain import pretrain

    cfg = build_config(PretrainConfig, args.config, args.overrides, where="pretrain config", epochs=args.epochs,
                       max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                       device=args.device)
    weights, _ = checkpoint_paths(args.out)
    if weights.exists() and not args.overwrite:
        raise GsloraError(f"{weights} already exists; choose another --out or pass --overwrite.")
    data = load_data(args.data, image_size=_image_size(args.model), seed=cfg.seed)
    model = create_model(args.model, data.num_classes, seed=cfg.seed)
    plan = cfg.schedule(len(data.train))
    print(f"pre-training {args.model} on {data.name}: {data.describe()}\n"
          f"budget {plan['max_steps']} steps ({plan['rule']}), validation every {plan['eval_every']} steps, "
          f"early stop after {cfg.patience} checks without improvement")
    stats = pretrain(model, data, cfg, progress=_progress(args))
    path = save_checkpoint(model, weights, data.classes, extra={"pretrain": {**stats, "data": args.data}})
    early = f", stopped early, best at step {stats['best_step']}" if stats["stopped_early"] else ""
    if stats.get("extensions"):
        early += (f", {stats['extensions']} extension(s) past the {stats['max_steps']}-step budget while validation "
                  "improved")
    if stats.get("stopped_at_cap"):
        early += (f"; stopped at the cap ({stats['cap_steps']} steps) while validation was STILL IMPROVING: a larger "
                  "--set extend_cap=N would train on")
    elif stats.get("still_improving") and not stats.get("extensions"):
        early += "; validation was still improving at the end of the budget"
    val = f"{stats['val_acc']:.1f}%" if stats.get("val_acc") is not None else "-"
    test = f"{stats['test_acc']:.1f}%" if stats.get("test_acc") is not None else "-"
    print(f"train {stats['train_acc']:.1f}%  val {val}  test {test}  ({stats['steps']} steps, budget "
          f"{stats['max_steps']}{early}, {stats['train_seconds']:.0f} s)\ncheckpoint: {path}")
    if not stats["learned"]:
        _not_learned_banner(stats["not_learned_reason"], f"checkpoint {path} is written, marked \"learned\": false")
        return 3
    return 0


def _not_learned_banner(reason: str, what: str) -> None:
    line = "!" * 100
    print(f"{line}\nWARNING: the pre-trained model did NOT learn its data: {reason}.\n{what}; forgetting classes it "
          f"never knew measures nothing.\nTry a larger budget (--max-steps), another --lr, or a model suited to "
          f"these images.\n{line}", file=sys.stderr)


def _warn_if_not_learned(meta: dict, checkpoint) -> None:
    """``gslora forget`` / ``benchmark`` on a checkpoint that pre-training marked as not learned: say so loudly."""
    pre = meta.get("pretrain") or {}
    if pre.get("learned") is False:
        _not_learned_banner(pre.get("not_learned_reason", "marked at pre-training"),
                            f"checkpoint {checkpoint} was marked \"learned\": false by gslora pretrain")


def _image_size(model_name: str) -> int:
    from .models import create_model

    return create_model(model_name, 1).image_size


def _progress(args) -> bool:
    """Bars only on a terminal: in a log file or a pipe their carriage-return updates are noise; the task lines
    (printed either way) say what happened."""
    return not args.no_progress and sys.stderr.isatty()


def _print_task(row: dict, num_tasks: int) -> None:
    from .report.tables import task_line, task_warnings

    print(task_line(row, num_tasks), flush=True)
    for warning in task_warnings(row):
        print(f"gslora: warning: {warning}", file=sys.stderr, flush=True)


def _absolute_data(data: str | None) -> str | None:
    """A data folder as an absolute path (stored in the run's config, so audits find it from any directory)."""
    from .data.sources import BUNDLED

    return data if data is None or data in BUNDLED else str(Path(data).expanduser().resolve())


def _defaults_in_sight(args, cfg: RunConfig) -> None:
    """Say which settings came from defaults the user did not write: the data and the tasks."""
    said = {item.split("=", 1)[0].strip() for item in getattr(args, "overrides", [])}
    from_config = {}
    if getattr(args, "config", None):
        import yaml

        from_config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    if args.data is None and "data" not in said and "data" not in from_config:
        print(f"no --data: using the default data {cfg.data!r} (the bundled faces)", file=sys.stderr)
    if args.tasks is None and "tasks" not in said and "tasks" not in from_config:
        print(f"no --tasks: using the default tasks {cfg.tasks!r}", file=sys.stderr)


def cmd_forget(args) -> int:
    from .data import load_data
    from .forget import run_forgetting
    from .methods import get_method
    from .models.loading import classes_for_run

    cfg = _run_config(args, data=args.data)
    cfg = dataclasses.replace(cfg, data=_absolute_data(cfg.data))
    _defaults_in_sight(args, cfg)
    method = get_method(cfg.method, **cfg.method_args)  # bad method settings fail before any data is read
    model, meta = _load_model_input(args, cfg.preprocessing)
    _warn_if_not_learned(meta, args.checkpoint)
    data = load_data(cfg.data, image_size=model.image_size, seed=cfg.seed, split_ratio=cfg.split_ratio,
                     val_ratio=cfg.val_ratio, preprocessing=model.config.get("preprocessing"))
    classes = classes_for_run(model, meta, data.classes, head_subset=args.head_subset)
    result = run_forgetting(model, classes, data, cfg, out_dir=args.out, history=meta.get("history"),
                            overwrite=args.overwrite, progress=_progress(args), method=method,
                            source_checkpoint=args.checkpoint, resume=args.resume, record=meta.get("record"),
                            request_id=args.request_id, force=args.force,
                            on_task=_print_task)
    _print_run(result.results, Path(args.out))
    if result.results.get("certified") is False:
        missed = [f"task {r['task']} ({', '.join(k for k, v in r['audit']['met'].items() if not v)})"
                  for r in result.rows if not r["audit"]["certified"]]
        print(f"gslora: not certified: the depth gate ({cfg.audit_target}) missed on {'; '.join(missed)}; the run "
              f"folder and model are written and the record marks those requests certified: false.", file=sys.stderr)
        return 4
    return 0


def _print_run(results: dict, out: Path) -> None:
    from .distributed import is_main
    from .report import paper_table, task_table

    if not is_main():  # under torchrun, one process reports
        return

    print(paper_table(results))
    print()
    print(task_table(results))
    native = results.get("final_native")
    native = f", {native}/ (the model in its own library's format)" if native else ""
    masked = results.get("masked_classes") or []
    certified = {True: "; every request passed the depth gate", False: "; NOT certified: a request missed the depth "
                 "gate", None: ""}[results.get("certified")]
    print(f"\nrecord: {len(results.get('record') or [])} request(s) in the model's erasure record (record.md)"
          f"{certified}; the deployed model masks {len(masked)} forgotten class(es)")
    print(f"run folder: {out}  (results.md, results.json, results.csv, record.md, plots/, final.safetensors, "
          f"adapters/{native})")


def cmd_evaluate(args) -> int:
    from .data import load_data
    from .distributed import resolve_device
    from .evaluate import accuracy, class_counts
    from .models.loading import classes_for_run

    model, meta = _load_model_input(args)
    if args.data is None:
        print("no --data: scoring on the bundled faces", file=sys.stderr)
        args.data = "faces"
    data = load_data(args.data, image_size=model.image_size, seed=args.seed, split_ratio=args.split_ratio,
                     preprocessing=model.config.get("preprocessing"))
    classes = classes_for_run(model, meta, data.classes, head_subset=args.head_subset)
    from .forget import check_data_matches

    check_data_matches(classes, data)
    from .data.plan import evaluation_sets
    from .record import forgotten_names

    forgotten = forgotten_names(meta.get("record"), meta.get("history"))
    sets = evaluation_sets(classes, [{"forgotten": forgotten}] if forgotten else [], args.classes)
    device = resolve_device(args.device or "auto")
    correct, total = class_counts(model.to(device), getattr(data, args.split), len(classes), device)
    report = {name: {"classes": len(c), "accuracy": accuracy(correct, total, c)} for name, c in sets.items()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, r in report.items():
            acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.2f}%"
            print(f"{name:<22} {r['classes']:>5} classes  {args.split} accuracy {acc}")
        masked = model.config.get("masked_classes") or []
        if masked:
            print(f"(as deployed: the outputs of {len(masked)} forgotten classes are masked, so they are never "
                  "predicted)")
    return 0


def _cache_dir() -> Path:
    return Path(os.environ.get("GSLORA_CACHE", Path.home() / ".cache" / "gslora"))


BUNDLED_DIR = Path(__file__).resolve().parent / "pretrained"  # pre-trained demo models shipped with the package


def demo_checkpoint_name(model: str, pcfg: PretrainConfig) -> str:
    """File name of the demo's pre-trained model: the model and a hash of its pre-training recipe (and gslora's
    version), so a changed recipe never reuses an old model."""
    key = hashlib.sha256(json.dumps([__version__, model, dataclasses.asdict(pcfg)], sort_keys=True).encode())
    return f"demo-{model}-{key.hexdigest()[:12]}.safetensors"


def demo_checkpoint_source(name: str, cache_dir: Path, bundled_dir: Path = BUNDLED_DIR) -> Path | None:
    """Where the demo's pre-trained model ``name`` already is: the cache (a model this machine pre-trained), else
    the package's bundled copy (made by the same recipe with ``gslora demo --retrain``); None: pre-train it."""
    from .models.checkpoint import checkpoint_paths

    for folder in (cache_dir, bundled_dir):
        weights, sidecar = checkpoint_paths(folder / name)
        if weights.is_file() and sidecar.is_file():
            return weights
    return None


def cmd_demo(args) -> int:
    from .data import load_data
    from .forget import run_forgetting
    from .models import create_model, load_checkpoint, read_sidecar, save_checkpoint
    from .pretrain import pretrain

    demo = demo_preset()
    t0 = time.perf_counter()
    pcfg = from_dict(PretrainConfig, demo["pretrain"], where="demo pretrain").validate()
    name = demo_checkpoint_name(demo["model"], pcfg)
    ckpt = _cache_dir() / name
    cfg = resolve(build_config(RunConfig, None, args.overrides, base=demo["run"], where="demo config",
                               epochs=args.epochs or None, device=args.device))
    data = load_data("faces", image_size=create_model(demo["model"], 1).image_size, seed=cfg.seed)
    source = None if args.retrain else demo_checkpoint_source(name, _cache_dir())
    if source is not None:
        ckpt = source
        pre = read_sidecar(ckpt).get("pretrain", {})
        where = "cached" if source.parent == _cache_dir() else "bundled"
        print(f"using the {where} pre-trained model {ckpt} (this demo's pre-training recipe: test accuracy "
              f"{pre.get('test_acc', float('nan')):.1f}%, {pre.get('steps', '?')} steps; --retrain pre-trains "
              f"it again, about 20 minutes on a 2-core CPU)")
    else:
        print(f"pre-training {demo['model']} on the bundled faces ({data.describe()['train']} training views of "
              f"{data.num_classes} photos)...")
        model = create_model(demo["model"], data.num_classes, seed=pcfg.seed)
        stats = pretrain(model, data, pcfg, progress=_progress(args))
        save_checkpoint(model, ckpt, data.classes, extra={"pretrain": stats})
        print(f"pre-trained: test accuracy {stats['test_acc']:.1f}% ({stats['steps']} steps) in "
              f"{stats['train_seconds']:.0f} s -> {ckpt}")
        if not stats["learned"]:
            _not_learned_banner(stats["not_learned_reason"], "the demo goes on with it")
    model, meta = load_checkpoint(ckpt)
    budget = f"up to {cfg.max_steps} steps" if cfg.max_steps else f"{cfg.epochs} epochs"
    where = (f"validation + {cfg.check_train_images} training images per class" if cfg.check_train_images
             and not cfg.shots else "validation")
    print(f"forgetting {cfg.tasks} with {cfg.method} ({budget} per task, stopping at the target {cfg.target!r} on "
          f"{where})...")
    result = run_forgetting(model, meta["classes"], data, cfg, out_dir=args.out, overwrite=True,
                            progress=_progress(args), source_checkpoint=ckpt, on_task=_print_task)
    _print_run(result.results, Path(args.out))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_audit(args) -> int:
    from .audit import AuditConfig, audit_run
    from .report.audit import audit_tables
    from .rundir import RunFolder

    cfg = build_config(AuditConfig, where="audit config", device=args.device, epochs=args.epochs,
                       relearn_epochs=args.relearn_epochs, seed=args.seed)
    compare = {}
    for spec in args.compare or []:
        label, sep, path = spec.partition("=")
        compare[label if sep else Path(spec).name] = Path(path if sep else spec)
    out = Path(args.out) if args.out else Path(args.run) / "audit"
    if RunFolder(args.run).is_finished() and RunFolder.load(args.run).results.get("problem") == "detection":
        return _audit_detection(args, cfg, out)
    report = audit_run(args.run, retrained=args.retrained, original=args.original, compare=compare, config=cfg,
                       out_dir=out, progress=_progress(args), retrain_full=args.retrain_full, data_spec=args.data,
                       strangers=args.strangers)
    for table in audit_tables(report).values():
        print(table)
        print()
    print(f"audit folder: {out}  (audit.md, audit.json, recovery.png, probe_mia.png)")
    return 0


def _audit_detection(args, cfg, out: Path) -> int:
    """``gslora audit`` on a detection run folder (gslora.detection.audit): recovery and query probe on AP."""
    from .detection.audit import audit_detection_run, audit_table

    given = [flag for flag, value in (("--retrained", args.retrained), ("--retrain-full", args.retrain_full),
                                      ("--compare", args.compare), ("--relearn-epochs", args.relearn_epochs),
                                      ("--strangers", args.strangers))
             if value]
    if given:
        raise GsloraError(f"{given[0]} does not apply to the audit of a detection run (it has the recovery test and "
                          "the query probe only); leave it out.")
    report = audit_detection_run(args.run, original=args.original, config=cfg, out_dir=out, data_spec=args.data)
    print(audit_table(report))
    print(f"\naudit folder: {out}  (audit.md, audit.json, recovery.png)")
    return 0


def cmd_benchmark(args) -> int:
    from .compare import run_comparison
    from .report.comparison import comparison_markdown_table

    base = config_data(args.config, args.overrides, epochs=args.epochs, seed=args.seed, device=args.device,
                       missing_check_data=args.missing_check_data, data=args.data)  # recorded: audits reload it
    method_args, model, data, classes = _methods_inputs(args, base, "comparison config")

    def done(entry):
        state = "ok" if entry["status"] == "ok" else f"{entry['status'].upper()} ({entry['error']})"
        print(f"  {entry['method']:<8} {state}  {entry['wall_seconds']:.1f} s", flush=True)

    print(f"benchmark ({args.setting}) on {data.name}: {args.methods}")
    if args.tuned:  # a bad tuned file fails before the model and data are read
        from .tune import load_tuned

        load_tuned(args.tuned)
    comparison = run_comparison(model, classes, data, args.setting, args.methods, base_config=base,
                                method_args=method_args, out_dir=args.out, overwrite=args.overwrite,
                                progress=_progress(args), on_method_done=done,
                                source_checkpoint=args.checkpoint, resume=args.resume, tuned=args.tuned,
                                strict=args.strict, depth=args.depth)
    print()
    print(comparison_markdown_table(comparison))
    if comparison.get("depth"):
        from .report.comparison import comparison_depth_table

        print()
        print(comparison_depth_table(comparison))
    from .report.tuning import comparison_tuning_text

    print()
    print(comparison_tuning_text(comparison))
    plots = ", ".join(comparison.get("plots", ["plots/h_mean.png"]))
    print(f"\nbenchmark folder: {args.out}  (comparison.md, comparison.csv, comparison.json, {plots})")
    return 0 if any(e["status"] == "ok" for e in comparison["methods"]) else 1


def _methods_inputs(args, base: dict, where: str):
    """What `benchmark` and `tune` share: the validated config (bad shared keys fail first), the per-method
    overrides, the model, the data and the run's classes, as ``(method_args, model, data, classes)``."""
    from .data import load_data
    from .models.loading import classes_for_run

    shared = from_dict(RunConfig, base, where=where).validate()
    method_args = _method_overrides(args.method_overrides)
    model, meta = _load_model_input(args, shared.preprocessing)
    _warn_if_not_learned(meta, args.checkpoint)
    data = load_data(args.data, image_size=model.image_size, seed=shared.seed, split_ratio=shared.split_ratio,
                     val_ratio=shared.val_ratio, preprocessing=model.config.get("preprocessing"))
    classes = classes_for_run(model, meta, data.classes, head_subset=args.head_subset)
    return method_args, model, data, classes


def _method_overrides(items: list[str] | None) -> dict:
    """``--method-set METHOD.KEY=VALUE`` items as ``{method: {key: value}}``."""
    method_args: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        name, dot, arg = key.partition(".")
        if not (sep and dot and name and arg):
            raise GsloraError(f"--method-set {item!r} must look like METHOD.KEY=VALUE (e.g. ewc.lam=5).")
        method_args.setdefault(name.strip(), {}).update(config_data(None, [f"{arg.strip()}={value}"]))
    return method_args


def cmd_tune(args) -> int:
    from .report.tuning import trial_line, values_text
    from .tune import TUNED_FILE, run_tuning

    base = config_data(args.config, args.overrides, epochs=args.epochs, seed=args.seed, device=args.device)
    method_args, model, data, classes = _methods_inputs(args, base, "tuning config")

    def trial_done(method, trial):
        print(trial_line(method, trial, args.budget), flush=True)

    print(f"tuning ({args.setting}, {args.budget} trials per method, {args.sampler} sampling) on {data.name}: "
          f"{args.methods}")
    tuned = run_tuning(model, classes, data, args.setting, args.methods, budget=args.budget, sampler=args.sampler,
                       base_config=base, method_args=method_args, tasks=args.tasks, out_dir=args.out,
                       overwrite=args.overwrite, resume=args.resume, progress=_progress(args),
                       on_trial_done=trial_done, source_checkpoint=args.checkpoint, strict=args.strict)
    print()
    for name, e in tuned["methods"].items():
        c = e["chosen"]
        chosen = (f"trial {c['trial']}: {values_text(c['values'])}  (val H {c['score']:.1f})" if c else
                  f"not run: {e['reason']}" if e["status"] == "not run" else "nothing (every trial failed)")
        print(f"  {name:<12} {chosen}")
    out = Path(args.out)
    print(f"\ntuning folder: {out}  ({TUNED_FILE}, tuning.md); use it with: gslora benchmark ... --setting "
          f"{args.setting} --tuned {out / TUNED_FILE}")
    return 0 if any(e["status"] == "ok" for e in tuned["methods"].values()) else 1


def _record_of(args):
    """history / verify: the model (any format forget reads) and its erasure record."""
    args.checkpoint = args.model_path
    model, meta = _load_model_input(args)
    return model, list(meta.get("record") or [])


def cmd_history(args) -> int:
    from .record import history_table, record_markdown

    _, record = _record_of(args)
    if args.json:
        print(json.dumps(record, indent=2))
    elif args.markdown:
        print(record_markdown(record, f"`{args.model_path}`"))
    else:
        print(history_table(record))
    return 0


def cmd_verify(args) -> int:
    from .record import verify, weights_sha256

    model, record = _record_of(args)
    ok, sentence = verify(record, weights_sha256(model))
    print(f"{args.model_path}: {'OK' if ok else 'FAILED'}: {sentence}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_list(args) -> int:
    from .config import config_reference
    from .methods import list_methods
    from .models import list_models

    if args.config:
        resolved = dataclasses.asdict(resolve(RunConfig()))
        print("Run settings (`gslora forget --config FILE` or `--set KEY=VALUE`): key, default, what it does.")
        for name, default, text in config_reference(RunConfig):
            preset = name in PRESET_KEYS and resolved[name] != default
            where = f" (the {resolved['method']} preset; {default!r} without one)" if preset else ""
            print(f"\n{name} = {resolved[name]!r}{where}\n    {text or '-'}")
        return 0
    print("models:  " + ", ".join(list_models()) + ", timm:<name>")
    print("methods: " + ", ".join(list_methods()))
    resolved = dataclasses.asdict(resolve(RunConfig()))
    print("config keys (default; `gslora list --config` says what each does):")
    for name, _, _ in config_reference(RunConfig):
        print(f"  {name} = {resolved[name]!r}")
    return 0


# flags of the classification side that detection does not take: refused with one sentence, never silently ignored
NOT_FOR_DETECTION = {"head_subset": "--head-subset", "missing_check_data": "--missing-check-data",
                     "audit": "--audit", "audit_target": "--audit-target", "retrain_full": "--retrain-full",
                     "request_id": "--request-id", "force": "--force", "class_file": "--classes",
                     "model_args": "--model-arg", "depth": "--depth"}


def _detection(args):
    """``--detection``: the command's detection counterpart (gslora.detection.cli)."""
    from .detection import cli as det

    given = [flag for dest, flag in NOT_FOR_DETECTION.items() if getattr(args, dest, None)]
    if given:
        raise GsloraError(f"{given[0]} does not apply to `gslora {args.command} --detection` (detection runs have no "
                          f"{given[0].lstrip('-').replace('-', ' ')} yet); leave it out.")

    if args.command == "demo":
        return det.cmd_demo(args, _cache_dir())
    if args.command in ("benchmark", "tune"):
        args.method_args = _method_overrides(args.method_overrides)
    return getattr(det, f"cmd_{args.command}")(args)


def _shared_run_args(p, config_help: str, method_set_help: str) -> None:
    """The shared-settings flags of benchmark and tune (the same keys, so a tuning matches its comparison)."""
    p.add_argument("--config", help=config_help)
    p.add_argument("--epochs", type=int, help="epochs per task, for every method")
    p.add_argument("--seed", type=int, help="random seed (default 1337)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a shared run setting, e.g. --set replay_ratio=0.2")
    p.add_argument("--method-set", dest="method_overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help=method_set_help)
    p.add_argument("--strict", action="store_true", help="stop at the first method or trial that raises an error "
                   "(default: record it as failed and go on with the others)")


def build_parser() -> argparse.ArgumentParser:
    from .detection.cli import add_detection_flags

    parser = argparse.ArgumentParser(prog="gslora", description="Continual forgetting for vision transformers.")
    parser.add_argument("--version", action="version", version=f"gslora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train a model from scratch on an image folder or the bundled faces")
    p.add_argument("--data", required=True, help="'faces' (bundled) or an image folder")
    p.add_argument("--model", default="vit_face_tiny", help="registry name (gslora list) or timm:<name>")
    p.add_argument("--out", required=True, help="checkpoint path (.safetensors; a .json sidecar is written beside)")
    p.add_argument("--config", help="YAML file with pre-training settings")
    p.add_argument("--max-steps", dest="max_steps", type=int,
                   help="optimiser steps (default: sized by the training set, see docs/pretraining.md)")
    p.add_argument("--epochs", type=int, help="size the budget in epochs instead (passes over the training set)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the pre-training recipe's)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="batch size (default: the recipe's)")
    p.add_argument("--seed", type=int, help="random seed (default 1337)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set lr=1e-3 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    add_detection_flags(p, "pretrain")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("forget", help="erase classes from a checkpoint, task after task")
    p.add_argument("--checkpoint", required=True, help="a gslora checkpoint (.safetensors), a Hugging Face or timm "
                   "model folder, or a torchvision / timm state dict (with --model)")
    _model_input_args(p, ("--classes", "--class-names"))
    _missing_check_arg(p)
    p.add_argument("--data", help="'faces' or an image folder (default: the config's data)")
    p.add_argument("--out", required=True, help="run folder")
    _common_run_args(p)
    p.add_argument("--request-id", dest="request_id",
                   help="the id of this erasure request in the model's record (each task's entry gets ID/task<i>; "
                   "default: the start time and a random suffix)")
    p.add_argument("--audit", action="store_true",
                   help="the audit as a gate: after each task a linear probe and head retraining on images the run "
                   "did not train on; a missed depth target marks the request certified: false and the command "
                   "exits with status 4 after writing everything")
    p.add_argument("--audit-target", dest="audit_target",
                   help="the gate's depth targets (default probe_drop>=10: the probe reads the forgotten classes at "
                   "least 10 points below the task-start model; also probe_f<=N, recovery<=N)")
    p.add_argument("--retrain-full", dest="retrain_full", action="store_true",
                   help="with --audit: also train, per task, a model from scratch without the forgotten classes and "
                   "require probe_gap<=5,recovery_gap<=10 against it (slow: one pre-training per task)")
    p.add_argument("--force", action="store_true",
                   help="go on with a model that scores no better than chance on the data (refused otherwise: its "
                   "preprocessing, architecture arguments or class order are likely wrong)")
    add_detection_flags(p, "forget")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("evaluate", help="accuracy of a checkpoint on class sets")
    p.add_argument("--checkpoint", required=True, help="as for forget (gslora checkpoint, HF / timm folder, state "
                   "dict with --model, or a run's final/ folder)")
    _model_input_args(p)
    p.add_argument("--split-ratio", dest="split_ratio", type=float, default=0.7,
                   help="train fraction per class of a folder without train/ and test/ (as the run used)")
    p.add_argument("--data", help="'faces' (the bundled set) or an image folder: the data the model was trained on "
                   "(default faces, said when used)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split to score (default "
                   "test)")
    p.add_argument("--classes", action="append", help="a class set 'a,b,c' (names or ids); repeatable")
    p.add_argument("--seed", type=int, default=1337, help="the seed the run split the data with (default 1337)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_detection_flags(p, "evaluate")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="forget 4 x 20 classes from a tiny face ViT trained on bundled faces (the model "
                       "comes with the package; --retrain pre-trains it again)")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--epochs", type=int, help="epochs per forgetting task")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--retrain", action="store_true",
                   help="pre-train the demo model again instead of using the cached or bundled one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set lr=1e-3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    add_detection_flags(p, "demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("audit", help="evidence that forgetting holds: recovery test, linear probe, membership "
                       "inference, retrain gap")
    p.add_argument("run", help="a finished run folder (results.json + final.safetensors)")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--retrained", help="checkpoint or retrain-full run folder of a model retrained without the "
                     "forgotten classes (adds the gap)")
    ref.add_argument("--retrain-full", dest="retrain_full", action="store_true",
                     help="train the gap's reference here: a fresh model on every training image of the remaining "
                     "classes with the pre-training recipe (as method retrain-full; slow: a whole pre-training)")
    p.add_argument("--original", help="the pre-trained checkpoint (default: the run's recorded source checkpoint)")
    p.add_argument("--data", help="the run's data (default: the folder the run recorded; pass it when that folder "
                   "moved or the run stored a relative path)")
    p.add_argument("--compare", action="append", metavar="[LABEL=]PATH",
                   help="another forgotten model (run folder or checkpoint) to recovery-test alongside; repeatable")
    p.add_argument("--strangers", metavar="DATA", help="a dataset of classes none of the models trained on (e.g. "
                   "other people's photos; a folder or 'faces'): every model's probe on them shows how much of the "
                   "retrained reference's distance is a model trained on fewer classes rather than forgetting")
    p.add_argument("--epochs", type=int, help="epochs of head retraining in the recovery test (default 20)")
    p.add_argument("--relearn-epochs", dest="relearn_epochs", type=int,
                   help="cap of the relearn-time fine-tuning (default 20; 0 skips it)")
    p.add_argument("--seed", type=int, help="random seed (default 1337)")
    p.add_argument("--out", help="output folder (default RUN/audit)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("benchmark", help="compare forgetting methods from one checkpoint (the paper's tables)")
    p.add_argument("--checkpoint", required=True, help="as for forget: a gslora checkpoint, an HF / timm folder or "
                   "a state dict (with --model)")
    _model_input_args(p)
    _missing_check_arg(p)
    p.add_argument("--data", required=True, help="'faces' or an image folder (the data the model was trained on)")
    p.add_argument("--setting", required=True, choices=["continual", "single", "few-shot", "missing"],
                   help="continual: 4 tasks x 20%% of the classes; single: C-Y for Y = 5, 10, 50, 90%% of the classes; "
                   "few-shot: continual with 4 images per class and batch 4; missing: continual with half of the "
                   "remaining classes without any data (their accuracy: Acc_m). A method needing more data than the "
                   "setting gives is marked not run")
    p.add_argument("--methods", default="all", help="'all' or a comma-separated list (e.g. gslora,ewc,lwf)")
    p.add_argument("--out", required=True, help="benchmark folder")
    _shared_run_args(p, "YAML file with shared run settings (epochs, batch_size, replay_ratio, ...)",
                     "override one method's argument, e.g. --method-set ewc.lam=5")
    p.add_argument("--tuned", metavar="FILE", help="the tuned.yaml of `gslora tune` (same data and setting): run "
                   "each method with its chosen values; the table states the budget and the values")
    p.add_argument("--depth", action="store_true", help="after the runs, audit every method's final model against a "
                   "model retrained without the forgotten classes (trained once per class set, cached) and the "
                   "original: probe Acc_f, recovery and their distance to the retrained model, in comparison.md")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished comparison in --out")
    p.add_argument("--resume", action="store_true", help="continue the unfinished comparison in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    add_detection_flags(p, "benchmark")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("tune", help="give every method the same number of trials over its search space, chosen by "
                       "validation H-Mean; writes tuned.yaml for benchmark --tuned")
    p.add_argument("--checkpoint", required=True, help="as for benchmark")
    _model_input_args(p)
    p.add_argument("--data", required=True, help="'faces' or an image folder (the data the model was trained on)")
    p.add_argument("--setting", default="continual", choices=["continual", "single", "few-shot", "missing"],
                   help="the comparison setting the values are for (default continual: its first task; few-shot and "
                   "missing: the first task under their data constraint)")
    p.add_argument("--methods", default="all", help="'all' or a comma-separated list (e.g. gslora,ewc,lwf)")
    p.add_argument("--budget", type=int, default=6, help="trials per method, the same for all (default 6; trial 1 "
                   "runs the packaged values)")
    p.add_argument("--sampler", default="random", choices=["random", "grid"],
                   help="seeded random draws (default) or a seeded grid over each method's search space")
    p.add_argument("--tasks", type=int, default=1, help="continual: tune on the first N tasks of the plan (default 1)")
    p.add_argument("--out", required=True, help="tuning folder (tuned.yaml, tuning.md)")
    _shared_run_args(p, "YAML file with shared run settings (as for benchmark; use the same)",
                     "fix one method's argument in every trial (it leaves the search space)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished tuning in --out")
    p.add_argument("--resume", action="store_true", help="continue the unfinished tuning in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    add_detection_flags(p, "tune")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("history", help="a model's erasure record, oldest request first")
    p.add_argument("model_path", metavar="MODEL", help="a gslora checkpoint, a Hugging Face or timm folder, or a "
                   "state dict gslora exported (its gslora.json beside it)")
    _model_input_args(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="one Markdown page a non-engineer can read")
    fmt.add_argument("--json", action="store_true", help="the record as JSON")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("verify", help="check a model's erasure record: the hash chain and that the weights are the "
                       "ones its last entry describes (exit 0), else one sentence and exit 1")
    p.add_argument("model_path", metavar="MODEL", help="as for history")
    _model_input_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("list", help="models, methods and config keys with their defaults")
    p.add_argument("--config", action="store_true", help="every run setting with its default and what it does")
    p.set_defaults(func=cmd_list)
    return parser


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def plain(text: str) -> str:
    """``text`` without terminal escape codes (colours, bold) when stderr is not a terminal (a log file, a pipe)."""
    return text if sys.stderr.isatty() else _ANSI.sub("", text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return _detection(args) if getattr(args, "detection", False) else args.func(args)
    except GsloraError as e:
        print(f"gslora: error: {plain(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `gslora list --config | head`: the reader left, nothing more to say
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        again = (f"; run the same command with --resume to continue in {out} from its last finished "
                 f"{'task' if args.command == 'forget' else 'method'}" if hasattr(args, "resume") and out else "")
        print(f"gslora: interrupted{again}.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
