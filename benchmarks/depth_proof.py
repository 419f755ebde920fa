"""The depth proof with defaults only, from the command line: for each dataset `gslora pretrain`, `gslora forget`
(GS-LoRA), `gslora forget --method head` on the same plan, then `gslora audit RUN --retrain-full --compare head=...`.

Checks per task: Acc_f <= 2, Acc_o <= 2, dAcc_r >= -3 and H no more than 2 points below head forgetting's. After the
last task (the audit): probe Acc_f within 5 points of the retrained model's, recovery (Acc_f after head retraining,
20 epochs, % of the original's) within 10 points of the retrained model's, both at least 10 points deeper than head
forgetting's, MIA AUC within 0.05 of the retrained model's. Each check is printed met or MISSED with its numbers.

    .venv/bin/python benchmarks/depth_proof.py                        # bundled faces, ORL, Georgia Tech, Omniglot
    .venv/bin/python benchmarks/depth_proof.py --only orl-4x5

Raw numbers: docs/results/depth_proof.json (merged per dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
GSLORA = [sys.executable, "-m", "gslora"]
RUNS = {  # name: (data, tasks)
    "faces-4x20": ("faces", "4x20"),
    "orl-4x5": (str(SHARED / "orl-faces"), "4x5"),
    "gt-4x10": (str(SHARED / "gt-faces"), "4x10"),
    "omniglot-4x20": (str(SHARED / "omniglot-small"), "4x20"),
}


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    print("$ gslora", " ".join(args), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.run([*GSLORA, *args], stdout=subprocess.DEVNULL, env=env).returncode
    if code not in (0, 4):  # 4: a run whose audit gate missed (not used here) still wrote everything
        raise SystemExit(f"gslora {args[0]} failed with status {code}")
    return time.perf_counter() - t0


def task_checks(rows: list[dict], head_rows: list[dict]) -> list[dict]:
    out = []
    for r, h in zip(rows, head_rows):
        change = r["acc_r_change_vs_pretrained"]
        checks = {"acc_f<=2": r["acc_f"] <= 2.0, "acc_o<=2": r["acc_o"] is None or r["acc_o"] <= 2.0,
                  "dacc_r>=-3": change >= -3.0, "h>=head-2": (r["h_mean"] or 0) >= (h["h_mean"] or 0) - 2.0}
        out.append({"task": r["task"], "acc_f": r["acc_f"], "acc_o": r["acc_o"], "acc_r_change": change,
                    "h_mean": r["h_mean"], "head_h_mean": h["h_mean"], "probe_f": r.get("probe_f"),
                    "probe_keep": r.get("probe_keep"), "steps": r["steps"], "trials": len(r["trials"]),
                    "wall_seconds": r["wall_seconds"], "head_wall_seconds": h["wall_seconds"],
                    "blocks": (r.get("method_info") or {}).get("selected_blocks"), "checks": checks})
    return out


def probe_by_task(report: dict, plan_tasks: list[dict]) -> dict:
    """The audit's per-class probe Acc_f averaged over the classes of each task (task 1 first): whether the classes
    forgotten early stay as deep as the ones just forgotten."""
    out = {}
    for label, m in report["models"].items():
        per = {int(c): v for c, v in m["probe"]["per_class_f"].items() if v is not None}
        out[label] = [(sum(per[c] for c in t["forget"] if c in per) / n) if (n := sum(c in per for c in t["forget"]))
                      else None for t in plan_tasks]
    return out


def audit_checks(report: dict, plan_tasks: list[dict]) -> dict:
    """The audit's numbers per model, the proof's checks after the last task and the probe per task's classes."""
    from gslora.audit import model_numbers

    values = {label: model_numbers(m) for label, m in report["models"].items()}
    g, h, r = values["forgotten"], values["head"], values["retrained"]
    checks = {
        "probe within 5 of retrained": g["probe_f"] <= r["probe_f"] + 5.0,
        "recovery within 10 of retrained": g["recovery"] <= r["recovery"] + 10.0,
        "probe 10 deeper than head": g["probe_f"] <= h["probe_f"] - 10.0,
        "recovery 10 deeper than head": g["recovery"] <= h["recovery"] - 10.0,
        "MIA AUC within 0.05 of retrained": abs(g["mia_auc"] - r["mia_auc"]) <= 0.05,
    }
    return {"models": values, "checks": checks, "depth": report.get("depth"), "seconds": report["wall_seconds"],
            "probe_by_task": probe_by_task(report, plan_tasks)}


def read_audit(run: Path) -> dict:
    """:func:`audit_checks` of a proof run folder's audit (``RUN/audit/audit.json``) and plan."""
    report = json.loads((run / "audit" / "audit.json").read_text())
    return audit_checks(report, json.loads((run / "results.json").read_text())["plan"]["tasks"])


def print_record(name: str, record: dict, extra=lambda task: "") -> None:
    """One line per task (its checks met or missed; ``extra(task)`` first) and one for the audit's models."""
    for t in record["tasks"]:
        missed = [k for k, ok in t["checks"].items() if not ok]
        print(f"{name} task {t['task']}: {extra(t)}Acc_f {t['acc_f']:.1f} Acc_o {t['acc_o']} dAcc_r "
              f"{t['acc_r_change']:+.1f} H {t['h_mean']:.1f} (head {t['head_h_mean']:.1f}) probe_f {t['probe_f']} "
              f"{'met' if not missed else 'MISSED ' + ', '.join(missed)}", flush=True)
    print(f"{name} audit: " + "; ".join(f"{k} probe {v['probe_f']:.1f} rec {v['recovery']} mia {v['mia_auc']:.3f}"
                                        for k, v in record["audit"]["models"].items()), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=sorted(RUNS))
    p.add_argument("--out", default="runs/depth")
    p.add_argument("--reuse-head", action="store_true",
                   help="keep an existing head run of the same plan (head forgetting does not depend on GS-LoRA's "
                        "settings) and its time from the results file")
    p.add_argument("--results", default=str(HERE.parent / "docs" / "results" / "depth_proof.json"))
    p.add_argument("--refresh", action="store_true", help="run nothing: re-read the audits of the run folders in "
                   "--out into the results file (after a change to what is summarised)")
    args = p.parse_args(argv)
    if args.refresh:
        path = Path(args.results)
        saved = json.loads(path.read_text())
        for name, record in saved["runs"].items():
            record["audit"] = read_audit(Path(args.out) / f"proof-{name}")
        path.write_text(json.dumps(saved, indent=1))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(args.results)
    for name in args.only or list(RUNS):
        data, tasks = RUNS[name]
        if data != "faces" and not Path(data).is_dir():
            print(f"{name}: {data} not found, skipped", file=sys.stderr)
            continue
        stem = name.split("-")[0]
        ckpt = out / f"{stem}.safetensors"
        record = {}
        if not ckpt.exists():
            record["pretrain_seconds"] = run(["pretrain", "--data", data, "--model", "vit_face_tiny", "--out",
                                              str(ckpt), "--no-progress"])
        meta = json.loads(ckpt.with_suffix(".json").read_text())
        pre = meta.get("extra", meta).get("pretrain", {})
        record["pretrain"] = {k: pre.get(k) for k in ("steps", "max_steps", "extensions", "stopped_at_cap",
                                                      "best_step", "train_acc", "val_acc", "test_acc")}
        gs, head = out / f"proof-{name}", out / f"proof-{name}-head"
        common = ["--checkpoint", str(ckpt), "--data", data, "--tasks", tasks, "--overwrite", "--no-progress"]
        record["forget_seconds"] = run(["forget", *common, "--out", str(gs)])
        before = json.loads(Path(args.results).read_text())["runs"].get(name, {}) if Path(args.results).exists() else {}
        if args.reuse_head and (head / "results.json").exists() and "head_seconds" in before:
            record["head_seconds"] = before["head_seconds"]
            print(f"head run kept: {head}", flush=True)
        else:
            record["head_seconds"] = run(["forget", *common, "--method", "head", "--out", str(head)])
        record["audit_seconds"] = run(["audit", str(gs), "--retrain-full", "--compare",
                                       f"head={head / 'final.safetensors'}", "--no-progress"])
        results = json.loads((gs / "results.json").read_text())
        head_results = json.loads((head / "results.json").read_text())
        record["tasks"] = task_checks(results["tasks"], head_results["tasks"])
        record["audit"] = read_audit(gs)
        record["commands"] = [f"gslora forget --checkpoint CKPT --data {data} --tasks {tasks}",
                              f"gslora forget --checkpoint CKPT --data {data} --tasks {tasks} --method head",
                              "gslora audit RUN --retrain-full --compare head=HEAD_RUN/final.safetensors"]
        print_record(name, record)
        a = record["audit"]
        print(f"{name} audit checks: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}"
                                                   for k, ok in a["checks"].items()), flush=True)
        saved = json.loads(path.read_text()) if path.exists() else {"runs": {}}
        saved["machine"] = f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.system()}, OMP_NUM_THREADS=1"
        saved["runs"][name] = record
        path.write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
