"""GS-LoRA vs GS-LoRA++ vs two baselines in the three settings of the journal extension (SPEC §4, issue 11).

For each dataset: the packaged forget-defaults checkpoint (read, never written), the continual plan 4 × 20% of the
classes, and `gslora.compare.run_comparison` (what `gslora benchmark` runs) in three settings, every method with the
same step budget per task (default 200, GS-LoRA's preset; training stops earlier at the validation target):

- ``full``: every training image of each class available (``replay_ratio 1``; `gslora benchmark --setting continual
  --set replay_ratio=1`);
- ``few-shot``: 4 images per class for the replay and forget subsets, batch 4 (`--setting few-shot`; GS-LoRA++ gets
  its few-shot preset: w_f 0.015, 0.06, 0.025, 0.012 per task, BND_pro 50);
- ``missing``: as ``full``, but half of the remaining classes have no data at all (`--setting missing --set
  replay_ratio=1`); their accuracy is Acc_m, Acc_r covers the remaining classes with data.

Then `gslora audit` (recovery test, linear probe, membership inference, relearn time) on the GS-LoRA and GS-LoRA++
runs of the few-shot setting (the only one that leaves unseen training images for the audit's recovery set).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gslora_plus.py --datasets orl
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gslora_plus.py --datasets faces --settings few-shot

Run folders: runs/gslora-plus/<dataset>/<setting>/ (resumable). Raw numbers: docs/results/gslora_plus.json (merged
per dataset and setting, so partial runs add up).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
DATASETS = {  # name: (data spec, checkpoint)
    "orl": (str(SHARED / "orl-faces"), ROOT / "runs" / "forget-defaults" / "orl.safetensors"),
    "faces": ("faces", ROOT / "runs" / "forget-defaults" / "faces.safetensors"),
}
SETTINGS = {  # name: (comparison setting, shared run settings)
    "full": ("continual", {"replay_ratio": 1.0}),
    "few-shot": ("few-shot", {}),
    "missing": ("missing", {"replay_ratio": 1.0}),
}
RESULTS = ROOT / "docs" / "results" / "gslora_plus.json"


def summarise(comp: dict) -> dict:
    out = {"constraint": comp.get("constraint"), "plan": comp["plans"], "methods": {}}
    for e in comp["methods"]:
        # the runs' own wall times (a run resumed from its finished folder took ~0 s in this call)
        wall = sum(run.get("wall_seconds") or 0.0 for run in e["runs"]) or e["wall_seconds"]
        entry = {"status": e["status"], "error": e["error"], "wall_seconds": round(wall, 1), "tasks": []}
        for run in e["runs"]:
            for r in run["tasks"]:
                pro = r["method_info"].get("prototype")
                entry["tasks"].append({
                    "task": r["task"], "setting": r["setting"], "h_mean": r["h_mean"], "acc_r": r["acc_r"],
                    "acc_m": r.get("acc_m"), "acc_f": r["acc_f"], "acc_o": r["acc_o"], "drop": r["drop"],
                    "acc_r_pretrained": r["pretrained"]["acc_r"], "acc_m_pretrained": r["pretrained"].get("acc_m"),
                    "n_missing": r.get("n_missing", 0), "replay_images": r["replay_images"],
                    "forget_images": r["forget_images"], "steps": r["steps"], "steps_all_trials": r["steps_all_trials"],
                    "trials": len(r["trials"]), "batch_size": run["config"]["batch_size"],
                    "prototype": None if pro is None else {
                        "w_f": pro["w_f"], "bound": pro["bound"], "kl_f_first": pro["kl_f"][0] if pro["kl_f"] else None,
                        "kl_f_last": pro["kl_f"][-1] if pro["kl_f"] else None},
                })
        out["methods"][e["method"]] = entry
    return out


def readme_table(setting: dict) -> str:
    """One line per method: H per task and its mean, then Acc_f, Acc_r (and Acc_m) per task as "T1 / T2 / T3 / T4"."""
    missing = any(t["n_missing"] for m in setting["methods"].values() for t in m["tasks"])
    head = ["Method", "H T1", "H T2", "H T3", "H T4", "mean H", "Acc_f", "Acc_r"] + (["Acc_m"] if missing else [])
    lines = ["| " + " | ".join(head + ["Time (s)"]) + " |", "|" + "---|" * (len(head) + 1)]
    per = lambda ts, k: " / ".join("-" if t[k] is None else f"{t[k]:.0f}" for t in ts)  # noqa: E731
    for name, m in setting["methods"].items():
        ts = m["tasks"]
        if m["status"] != "ok":
            lines.append(f"| {name} | {m['status']}: {m['error'][:80]} |" + " |" * len(head))
            continue
        hs = [t["h_mean"] or 0.0 for t in ts]
        cells = [name] + [f"{h:.1f}" for h in hs] + [f"**{sum(hs) / len(hs):.1f}**", per(ts, "acc_f"), per(ts, "acc_r")]
        cells += [per(ts, "acc_m")] if missing else []
        lines.append("| " + " | ".join(cells + [f"{m['wall_seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def audit_pair(folder: Path, epochs: int) -> dict:
    """`gslora audit` of the GS-LoRA run with the GS-LoRA++ run of the same plan alongside."""
    from gslora.audit import AuditConfig, audit_run
    from gslora.report.audit import audit_tables

    runs = {m: next((folder / "runs" / m).iterdir()) for m in ("gslora", "gslora++")}
    t0 = time.perf_counter()
    report = audit_run(runs["gslora"], compare={"gslora++": runs["gslora++"]},
                       config=AuditConfig(epochs=epochs, device="cpu"), out_dir=folder / "audit")
    models = {}
    for key, m in report["models"].items():
        rec = m.get("recovery") or {}
        models[key] = {"acc_f": m["accuracy"]["acc_f"], "acc_r": m["accuracy"]["acc_r"],
                       "probe_acc_f": m["probe"]["acc_f"], "probe_acc_r": m["probe"]["acc_r"],
                       "mia_auc": m["mia"]["auc"], "recovered_max_acc_f": rec.get("max_acc_f"),
                       "recovered_final_acc_f": rec.get("final_acc_f"),
                       "recovered_fraction": rec.get("recovered_fraction"),
                       "relearn": m.get("relearn")}
    tables = audit_tables(report)
    return {"models": models, "audit_images": report.get("audit_images"), "wall_seconds": time.perf_counter() - t0,
            "tables": {k: tables[k] for k in ("evidence", "recovery")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="orl,faces")
    p.add_argument("--settings", default="full,few-shot,missing")
    p.add_argument("--methods", default="gslora,gslora++,head,l2")
    p.add_argument("--max-steps", type=int, default=200, help="step budget per task and trial, every method")
    p.add_argument("--audit-epochs", type=int, default=20, help="epochs of head retraining in the recovery test")
    p.add_argument("--audit", default="few-shot", help="settings whose GS-LoRA / GS-LoRA++ pair is audited ('' none); "
                   "full and missing train on every image, so their audit falls back to images the runs saw")
    p.add_argument("--audit-only", action="store_true", help="only audit the finished runs of --settings")
    p.add_argument("--out", default="runs/gslora-plus")
    p.add_argument("--results", default=str(RESULTS), help="the JSON file the numbers are merged into")
    p.add_argument("--tables", action="store_true", help="print the README tables from --results and exit")
    args = p.parse_args()
    if args.tables:
        for name, ds in json.loads(Path(args.results).read_text())["datasets"].items():
            for setting, entry in ds["settings"].items():
                print(f"\n{name}, {setting} ({entry['constraint'] or 'every training image'}; "
                      f"{entry['wall_seconds']:.0f} s)\n\n{readme_table(entry)}")
            for key in [k for k in ds if k.startswith("audit_")]:
                print(f"\n{name}, audit of the {key[6:].replace('_', '-')} runs\n")
                for t in ds[key]["tables"].values():
                    print(t + "\n")
        return 0
    torch.set_num_threads(1)

    from gslora import load_checkpoint, load_data
    from gslora.compare import comparison_markdown_table, run_comparison

    results = Path(args.results)
    store = json.loads(results.read_text()) if results.is_file() else {"datasets": {}}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        spec, ckpt = DATASETS[name]
        if spec != "faces" and not Path(spec).is_dir():
            print(f"skipping {name}: {spec} not found")
            continue
        model, meta = load_checkpoint(ckpt)
        data = load_data(spec, image_size=model.image_size, seed=1337, preprocessing=model.config.get("preprocessing"))
        ds = store["datasets"].setdefault(name, {"data": spec, "checkpoint": str(ckpt.relative_to(ROOT)),
                                                 "settings": {}})
        for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
            kind, extra = SETTINGS[setting]
            shared = {"data": spec, "max_steps": args.max_steps, "seed": 1337, "device": "cpu", "save_adapters": False,
                      **extra}
            folder = Path(args.out) / name / setting
            audit = setting in [a.strip() for a in args.audit.split(",")]
            if args.audit_only:
                if audit:
                    ds[f"audit_{setting.replace('-', '_')}"] = audit_pair(folder, args.audit_epochs)
                    _save(results, store)
                continue
            t0 = time.perf_counter()
            comp = run_comparison(load_checkpoint(ckpt)[0], meta["classes"], data, kind, args.methods,
                                  base_config=shared, out_dir=folder, resume=True, source_checkpoint=ckpt,
                                  on_method_done=lambda e: print(f"  {e['method']:<10} {e['status']} "
                                                                 f"{e['wall_seconds']:.1f} s", flush=True))
            wall = time.perf_counter() - t0
            table = comparison_markdown_table(comp)
            print(f"\n### {name}, {setting} ({wall:.0f} s)\n\n{table}\n", flush=True)
            ds["settings"][setting] = {**summarise(comp), "shared_config": shared, "table": table,
                                       "wall_seconds": round(wall, 1), "folder": str(folder)}
            ours_ok = all(e["status"] == "ok" for e in comp["methods"] if e["method"] in ("gslora", "gslora++"))
            if audit and ours_ok:
                key = f"audit_{setting.replace('-', '_')}"
                ds[key] = audit_pair(folder, args.audit_epochs)
                for t in ds[key]["tables"].values():
                    print(t, "\n", flush=True)
            store.update({"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gslora_plus.py "
                                     + " ".join(sys.argv[1:]),
                          "machine": f"{platform.machine()}, {platform.processor() or '?'}, torch {torch.__version__}, "
                                     "1 thread, CPU shared with another benchmark"})
            _save(results, store)
    return 0


def _save(results: Path, store: dict) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1, default=str))
    tmp.replace(results)


if __name__ == "__main__":
    raise SystemExit(main())
