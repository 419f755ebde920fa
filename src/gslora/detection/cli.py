"""The ``--detection`` side of ``gslora pretrain | forget | evaluate | demo | benchmark | tune`` (the CLI prints; the
library does not).

``gslora.cli`` adds the flags with :func:`add_detection_flags` and hands a command over when ``--detection`` is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

from ..config import build_config, from_dict
from ..errors import GsloraError
from ..presets import packaged_yaml


def add_detection_flags(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--detection", action="store_true",
                   help="object detection (DETR / Deformable DETR, COCO-format folders or 'digits'); see "
                   "docs/detection.md")
    if command in ("pretrain", "forget", "evaluate", "benchmark", "tune"):
        p.add_argument("--image-size", dest="image_size", type=int,
                       help="with --detection: side images are resized to (default 64 for tiny models; keep the size "
                       "the detector was trained at)")


def _model(spec: str, classes: list[str], seed: int):
    """A named tiny config (random init) or a local folder."""
    from .models import TINY_CONFIGS, build_detector, load_detector

    if spec in TINY_CONFIGS:
        return build_detector(spec, classes, seed=seed), {"classes": classes}
    return load_detector(spec)


def cmd_pretrain(args) -> int:
    from .data import load_detection_data
    from .models import TINY_CONFIGS, save_detector
    from .pretrain import DetPretrainConfig, pretrain_detector

    model_name = args.model if args.model != "vit_face_tiny" else "deformable_detr_demo"
    # a detector built from scratch starts from the demo's recipe (backbone warm-up, L_cls weight, lr); a model
    # loaded from a folder from the dataclass defaults (no warm-up: its backbone is already trained)
    base = demo_settings()["pretrain"] if model_name in TINY_CONFIGS else None
    cfg = build_config(DetPretrainConfig, args.config, args.overrides, base=base,
                       where="detection pretrain config", max_steps=args.max_steps, lr=args.lr,
                       batch_size=args.batch_size, seed=args.seed, device=args.device)
    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        raise GsloraError(f"{out} already holds a detector; choose another --out or pass --overwrite.")
    data = load_detection_data(args.data, image_size=args.image_size or 64, seed=cfg.seed)
    model, meta = _model(model_name, data.classes, cfg.seed)
    if model_name not in TINY_CONFIGS and list(meta["classes"]) != data.classes:
        raise GsloraError(f"the detector in {model_name} has categories {meta['classes'][:5]}... but the data has "
                          f"{data.classes[:5]}...; fine-tune a detector with the data's categories.")
    print(f"pre-training {model_name} on {data.name}: {data.describe()}; {cfg.max_steps} steps")
    stats = pretrain_detector(model, data, cfg, progress=not args.no_progress)
    save_detector(model, out, data.classes, extra={"pretrain": stats, "data": args.data,
                                                   "image_size": data.train.image_size})
    print(f"test AP {stats['test_ap']:.1f} (AP50 {stats['test_ap50']:.1f}) after {stats['steps']} steps, "
          f"{stats['train_seconds']:.0f} s\ndetector folder: {out}")
    return 0


def _load(args):
    """(model, meta, data) for forget / evaluate: the data first, so a bad COCO file is reported before anything."""
    from .data import load_detection_data
    from .models import load_detector

    if args.data in (None, "faces"):
        raise GsloraError("--detection needs --data: 'digits' (the bundled set) or a COCO-format folder.")
    image_size = args.image_size
    data = load_detection_data(args.data, image_size=image_size or 64, seed=args.seed or 1337)
    model, meta = load_detector(args.checkpoint)
    if image_size is None and meta.get("image_size") and meta["image_size"] != data.train.image_size:
        data = load_detection_data(args.data, image_size=meta["image_size"], seed=args.seed or 1337)
    if list(meta["classes"]) != data.classes:
        raise GsloraError(f"the detector's categories ({', '.join(meta['classes'][:5])}, ...) differ from the data's "
                          f"({', '.join(data.classes[:5])}, ...); use the data the detector was trained on.")
    return model, meta, data


def _run_config(args, base: dict | None = None):
    from .config import DetectionConfig, detection_defaults

    flags = dict(tasks=args.tasks, method=args.method, seed=args.seed, device=args.device)
    if getattr(args, "epochs", None):
        flags.update(epochs=args.epochs, max_steps=0)
    return build_config(DetectionConfig, args.config, args.overrides, base={**detection_defaults(), **(base or {})},
                        where="detection run config", **flags)


def print_results(results: dict, out: Path | None) -> None:
    from .report import results_markdown

    print(results_markdown(results))
    if out is not None:
        print(f"run folder: {out}  (results.md, results.json, plots/boxes.png, final/, adapters/)")


def run(model, classes, data, cfg, out, overwrite: bool, progress: bool, source_checkpoint, history=None,
        resume: bool = False):
    """A detection run through the one task loop (:func:`gslora.forget.run_forgetting`)."""
    from ..forget import run_forgetting
    from .problem import Detection

    return run_forgetting(model, classes, data, cfg, out_dir=out, overwrite=overwrite, progress=progress,
                          source_checkpoint=source_checkpoint, history=history, resume=resume, problem=Detection())


def cmd_forget(args) -> int:
    model, meta, data = _load(args)
    cfg = _run_config(args)
    cfg = dataclasses.replace(cfg, data=args.data, image_size=data.train.image_size).validate()
    result = run(model, meta["classes"], data, cfg, args.out, args.overwrite, not args.no_progress, args.checkpoint,
                 history=meta.get("history"), resume=args.resume)
    print_results(result.results, Path(args.out))
    return 0


def cmd_benchmark(args) -> int:
    """``gslora benchmark --detection``: every detection method (or ``--methods``) from one detector, with the same
    task plan and subsets, through :func:`gslora.compare.run_comparison` (``args.method_args``: the parsed
    ``--method-set`` items)."""
    from ..compare import run_comparison
    from ..report.comparison import comparison_markdown_table
    from ..report.tuning import comparison_tuning_text

    if args.tuned:  # a bad tuned file fails before the model and data are read
        from ..tune import load_tuned

        load_tuned(args.tuned)
    model, meta, data = _load(args)
    base = _shared(args, data)
    print(f"benchmark --detection ({args.setting}) on {data.name}: {args.methods}")

    def done(entry):
        state = "ok" if entry["status"] == "ok" else f"{entry['status'].upper()} ({entry['error']})"
        print(f"  {entry['method']:<8} {state}  {entry['wall_seconds']:.1f} s", flush=True)

    comparison = run_comparison(model, meta["classes"], data, args.setting, args.methods, base_config=base,
                                method_args=args.method_args, out_dir=args.out,
                                overwrite=args.overwrite, progress=not args.no_progress, on_method_done=done,
                                source_checkpoint=args.checkpoint, resume=args.resume, strict=args.strict,
                                problem="detection", tuned=args.tuned)
    print()
    print(comparison_markdown_table(comparison))
    print()
    print(comparison_tuning_text(comparison))
    print(f"\nbenchmark folder: {args.out}  (comparison.md, comparison.csv, comparison.json, plots/h_mean.png)")
    return 0 if any(e["status"] == "ok" for e in comparison["methods"]) else 1


def _shared(args, data) -> dict:
    """The shared run settings of benchmark and tune (the same keys, so a tuning matches its comparison)."""
    from ..config import config_data

    base = config_data(args.config, args.overrides, epochs=args.epochs, seed=args.seed, device=args.device,
                       data=args.data, image_size=data.train.image_size)
    if base.get("epochs"):
        base["max_steps"] = 0
    return base


def cmd_tune(args) -> int:
    """``gslora tune --detection``: every detection method (or ``--methods``) gets the same number of trials over its
    search space (``configs/detection_tune.yaml``), chosen by validation H-Mean on AP, through
    :func:`gslora.tune.run_tuning` (``args.method_args``: the parsed ``--method-set`` items, fixed in every trial)."""
    from ..report.tuning import trial_line, values_text
    from ..tune import TUNED_FILE, run_tuning

    model, meta, data = _load(args)
    base = _shared(args, data)

    def trial_done(method, trial):
        print(trial_line(method, trial, args.budget, score="val H(AP)", width=8), flush=True)

    print(f"tuning --detection ({args.setting}, {args.budget} trials per method, {args.sampler} sampling) on "
          f"{data.name}: {args.methods}")
    tuned = run_tuning(model, meta["classes"], data, args.setting, args.methods, budget=args.budget,
                       sampler=args.sampler, base_config=base, method_args=args.method_args, tasks=args.tasks,
                       out_dir=args.out, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress,
                       on_trial_done=trial_done, source_checkpoint=args.checkpoint, problem="detection",
                       strict=args.strict)
    print()
    for name, e in tuned["methods"].items():
        c = e["chosen"]
        chosen = (f"trial {c['trial']}: {values_text(c['values'])}  (val H(AP) {c['score']:.1f})" if c else
                  "nothing (every trial failed)")
        print(f"  {name:<8} {chosen}")
    out = Path(args.out)
    print(f"\ntuning folder: {out}  ({TUNED_FILE}, tuning.md); use it with: gslora benchmark --detection ... "
          f"--setting {args.setting} --tuned {out / TUNED_FILE}")
    return 0 if any(e["status"] == "ok" for e in tuned["methods"].values()) else 1


def cmd_evaluate(args) -> int:
    from ..data.plan import evaluation_sets
    from ..distributed import resolve_device
    from .evaluate import per_class_ap, sets_from_classes

    model, meta, data = _load(args)
    classes = data.classes
    sets = evaluation_sets(classes, meta.get("history", []), args.classes)
    device = resolve_device(args.device or "auto")
    per_class = per_class_ap(model.to(device), getattr(data, args.split), device)
    report = {name: {"classes": len(c), **r} for name, (c, r) in
              zip(sets, ((sets[n], v) for n, v in sets_from_classes(per_class, sets).items()))}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, r in report.items():
            ap = "-" if r["ap"] is None else f"{r['ap']:.1f}"
            ap50 = "-" if r["ap50"] is None else f"{r['ap50']:.1f}"
            print(f"{name:<22} {r['classes']:>4} categories  {args.split} AP {ap}  AP50 {ap50}")
    return 0


def demo_settings() -> dict:
    """``configs/detection_demo.yaml``: the demo's model, data, pre-training and run settings."""
    return packaged_yaml("detection_demo.yaml")


def demo_run_config(demo: dict, overrides: list[str] | None, epochs: int | None = None, device: str | None = None):
    """The demo's run config: ``run`` (shared), then the chosen method's section of ``methods`` (its lr, budget and
    method_args), then ``--set`` overrides and flags. The method is read from the overrides first (``--set
    method=finetune``), so each method gets its own packaged settings."""
    from ..config import config_data
    from .config import DetectionConfig, detection_defaults

    run = {**demo["run"], **({"epochs": epochs, "max_steps": 0} if epochs else {})}
    method = config_data(None, overrides, run).get("method", "gslora")
    own = dict((demo.get("methods") or {}).get(method) or {})
    base = {**detection_defaults(), **run, **own,
            "method_args": {**run.get("method_args", {}), **own.get("method_args", {})}}
    return build_config(DetectionConfig, None, overrides, base=base, where="detection demo config", device=device)


def cmd_demo(args, cache_dir: Path) -> int:
    from .._version import __version__
    from .data import digits_data
    from .models import TINY_CONFIGS, build_detector, load_detector, save_detector
    from .pretrain import DetPretrainConfig, pretrain_detector

    demo = demo_settings()
    t0 = time.perf_counter()
    pcfg = from_dict(DetPretrainConfig, {**demo["pretrain"], **({"device": args.device} if args.device else {})},
                     where="detection demo pretrain").validate()
    cfg = demo_run_config(demo, args.overrides, epochs=args.epochs, device=args.device)
    key_src = [__version__, demo["model"], TINY_CONFIGS[demo["model"]], demo["data"],
               {k: v for k, v in dataclasses.asdict(pcfg).items() if k != "device"}]
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:12]
    ckpt = cache_dir / f"demo-detection-{demo['model']}-{key}"
    data = digits_data(seed=cfg.seed, **demo["data"])
    print(f"bundled detection set: {data.describe()}")
    if (ckpt / "config.json").exists() and not args.retrain:
        print(f"using cached pre-trained detector {ckpt}")
    else:
        print(f"pre-training {demo['model']} ({pcfg.max_steps} steps; cached afterwards)...")
        model = build_detector(demo["model"], data.classes, seed=pcfg.seed)
        stats = pretrain_detector(model, data, pcfg, progress=not args.no_progress)
        save_detector(model, ckpt, data.classes, extra={"pretrain": stats, "image_size": data.train.image_size})
        warm = stats.get("backbone_warmup")
        warm_text = f", backbone warm-up {warm['seconds']:.0f} s of it" if warm else ""
        print(f"pre-trained: test AP {stats['test_ap']:.1f} (AP50 {stats['test_ap50']:.1f}) in "
              f"{stats['train_seconds']:.0f} s{warm_text} -> {ckpt}")
    model, meta = load_detector(ckpt)
    budget = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.epochs} epochs"
    stop = (f"up to {budget} per task, stopping once the target {cfg.target} holds on the validation split"
            if cfg.eval_every else f"{budget} per task")
    print(f"forgetting {cfg.tasks} with {cfg.method} ({stop})...")
    out = Path(args.out if args.out != "runs/demo" else "runs/demo-detection")
    result = run(model, meta["classes"], data, cfg, out, True, not args.no_progress, ckpt)
    print_results(result.results, out)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0
