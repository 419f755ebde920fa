"""Write every table of measured figures in README.md and docs/ from the raw files in docs/results/.

A generated table sits between two marker comments in the Markdown:

    <!-- table:NAME -->
    | ... the table ... |
    <!-- /table:NAME -->

and NAME is one entry of ``TABLES`` below: a small function that reads docs/results/*.json(l) and returns the
Markdown. Nothing else in the Markdown is touched.

    .venv/bin/python benchmarks/make_tables.py            # rewrite the tables in place
    .venv/bin/python benchmarks/make_tables.py --check    # exit 1 and name every table that differs
    .venv/bin/python benchmarks/make_tables.py --list     # the table names and the files that hold them

``--root DIR`` (default: the repository) is where README.md and docs/ are read; ``--results DIR`` (default:
ROOT/docs/results) is where the raw files are read. Only the standard library is used, so the check is fast.
Tables of settings, options or file layouts are written by hand and have no markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- table:(?P<name>[\w.+-]+) -->\n(?P<body>.*?)<!-- /table:(?P=name) -->", re.S)
OPEN = re.compile(r"<!-- table:([\w.+-]+) -->")
CLOSE = re.compile(r"<!-- /table:([\w.+-]+) -->")
BAR = {"acc_f": 5.0, "acc_o": 5.0, "acc_r_drop": 3.0}  # the project's bar: Acc_f <= 5, Acc_o <= 5, ΔAcc_r >= -3


# --------------------------------------------------------------------------------------------------- raw files


class Results:
    """The raw files of one results folder, each read once."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._cache: dict[str, object] = {}

    def __call__(self, name: str):
        if name not in self._cache:
            path = self.folder / name
            text = path.read_text(encoding="utf-8")
            if name.endswith(".jsonl"):
                self._cache[name] = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                self._cache[name] = json.loads(text)
        return self._cache[name]


# ------------------------------------------------------------------------------------------------- formatting


def f1(x, none: str = "-") -> str:
    """One decimal; None as a dash."""
    if x is None:
        return none
    s = f"{x:.1f}"
    return "0.0" if s == "-0.0" else s


def f0(x, none: str = "-") -> str:
    return none if x is None else f"{x:.0f}"


def f2(x, none: str = "-") -> str:
    return none if x is None else f"{x:.2f}"


def signed(x, none: str = "-") -> str:
    """One decimal with its sign (+1.3, -2.7); zero as 0.0."""
    if x is None:
        return none
    s = f"{x:+.1f}"
    return "0.0" if s in ("+0.0", "-0.0") else s


def per_task(values, fmt=f1, sep=" / ") -> str:
    return sep.join(fmt(v) for v in values)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bar_misses(acc_f, acc_o, delta_r) -> list[str]:
    """What one task misses of the bar (ΔAcc_r is the change against the pre-trained model)."""
    miss = []
    if acc_f > BAR["acc_f"]:
        miss.append("acc_f")
    if acc_o is not None and acc_o > BAR["acc_o"]:
        miss.append("acc_o")
    if -delta_r > BAR["acc_r_drop"]:
        miss.append("acc_r_drop")
    return miss


def shared_name(path: str) -> str:
    """'/work/shared/data/orl-faces' -> '../shared/data/orl-faces' (the benchmark machines' layout)."""
    return "../shared/data/" + path.split("/shared/data/", 1)[1] if "/shared/data/" in path else path


# ---------------------------------------------------------------------------------------- the registered tables

TABLES: dict[str, Callable[[Results], str]] = {}


def table(name: str):
    def register(fn):
        TABLES[name] = fn
        return fn
    return register


# --- the demo (README) -------------------------------------------------------------------------------------------


@table("demo")
def demo(r: Results) -> str:
    """`gslora demo` with the bundled model, per task, from docs/results/demo_time.json."""
    run = r("demo_time.json")["runs"]["bundled model (default)"]
    rows = []
    for t in run["tasks"]:
        first = 100 - 20 * (t["task"] - 1)
        rows.append([f"{t['task']} ({first}-20)", f1(t["acc_f"]), f1(t["acc_o"]),
                     signed(t["acc_r_change_vs_pretrained"]), f1(t["h_mean"]),
                     f"{t['steps']} ({t['steps_all_trials']})", f0(t["wall_seconds"])])
    rows.append(["whole run", "", "", "", "", f"({sum(t['steps_all_trials'] for t in run['tasks'])})",
                 f"{run['printed_demo_seconds']:.0f}"])
    return md_table(["Task", "Acc_f", "Acc_o", "ΔAcc_r", "H-Mean", "steps (all trials)", "time (s)"], rows)


# --- depth (docs/results/DECISIONS.md, docs/audit.md) ---------------------------------------------------------------

DEPTH_SETS = (("orl-4x5", "ORL 4 × 5"), ("gt-4x10", "Georgia Tech 4 × 10"), ("faces-4x20", "bundled faces 4 × 20"),
              ("omniglot-4x20", "Omniglot 4 × 20"))
DEPTH_LABELS = {"defaults": "GS-LoRA, previous defaults (no feature term, no probe target)",
                "paper-ce": "paper's bounded CE, full budget, all blocks free",
                "attack": "attack in the loop (ridge, weight 10) + probe_keep ≤ 80",
                "collapse": ("**class-mean collapse (weight 10) + probe_keep ≤ 80: adopted** "
                             "(later 20, with the anchor)"),
                "collapse-w3": "class-mean collapse, weight 3",
                "collapse-k65": "class-mean collapse + probe_keep ≤ 65",
                "collapse-a0.1": "class-mean collapse, α 0.1",
                "collapse-a0.6": "class-mean collapse, α 0.6",
                "rmu": "RMU at the middle block (weight 10) + probe_keep ≤ 80"}


def _rec(v):
    return f0(v["recovery"]) + "%" if v.get("recovery") is not None else "-"


def _depth_runs(r: Results, name: str):
    """(label, record) of each dataset of DEPTH_SETS that the results file ``name`` holds, in that order."""
    runs = r(name)["runs"]
    return [(label, runs[key]) for key, label in DEPTH_SETS if runs.get(key)]


def _entries(record: dict, labels: dict, need: str | None = None) -> list[tuple[str, dict]]:
    """(label, entry) for each key of ``labels`` that ``record`` holds (with ``need`` in the entry, when given), in the
    order of ``labels``."""
    return [(name, record[key]) for key, name in labels.items()
            if record.get(key) and (need is None or need in record[key])]


@table("depth_objectives")
def depth_objectives(r: Results) -> str:
    """benchmarks/depth_objectives.py: per objective the worst task and the final audit against the references."""
    rows = []
    for label, record in _depth_runs(r, "depth_objectives.json"):
        entries = _entries(record, DEPTH_LABELS, "audit")
        first = next((v for v in record.values() if isinstance(v, dict) and "audit" in v), None)
        if not entries:
            continue
        ref = first["audit"]["models"]
        for who in ("retrained", "head"):
            v = ref[who]
            rows.append([label, "model retrained without them" if who == "retrained" else "head forgetting", "-",
                         "-", f1(v["probe_f"]), _rec(v), f"{v['mia_auc']:.3f}", "-", "-"])
        for name, v in entries:
            ts = v["tasks"]
            a = v["audit"]["models"]["forgotten"]
            blocks = sorted({b for t in ts for b in (t["blocks"] or [])})
            rows.append([label, name, signed(min(t["acc_r_change"] for t in ts)),
                         f1(max((t["acc_o"] or 0.0) for t in ts)), f1(a["probe_f"]), _rec(a), f"{a['mia_auc']:.3f}",
                         ",".join(map(str, blocks)), f"{sum(t['steps_all_trials'] for t in ts)} / {v['seconds']:.0f}"])
    return md_table(["data", "objective", "worst ΔAcc_r", "worst Acc_o", "probe Acc_f", "recovery", "MIA AUC",
                     "blocks changed", "steps / s"], rows)


ANCHOR_LABELS = {"previous": "collapse 10, no anchor (before)",
                 "keep10": "collapse 10, anchor 10 (fixed)", "keep30": "collapse 10, anchor 30 (fixed)",
                 "keep100": "collapse 10, anchor 100 (fixed)", "keep10-c30": "collapse 30, anchor 10 (fixed)",
                 "a10x3-c30": "collapse 30, anchor 10, x3 after a retention miss",
                 "a10x3-c20": "**collapse 20, anchor 10, x3 after a retention miss: adopted**",
                 "old2": "the adopted, + 2 images of each earlier-forgotten class collapsed with them"}


@table("depth_anchor")
def depth_anchor(r: Results) -> str:
    """benchmarks/depth_objectives.py --tasks 2xK: the anchor and the collapse weight, per task (test split)."""
    rows = []
    for label, record in _depth_runs(r, "depth_anchor.json"):
        for name, v in _entries(record, ANCHOR_LABELS):
            ts = v["tasks"]
            rows.append([label, name, per_task([t["acc_f"] for t in ts]), per_task([t["acc_o"] for t in ts[1:]]),
                         per_task([t["acc_r_change"] for t in ts], signed), per_task([t["probe_f"] for t in ts], f0),
                         f0(v["seconds"])])
    return md_table(["data", "setting", "Acc_f", "Acc_o (task 2 on)", "ΔAcc_r", "probe_f", "s"], rows)


def _timing_cells(rec: dict) -> list[str]:
    """A depth_timing.json record: seconds per task now and before, steps now / before."""
    now, before = rec["now"]["tasks"], rec["before"]["tasks"]
    return [per_task([t["wall_seconds"] for t in now], f0), per_task([t["wall_seconds"] for t in before], f0),
            f"{sum(t['steps_all_trials'] for t in now)} / {sum(t['steps_all_trials'] for t in before)}"]


@table("depth_timing")
def depth_timing(r: Results) -> str:
    """benchmarks/depth_timing.py: the defaults against the ones before the depth work, started together."""
    rows = [[label, *_timing_cells(rec), per_task([t["probe_f"] for t in rec["now"]["tasks"]], f0),
             per_task([t["probe_f"] for t in rec["before"]["tasks"]], f0), f"{rec['ratio']:.2f}"]
            for label, rec in _depth_runs(r, "depth_timing.json")]
    return md_table(["data", "s per task, now", "s per task, before", "steps now / before", "probe_f now",
                     "probe_f before", "time ratio"], rows)


@table("depth_timing_then")
def depth_timing_then(r: Results) -> str:
    """benchmarks/depth_timing.py --then REV: the defaults against the code the depth work started from, on the
    machine of depth_timing.json and on the one of the proof from zero (depth_timing_rerun.json)."""
    rows = []
    for name, machine in (("depth_timing.json", "earlier (the proof's)"),
                          ("depth_timing_rerun.json", "Intel Xeon, AVX-512 (the proof from zero)")):
        then = r(name).get("then", {})
        for key, label in DEPTH_SETS:
            if then.get(key):
                rec = then[key]
                ratios = [a["wall_seconds"] / b["wall_seconds"]
                          for a, b in zip(rec["now"]["tasks"], rec["before"]["tasks"])]
                rows.append([label, machine, rec["before_code"], *_timing_cells(rec), per_task(ratios, f2),
                             f"{rec['ratio']:.2f}"])
    return md_table(["data", "machine", "then (commit)", "s per task, now", "s per task, then", "steps now / then",
                     "ratio per task", "time ratio"], rows)


@table("trial_carry")
def trial_carry(r: Results) -> str:
    """benchmarks/trial_carry.py: each task's first trial at the lr its predecessor kept, against the defaults on the
    same checkpoint (the proof from zero, depth_proof_rerun.json; a second pair with the lr moved by 0.1%)."""
    proof = r("depth_proof_rerun.json")["runs"]
    rows = []
    for key, rec in r("trial_carry.json")["runs"].items():  # a dataset's key, + --label for a run with --set
        name, label = next((k, v) for k, v in DEPTH_SETS if key.startswith(k))
        label += f" ({', '.join(rec['settings'])})" if rec.get("settings") else ""
        base = rec.get("defaults") or {"tasks": proof[name]["tasks"], "audit": proof[name]["audit"],
                                       **{k: rec["proof"][k] for k in ("steps_all_trials", "trials")}}
        carry = {"tasks": rec["tasks"], "audit": rec["audit"], "steps_all_trials": [t["steps_all_trials"]
                                                                                     for t in rec["tasks"]],
                 "trials": [len(t["lr_scales"]) for t in rec["tasks"]]}
        for setting, run in (("defaults", base), ("first trial at the lr the task before kept", carry)):
            steps, audit = run["steps_all_trials"], run["audit"]["models"]["forgotten"]
            missed = [f"{t['task']}: {', '.join(k for k, ok in t['checks'].items() if not ok)}" for t in run["tasks"]
                      if not all(t["checks"].values())]
            rows.append([label, setting, per_task(steps, f0), f"{sum(steps)} ({sum(run['trials'])})",
                         "; ".join(missed) or "none", f1(audit["probe_f"]), _rec(audit), f"{audit['mia_auc']:.3f}"])
    return md_table(["data", "first trial", "steps per task (all trials)", "steps (trials)", "per-task checks missed",
                     "probe Acc_f", "recovery", "MIA AUC"], rows)


@table("depth_calibration")
def depth_calibration(r: Results) -> str:
    """The in-loop probe of the original and of a model retrained without the forgotten classes."""
    rows = []
    for label, record in _depth_runs(r, "depth_objectives.json"):
        cal = record.get("calibration")
        if cal:
            rows.append([label, per_task([c["original"] for c in cal]), per_task([c["retrained"] for c in cal]),
                         per_task([c["retrained_keep"] for c in cal], f0), f0(cal[0]["images"])])
    return md_table(["data", "probe_f, original (task 1 / 2 / 3 / 4)", "probe_f, retrained", "retrained keeps (%)",
                     "images"], rows)


def _proof_tasks(name: str, r: Results) -> str:
    """Per task of each proof run in the results file ``name``, with each check met or missed."""
    rows = []
    for label, rec in _depth_runs(r, name):
        for t in rec["tasks"]:
            missed = [k for k, ok in t["checks"].items() if not ok]
            rows.append([label, str(t["task"]), f1(t["acc_f"]), f1(t["acc_o"]), signed(t["acc_r_change"]),
                         f"{f1(t['h_mean'])} ({f1(t['head_h_mean'])})", f1(t["probe_f"]),
                         f"{f0(t['wall_seconds'])} ({f0(t['head_wall_seconds'])})",
                         "met" if not missed else "MISSED " + ", ".join(missed)])
    return md_table(["data", "task", "Acc_f", "Acc_o", "ΔAcc_r", "H (head)", "probe_f", "s (head)", "checks"], rows)


def _proof_audit(name: str, r: Results) -> str:
    """The audit after the last task of each proof run in ``name``, against the retrained model and head forgetting."""
    rows = []
    for label, rec in _depth_runs(r, name):
        m = rec["audit"]["models"]
        for who, model in (("original", "original"), ("forgotten", "GS-LoRA, defaults"), ("head", "head forgetting"),
                           ("retrained", "retrained without them")):
            v = m[who]
            rows.append([label, model, f1(v["acc_f"]), f1(v["acc_r"]), f1(v["probe_f"]),
                         _rec(v) if who != "original" else "-", f"{v['mia_auc']:.3f}"])
        missed = [k for k, ok in rec["audit"]["checks"].items() if not ok]
        rows.append([label, "checks", "", "", "", "", "all met" if not missed else "MISSED: " + "; ".join(missed)])
    return md_table(["data", "model", "Acc_f", "Acc_r", "probe Acc_f", "recovery", "MIA AUC"], rows)


def _proof_by_task(name: str, r: Results) -> str:
    """The final audit's probe Acc_f per group of classes, by the task that forgot them."""
    rows = []
    for label, rec in _depth_runs(r, name):
        by = rec["audit"].get("probe_by_task")
        if not by:
            continue
        gap = [None if g is None or t is None else g - t for g, t in zip(by["forgotten"], by["retrained"])]
        rows.append([label, per_task(by["original"], f0), per_task(by["forgotten"], f0), per_task(by["retrained"], f0),
                     per_task(gap, signed)])
    return md_table(["data", "original (classes of task 1 / 2 / 3 / 4)", "GS-LoRA, defaults", "retrained",
                     "GS-LoRA − retrained"], rows)


# benchmarks/depth_proof.py, per task / the audit after the last task / its probe by group: the first run
# (depth_proof.json, which the DECISIONS experiments measure against) and the one from zero (depth_proof_rerun.json)
for _prefix, _file in (("depth_proof", "depth_proof.json"), ("depth_rerun", "depth_proof_rerun.json")):
    for _suffix, _make in (("", _proof_tasks), ("_audit", _proof_audit), ("_by_task", _proof_by_task)):
        TABLES[_prefix + _suffix] = partial(_make, _file)


EROSION_LABELS = {"old2": "+ 2 images of each earlier-forgotten class (`old_forget_shots: 2`), η² with this task's",
                  "oldapart": "+ 2 images of each earlier-forgotten class, η² of theirs and this task's apart",
                  "layers": "collapse also on the block outputs from the middle on",
                  "layerscls": "collapse also on the class token of the block outputs from the middle on",
                  "layerscls2": "the same as a further term (the embedding's collapse at full weight)",
                  "layersclshold": "layerscls2 + the anchor also on those class tokens",
                  "layersclshalf": "layerscls2 + the anchor on those class tokens, their collapse at half weight",
                  "layershold": "the anchor also on the replay batch's class tokens from the middle on (no collapse "
                                "there)",
                  "fc2only": "LoRA on each FFN's output projection only (fc1's adapter held at zero)",
                  "keeplast": "the last block's adapter held at zero from task 2 on (a diagnostic)",
                  "lastonly": "only the last block's adapter trained from task 2 on (the converse diagnostic)",
                  "layersclshold-b2": "layerscls2 + the anchor on those class tokens, the forgetting term's β x2, "
                                      "every trial",
                  "defaults-b2": "the forgetting term's β x2 alone (a control)",
                  "holdstrangers": "layerscls2 + the anchor on those class tokens and on strangers",
                  "defaults-mid": "`middle_blocks: true`: the same, β x2, in each task's first trial only",
                  "marginhold": "the replay images' margins to the nearest other class held (weight 10)",
                  "projected": "every LoRA A kept out of the replay images' input directions (95% of their energy)",
                  "defaults-replay8": "the defaults with 8 replay images per remaining class (`min_replay: 8`, "
                                      "`min_forget: 4`)",
                  "firstmiddle-replay8": "first-trial middle blocks with 8 replay images per remaining class",
                  "droppath": "collapse under stochastic depth 0.2",
                  "anchor30": "embedding anchor 30 (×3 after a retention miss) instead of 10",
                  "oldanchor": "+ 2 images of each earlier-forgotten class, held by the anchor (not collapsed)",
                  "strangers": "the anchor also on mixes of two remaining people's images (no data of the forgotten)",
                  "robust": "the collapse also under a random rank-8 change of two blocks (20% of their norm)",
                  "earlierout": "every LoRA A kept out of the directions the earlier tasks' updates read (99% of "
                                "their energy; no data)"}


@table("depth_erosion")
def depth_erosion(r: Results) -> str:
    """benchmarks/probe_gap.py --erosion: per model after each task, the in-loop probe (check images) and the test η²
    of each task's forgotten classes."""
    rows = []
    for key, label in DEPTH_SETS:
        run = r("probe_gap.json").get(key)
        if not run or "erosion" not in run:
            continue
        for e in run["erosion"]:
            who = {None: "retrained without them", 0: "original"}.get(e["after_task"], f"after task {e['after_task']}")
            moved = e.get("test_drift_by_group")
            rows.append([label, who,
                         " / ".join(f0(v) for v in e["check_probe_by_group"]),
                         " / ".join(f"{v:.2f}" for v in e["test_eta2_by_group"]),
                         " / ".join(f"{v:.2f}" for v in moved) + f" ({e['test_drift_remain']:.2f})" if moved else "-"])
    return md_table(["data", "model", "probe_f on check images (classes of task 1 / 2 / 3 / 4)",
                     "η² on test images (same groups)", "embeddings moved by the task (remaining classes)"], rows)


def _seeds_cell(refs: list, summ: dict, key: str, fmt) -> str:
    return (" / ".join(fmt(x["retrained"][key]) for x in refs)
            + f" (mean {fmt(summ[key]['mean'])}, sd {fmt(summ[key]['sd'])})")


@table("floor_seeds")
def floor_seeds(r: Results) -> str:
    """benchmarks/floor_seeds.py: the retrained reference with several seeds against the depth proof's GS-LoRA
    model, and the proof's three distance checks against the seeds' mean."""
    rows = []
    for key, label in DEPTH_SETS:
        run = r("floor_seeds.json").get(f"proof-{key}")
        if not run:
            continue
        refs, summ = run["references"], run["summary"]
        p_, r_, m_ = summ["probe_f"], summ["recovery"], summ["mia_auc"]
        checks = [f"probe {signed(p_['forgotten'] - p_['mean'])} "
                  f"{'met' if p_['forgotten'] <= p_['mean'] + 5 else 'MISSED'}",
                  f"recovery {signed(r_['forgotten'] - r_['mean'])} "
                  f"{'met' if r_['forgotten'] <= r_['mean'] + 10 else 'MISSED'}",
                  f"MIA {m_['forgotten'] - m_['mean']:+.3f} "
                  f"{'met' if abs(m_['forgotten'] - m_['mean']) <= 0.05 else 'MISSED'}"]
        rows.append([label, ", ".join(str(x["seed"]) for x in refs), _seeds_cell(refs, summ, "probe_f", f1),
                     f1(p_["forgotten"]), _seeds_cell(refs, summ, "recovery", f0), f0(r_["forgotten"]),
                     _seeds_cell(refs, summ, "mia_auc", lambda v: f"{v:.3f}"), f"{m_['forgotten']:.3f}",
                     "; ".join(checks)])
    return md_table(["data", "seeds", "retrained probe Acc_f", "GS-LoRA", "retrained recovery (%)", "GS-LoRA",
                     "retrained MIA AUC", "GS-LoRA", "GS-LoRA against the mean (within 5 / 10 / 0.05)"], rows)


@table("generic_probe")
def generic_probe(r: Results) -> str:
    """benchmarks/generic_probe.py: the audit's probe on the other face datasets' people (whom no model here saw)
    under the depth proof's models, and the same gap on the forgotten people (the proof's audit against the mean of
    the three retrained references of floor_seeds.json) beside it."""
    from statistics import mean

    names = {"orl": "ORL", "gt": "Georgia Tech", "faces": "bundled faces"}
    rows = []
    for key, label in DEPTH_SETS:
        run = r("generic_probe.json").get(f"proof-{key}")
        if not run:
            continue
        audit = r("depth_proof.json")["runs"][key]["audit"]["models"]
        seeds = r("floor_seeds.json").get(f"proof-{key}")  # the same three references' mean, as on the strangers
        floor = seeds["summary"]["probe_f"]["mean"] if seeds else audit["retrained"]["probe_f"]
        forgot = audit["original"]["probe_f"] - floor
        for other, got in run["sets"].items():
            probe = got["probe"]
            refs = [v for k, v in probe.items() if k.startswith("retrained")]
            rows.append([f"{label} ({run['remain']} of {run['classes']} kept)",
                         f"{names.get(other, other)} ({got['classes']} people)", f1(probe["original"]),
                         f1(probe["forgotten"]), f1(probe.get("head")),
                         f"{mean(refs):.1f} ({min(refs):.1f}-{max(refs):.1f})",
                         signed(probe["original"] - mean(refs)), signed(forgot)])
    return md_table(["model trained on", "probed on (people no model saw)", "original", "GS-LoRA, defaults",
                     "head forgetting", "retrained, 3 seeds (range)", "original − retrained, these people",
                     "original − retrained, the forgotten (audit, 3 seeds' mean)"], rows)


@table("depth_by_block")
def depth_by_block(r: Results) -> str:
    """benchmarks/probe_gap.py --blocks: task 1's forgotten classes read at the class token of every block's output
    and at the embedding."""
    rows = []
    for key, label in DEPTH_SETS:
        run = r("probe_gap.json").get(key)
        if not run or "task1_by_block" not in run:
            continue
        for who, v in run["task1_by_block"].items():
            rows.append([label, who, " / ".join(f0(x) for x in v["class_token"]), f0(v["embedding"])])
    return md_table(["data", "model", "class token at the output of block 0 / 1 / ... / last", "embedding"], rows)


PROBE_O_LABELS = {"defaults-probe-o": "defaults (lr 0.005)", "lr0.0025": "lr 0.0025", "lr0.01": "lr 0.01"}


@table("depth_probe_o")
def depth_probe_o(r: Results) -> str:
    """The per-task probe of the earlier-forgotten classes (test images) after and before each task, per setting."""
    rows = []
    for label, record in _depth_runs(r, "depth_objectives.json"):
        for name, v in _entries(record, PROBE_O_LABELS):
            rows.append([label, name, per_task([t["probe_f"] for t in v["tasks"]], f0),
                         " / ".join(f"{f0(t['probe_o'])} ({f0(t['probe_o_before'])})" for t in v["tasks"][1:])])
    return md_table(["data", "setting", "probe_f (task 1 / 2 / 3 / 4)",
                     "earlier-forgotten after (before) tasks 2 / 3 / 4"], rows)


def _worst(ts):
    """Worst Acc_f, ΔAcc_r and Acc_o over a run's tasks (dashes without tasks)."""
    return ([f1(max(t["acc_f"] for t in ts)), signed(min(t["acc_r_change"] for t in ts)),
             f1(max((t["acc_o"] or 0.0) for t in ts))] if ts else ["-", "-", "-"])


SPREAD_LABELS = {"defaults-jitter": "defaults, lr 0.005005", "defaults-jitter2": "defaults, lr 0.004995",
                 "defaults-mid": "first-trial middle blocks (`firstmiddle`)",
                 "firstmiddle-jitter": "first-trial middle blocks, lr 0.005005",
                 "firstmiddle-jitter2": "first-trial middle blocks, lr 0.004995",
                 "layersclshold-b2": "middle blocks in every trial, β x2"}


@table("depth_spread")
def depth_spread(r: Results) -> str:
    """How far a single run moves by itself: the defaults (depth_proof.json) and the same with the lr changed by 0.1%,
    beside the middle-block settings."""
    rows = []
    proof = dict(_depth_runs(r, "depth_proof.json"))
    for label, record in _depth_runs(r, "depth_objectives.json"):
        entries = _entries(record, SPREAD_LABELS, "audit")
        if label not in proof or not any(k.startswith("defaults-jitter") for k in record):
            continue
        ref = proof[label]
        shown = [("defaults, lr 0.005 (the proof)", ref["audit"]["models"]["forgotten"], ref["tasks"])]
        shown += [(name, v["audit"]["models"]["forgotten"], v["tasks"]) for name, v in entries]
        rows += [[label, name, *_worst(ts), f1(a["probe_f"]), _rec(a), f"{a['mia_auc']:.3f}"] for name, a, ts in shown]
    return md_table(["data", "run", "worst Acc_f", "worst ΔAcc_r", "worst Acc_o", "probe Acc_f", "recovery",
                     "MIA AUC"], rows)


RETENTION_KEYS = (("faces-4x20-retention", "bundled faces 4 × 20, defaults (the proof)"),
                  ("faces-4x20-firstmiddle-retention", "bundled faces 4 × 20, first-trial middle blocks"))


@table("retention_drift")
def retention_drift(r: Results) -> str:
    """benchmarks/probe_gap.py --retention: per task, the kept classes' replay images against their test images."""
    rows = []
    for key, label in RETENTION_KEYS:
        for t in (r("probe_gap.json").get(key) or {}).get("retention", []):
            rows.append([label, t["task"], f"{t['replay_drift']:.2f}", f"{t['test_drift']:.2f}",
                         f"{f1(t['replay_acc_before'])} → {f1(t['replay_acc_after'])}",
                         f"{f1(t['test_acc_before'])} → {f1(t['test_acc_after'])}"])
    return md_table(["run", "task", "replay images moved", "test images moved", "replay accuracy", "test accuracy"],
                    rows)


@table("depth_erosion_options")
def depth_erosion_options(r: Results) -> str:
    """benchmarks/depth_objectives.py: what was tried against the erosion, against the defaults (depth_proof.json)."""
    rows = []
    proof = dict(_depth_runs(r, "depth_proof.json"))
    for label, record in _depth_runs(r, "depth_objectives.json"):
        entries = _entries(record, EROSION_LABELS, "audit")
        if label not in proof or not entries:
            continue
        ref = proof[label]
        shown = [("model retrained without them", ref["audit"]["models"]["retrained"], None),
                 ("GS-LoRA, defaults", ref["audit"]["models"]["forgotten"], ref["tasks"])]
        shown += [(name, v["audit"]["models"]["forgotten"], v["tasks"]) for name, v in entries]
        rows += [[label, name, *_worst(ts), f1(a["probe_f"]), _rec(a), f"{a['mia_auc']:.3f}"] for name, a, ts in shown]
    return md_table(["data", "setting", "worst Acc_f", "worst ΔAcc_r", "worst Acc_o", "probe Acc_f", "recovery",
                     "MIA AUC"], rows)


# --- forgetting with the defaults (docs/benchmarks.md) ------------------------------------------------------------


def forget_defaults_rows(tasks: list[dict]) -> list[list[str]]:
    rows = []
    for t in tasks:
        miss = [k for k, ok in t["bar_met"].items() if not ok]
        blocks = "-" if t["selected_blocks"] is None else f"{len(t['selected_blocks'])}/{t['num_blocks']}"
        rows.append([t["task"], f1(t["acc_f"]), f1(t["acc_o"]), signed(-t["acc_r_drop"]), f1(t["h_mean"] or 0),
                     blocks, f"{t['steps']} ({t['steps_all_trials']})", t["trials"],
                     "met" if not miss else "missed " + ", ".join(miss)])
    return rows


def forget_defaults(run: str, key: str, r: Results) -> str:
    """One run of benchmarks/forget_defaults.py, per task, from docs/results/forget_defaults.json."""
    entry = r("forget_defaults.json")["runs"][run]
    pre = entry["pretrain"]
    caption = (f"*{run}*: pre-trained to {f1(pre['test_acc'])}% test accuracy in {pre['steps']} steps; "
               f"forgetting took {entry[key]['seconds']:.0f} s.")
    return caption + "\n\n" + md_table(["task", "Acc_f", "Acc_o", "ΔAcc_r", "H", "blocks", "steps (all trials)",
                                         "trials", "bar"], forget_defaults_rows(entry[key]["tasks"]))


for _run in ("orl-4x5", "orl-4x8", "gt-4x10", "faces-4x20", "omniglot-4x20"):
    TABLES[f"forget_defaults_{_run.replace('-', '_')}"] = partial(forget_defaults, _run, "defaults")


@table("forget_defaults_earlier_orl")
def forget_defaults_earlier_orl(r: Results) -> str:
    """The defaults on the earlier ORL checkpoint: ΔAcc_r / Acc_o per task, both plans."""
    runs = r("forget_defaults.json")["runs"]
    rows = []
    for name in ("orl-4x5", "orl-4x8"):
        ts = runs[name]["defaults, earlier checkpoint"]["tasks"]
        misses = sum(1 for t in ts if not all(t["bar_met"].values()))
        rows.append([name.replace("orl-", "ORL ").replace("x", " × "), per_task([t["acc_f"] for t in ts]),
                     per_task([t["acc_o"] for t in ts[1:]]), per_task([-t["acc_r_drop"] for t in ts], signed),
                     signed(mean(-t["acc_r_drop"] for t in ts)), misses])
    return md_table(["plan", "Acc_f", "Acc_o (tasks 2-4)", "ΔAcc_r", "mean ΔAcc_r", "tasks missing the bar"], rows)


@table("alpha_sweep")
def alpha_sweep(r: Results) -> str:
    """benchmarks/alpha_sweep.py: blocks, Acc_f and ΔAcc_r per task for each α (docs/results/alpha_sweep.json)."""
    runs = r("alpha_sweep.json")["runs"]
    rows = []
    for name, label in (("orl-4x5", "ORL 4 × 5"), ("faces-4x20", "faces 4 × 20")):
        for alpha, entry in runs[name].items():
            ts = entry["tasks"]
            rows.append([f"{label}, α {alpha}" + (" (default)" if alpha == "0.3" else ""),
                         " ".join(f"{len(t['selected_blocks'])}/{t['num_blocks']}" for t in ts),
                         per_task([t["acc_f"] for t in ts]), per_task([-t["acc_r_drop"] for t in ts], signed),
                         f0(entry["seconds"])])
    return md_table(["α", "blocks selected, tasks 1-4", "Acc_f", "ΔAcc_r", "seconds"], rows)


SEED7 = (("ORL 4 × 5", "orl", "tc6"), ("ORL 4 × 8", "orl8", "tc6s7"), ("GT 4 × 10", "gt", "tc6s7"),
         ("bundled faces 4 × 20", "faces", "tc6s7"))


@table("seed7_defaults")
def seed7_defaults(r: Results) -> str:
    """The defaults on a second task plan (seed 7), from docs/results/forget_defaults_seed7.jsonl."""
    lines = r("forget_defaults_seed7.jsonl")
    rows = []
    for label, ds, key in SEED7:
        entry = next(e for e in lines if e["ds"] == ds and e["label"] == key)
        ts = entry["rows"]
        misses = sum(1 for t in ts if bar_misses(t["af"], t["ao"], t["dar"]))
        rows.append([label, per_task([t["af"] for t in ts]), per_task([t["ao"] for t in ts[1:]]),
                     per_task([t["dar"] for t in ts], signed), signed(mean(t["dar"] for t in ts)), misses])
    return md_table(["data", "Acc_f", "Acc_o (tasks 2-4)", "ΔAcc_r", "mean ΔAcc_r", "tasks missing the bar"], rows)


# --- pre-training (docs/pretraining.md) ---------------------------------------------------------------------------


@table("pretrain_defaults")
def pretrain_defaults(r: Results) -> str:
    """benchmarks/pretrain_defaults.py, from docs/results/pretrain_defaults.json."""
    rows = []
    for run in r("pretrain_defaults.json")["runs"].values():
        rows.append([f"`{shared_name(run['data'])}`" + (" (bundled)" if run["data"] == "faces" else ""),
                     run["classes"], run["train_images"], f1(run["train_acc"]), f1(run["val_acc"]),
                     f1(run["test_acc"]), f"{run['steps']} ({run['max_steps']})", run["best_step"],
                     f0(run["train_seconds"])])
    return md_table(["data", "classes", "training images", "train", "val", "test", "steps (budget)", "best step",
                     "seconds"], rows)


# --- the tuned comparisons (docs/benchmarks.md) -------------------------------------------------------------------

LABELS = {"gslora": "GS-LoRA", "gslora++": "GS-LoRA++", "head": "head (fine-tune the head)", "l2": "L2",
          "mas": "MAS", "lwf": "LwF", "scrub-s": "SCRUB-S", "ewc": "EWC", "uniform-kd": "uniform-KD",
          "scrub": "SCRUB", "derpp": "DER++", "der": "DER", "fdr": "FDR", "ssd": "SSD", "retrain": "retrain (paper)",
          "retrain-full": "retrain (full data)"}


def comparison_continual(name: str, r: Results) -> str:
    """Test H / Acc_r / Acc_f per task, Acc_o after the last task, mean H and time, sorted by mean H."""
    comp = r(f"comparison_{name}_continual_tuned.json")
    methods = [m for m in comp["methods"] if m["status"] == "ok"]
    first = methods[0]["runs"][0]["tasks"]
    n = len(first)
    header = ["Method", "T1 H / Acc_r / Acc_f"] + [f"T{i}" for i in range(2, n + 1)] + [f"Acc_o T{n}", "mean H",
                                                                                          "time (s)"]
    rows = [["pre-trained"] + [f"- / {f1(t['pretrained']['acc_r'])} / {f1(t['pretrained']['acc_f'])}" for t in first]
            + ["-", "-", "-"]]
    scored = []
    for m in methods:
        ts = m["runs"][0]["tasks"]
        h = mean(t["h_mean"] or 0.0 for t in ts)
        scored.append((h, [LABELS.get(m["method"], m["method"])]
                       + [f"{f1(t['h_mean'] or 0)} / {f1(t['acc_r'])} / {f1(t['acc_f'])}" for t in ts]
                       + [f1(ts[-1]["acc_o"]), f1(h), f0(m["wall_seconds"])]))
    rows += [row for _, row in sorted(scored, key=lambda s: -s[0])]
    return md_table(header, rows)


def comparison_single(name: str, r: Results) -> str:
    """One run per plan (C-Y), each from the pre-trained model: H, Acc_f, Acc_r per run, sorted by mean H."""
    comp = r(f"comparison_{name}_single_tuned.json")
    plans = [p["label"] for p in comp["plans"]]
    scored = []
    for m in comp["methods"]:
        if m["status"] != "ok":
            continue
        ts = [run["tasks"][0] for run in m["runs"]]
        h = mean(t["h_mean"] or 0.0 for t in ts)
        scored.append((h, [LABELS.get(m["method"], m["method"]), per_task([t["h_mean"] or 0.0 for t in ts]), f1(h),
                           per_task([t["acc_f"] for t in ts]), per_task([t["acc_r"] for t in ts]),
                           f0(m["wall_seconds"])]))
    header = ["Method", "H " + " / ".join(plans), "mean H", "Acc_f", "Acc_r", "time (s)"]
    return md_table(header, [row for _, row in sorted(scored, key=lambda s: -s[0])])


def _avg(values):
    """The mean of the values that are not None (None if none are)."""
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def depth_scores(comp: dict) -> tuple[dict, dict, dict]:
    """A --depth comparison's retrained reference and original (each number the mean over the runs), and per method
    with depth numbers: its tasks, mean H over them and its depth numbers averaged over the runs."""
    runs = list(comp["depth"]["runs"].values())
    ref, orig = ({k: _avg(run[which][k] for run in runs) for k in ("probe_f", "recovery", "mia_auc")}
                 for which in ("retrained", "original"))
    scores = {}
    for m in comp["methods"]:
        ds = [run["methods"][m["method"]] for run in runs if m["method"] in run["methods"]]
        if m["status"] != "ok" or not ds:
            continue
        ts = [t for run in m["runs"] for t in run["tasks"]]
        scores[m["method"]] = {"tasks": ts, "h": mean(t["h_mean"] or 0.0 for t in ts),
                               "seconds": sum(run["wall_seconds"] for run in m["runs"]),
                               **{k: _avg(x[k] for x in ds)
                                  for k in ("probe_f", "recovery", "mia_auc", "probe_gap", "recovery_gap")}}
    return ref, orig, scores


def comparison_depth(name: str, r: Results) -> str:
    """A comparison run with --depth (comparison_NAME_depth.json): per method mean H over the tasks, worst Acc_f and
    Acc_o, then after the last task probe Acc_f, recovery, MIA AUC and the distance of the first two to the retrained
    reference; sorted by mean H. With several plans (the single-step setting: one run per C-Y, each audited against
    its own retrained reference) the depth numbers are means over the plans."""
    ref, orig, scores = depth_scores(r(f"comparison_{name}_depth.json"))
    rows = [["retrained reference (audit)", "-", "-", "-", f1(ref["probe_f"]), f0(ref["recovery"]) + "%",
             f"{ref['mia_auc']:.3f}", "0", "0", "-"],
            ["original", "-", "-", "-", f1(orig["probe_f"]), "-", f"{orig['mia_auc']:.3f}", "-", "-", "-"]]
    for method, d in sorted(scores.items(), key=lambda kv: -kv[1]["h"]):
        ts = d["tasks"]
        rows.append([LABELS.get(method, method), f1(d["h"]), f1(max(t["acc_f"] for t in ts)),
                     f1(max((t["acc_o"] or 0.0) for t in ts)), f1(d["probe_f"]), f0(d["recovery"]) + "%",
                     f"{d['mia_auc']:.3f}", signed(d["probe_gap"]), signed(d["recovery_gap"]),
                     f0(d["seconds"])])  # the runs' own time: a comparison resumed from its run folders reads
        # them back in no time
    return md_table(["Method", "mean H", "worst Acc_f", "worst Acc_o", "probe Acc_f", "recovery", "MIA AUC",
                     "probe − retrained", "recovery − retrained", "time (s)"], rows)


for _name in ("orl", "orl_single", "faces", "faces_single"):  # the --depth comparisons (the current defaults)
    TABLES[f"comparison_{_name}_depth"] = partial(comparison_depth, _name)
for _name in ("orl", "faces"):
    TABLES[f"comparison_{_name}_continual"] = partial(comparison_continual, _name)
    TABLES[f"comparison_{_name}_single"] = partial(comparison_single, _name)


# --- GS-LoRA++ (docs/gslora_plus.md, previous defaults in docs/results/ARCHIVE.md) ---------------------------------

PLUS_METHODS = ("gslora", "gslora++", "head", "l2")


def gslora_plus_mean_h(previous: bool, r: Results) -> str:
    """Mean H-Mean over the 4 tasks per method, dataset and setting, from docs/results/gslora_plus.json."""
    datasets = r("gslora_plus.json")["datasets"]
    suffix = " (previous defaults)" if previous else ""
    cols = [(ds, s) for ds in ("orl", "faces") for s in ("full", "few-shot", "missing")]
    rows = []
    for method in PLUS_METHODS:
        cells = []
        for ds, s in cols:
            ts = datasets[ds + suffix]["settings"][s]["methods"][method]["tasks"]
            cells.append(f1(mean(t["h_mean"] or 0.0 for t in ts)))
        rows.append([method] + cells)
    return md_table(["Method"] + [f"{'ORL' if ds == 'orl' else ds} {s}" for ds, s in cols], rows)


def gslora_plus_setting(ds: str, setting: str, r: Results) -> str:
    """One setting: H per task and its mean, Acc_f, Acc_r (and Acc_m) per task as T1 / T2 / T3 / T4, time."""
    entry = r("gslora_plus.json")["datasets"][ds]["settings"][setting]
    missing = any(t["n_missing"] for m in entry["methods"].values() for t in m["tasks"])
    header = ["Method", "H T1", "H T2", "H T3", "H T4", "mean H", "Acc_f", "Acc_r"] + (["Acc_m"] if missing else [])
    rows = []
    for name, m in entry["methods"].items():
        ts = m["tasks"]
        hs = [t["h_mean"] or 0.0 for t in ts]
        cells = [name] + [f1(h) for h in hs] + [f"**{f1(mean(hs))}**", per_task([t["acc_f"] for t in ts], f0),
                                                 per_task([t["acc_r"] for t in ts], f0)]
        cells += [per_task([t["acc_m"] for t in ts], f0)] if missing else []
        rows.append(cells + [f0(m["wall_seconds"])])
    return md_table(header + ["Time (s)"], rows)


def gslora_plus_audit(ds: str, setting: str, r: Results) -> str:
    """`gslora audit` of the GS-LoRA run with GS-LoRA++ alongside: the evidence and recovery tables it stored."""
    tables = r("gslora_plus.json")["datasets"][ds][f"audit_{setting.replace('-', '_')}"]["tables"]
    return "\n\n".join(tables[k].strip() for k in ("evidence", "recovery"))


TABLES["gslora_plus_mean_h"] = partial(gslora_plus_mean_h, False)
TABLES["gslora_plus_mean_h_previous"] = partial(gslora_plus_mean_h, True)
for _ds in ("orl", "faces"):
    for _prev in (False, True):
        _key = _ds + (" (previous defaults)" if _prev else "")
        _tag = f"gslora_plus_{_ds}" + ("_previous" if _prev else "")
        for _setting in ("full", "few-shot", "missing"):
            TABLES[f"{_tag}_{_setting.replace('-', '_')}"] = partial(gslora_plus_setting, _key, _setting)
            if _prev or _ds == "faces" or _setting == "few-shot":  # the audits that were run
                TABLES[f"{_tag}_audit_{_setting.replace('-', '_')}"] = partial(gslora_plus_audit, _key, _setting)


# --- detection (docs/detection.md) ---------------------------------------------------------------------------------


DETECTION_LABELS = {"gslora": "GS-LoRA", "finetune": "fine-tuning (forget boxes removed)", "l2": "L2"}


@table("detection_demo")
def detection_demo(r: Results) -> str:
    """benchmarks/detection_demo.py: AP per task for each method, from docs/results/detection_demo.json."""
    rows = []
    for method, entry in r("detection_demo.json")["methods"].items():
        ts = entry["tasks"]
        met = sum(1 for t in ts if t["bar_met"])
        cfg = entry["config"]
        args = cfg.get("method_args") or {}
        settings = ", ".join([f"lr {cfg['lr']:g}"] + [f"{k} {v:g}" for k, v in args.items()])
        rows.append([DETECTION_LABELS.get(method, method), settings,
                     ", ".join(f"{f1(t['ap_f_before'])} → {f1(t['ap_f'])}" for t in ts),
                     ", ".join(f"{f1(t['ap_r_pretrained'])} → {f1(t['ap_r'])}" for t in ts),
                     ", ".join(f1(t["ap_o"]) for t in ts[1:]),
                     f"met on {met} of {len(ts)} tasks", f"{ts[0]['tunable_ratio']:.1f}%",
                     f0(sum(t["wall_seconds"] for t in ts)), f0(entry["demo_seconds"])])
    return md_table(["method", "settings", "AP_f before → after, tasks 1-4", "AP_r pre-trained → after, tasks 1-4",
                     "AP_o after tasks 2-4", "bar", "trainable", "tasks (s)", "whole demo (s)"], rows)


# --- the paper-size model on a GPU (docs/gpu.md; the previous defaults' run in docs/results/ARCHIVE.md) -------------


@table("gpu_throughput")
def gpu_throughput(r: Results) -> str:
    """Training-step throughput of `vit_face` on the GPU, from docs/results/gpu_paper_size.json."""
    rows_in = r("gpu_paper_size.json")["throughput"]["rows"]
    what = {"gslora": "GS-LoRA, **with adapters** (LoRA r 8 on both FFN linears of every block, base frozen, "
                      "96 images)",
            "l2": "L2 fine-tuning, **without adapters** (every backbone weight trainable, 96 images)",
            "pretrain": "pre-training step, without adapters (whole model, one batch of 48)"}
    rows = []
    for case in ("gslora", "l2", "pretrain"):
        bf, fp = (next(x for x in rows_in if x["case"] == case and x["precision"] == p) for p in ("bf16", "fp32"))
        share = f" ({100 * bf['trainable_params'] / bf['params']:.2f}%)" if case == "gslora" else ""
        rows.append([what[case], f"{bf['trainable_params']:,}{share}", f1(bf["ms_per_step"]),
                     f"{bf['images_per_s']:,.0f}", f1(fp["ms_per_step"]), f"{fp['images_per_s']:,.0f}",
                     f"{bf['peak_memory_gib']:.1f} GiB"])
    return md_table(["step", "trainable parameters", "bf16 ms / step", "bf16 images / s", "fp32 ms / step",
                     "fp32 images / s", "peak memory bf16"], rows)


def gpu_run(key: str, r: Results) -> str:
    """A 4-task forgetting run of `vit_face` on the bundled faces on the GPU, per task."""
    run = r("gpu_paper_size.json")[key]
    rows = []
    for t in run["tasks"]:
        rows.append([f"{t['task']} ({t['setting']})", f"{f1(t['acc_f'] + t['drop'])} → {f1(t['acc_f'])}",
                     f1(t["acc_r"]), signed(t["acc_r_change_vs_pretrained"]), f1(t["acc_o"]), f1(t["h_mean"]),
                     t["steps_all_trials"], f"{t['wall_seconds']:.0f} s"])
    return md_table(["task", "Acc_f before → after", "Acc_r", "ΔAcc_r vs pre-trained", "Acc_o", "H",
                     "steps (all trials)", "time"], rows)


TABLES["gpu_run_previous_defaults"] = partial(gpu_run, "forget_defaults")
TABLES["gpu_run_previous_defaults_one_trial"] = partial(gpu_run, "forget_one_trial")


# --- the lab notebook (docs/results/DECISIONS.md) -------------------------------------------------------------------

VARIANT_DATASETS = ("faces-4x20", "orl-4x5", "orl-4x8", "gt-4x10", "omniglot-4x20")
# (row label, key in forget_defaults.json, key for the ORL plans where it differs)
VARIANTS = (
    ("defaults (ORL: the earlier checkpoint)", "defaults", "defaults, earlier checkpoint"),
    ("`target=acc_f<=2,acc_o<=2,acc_r_drop<=2`", "target=acc_f<=2,acc_o<=2,acc_r_drop<=2", None),
    ("`min_replay=8`", "min_replay=8", None),
    ("`min_replay=8`, `min_forget=4`", "min_replay=8, min_forget=4", None),
    ("the same with `method_args.beta=0.5`", "min_replay=8, min_forget=4, method_args.beta=0.5", None),
    ("`batch_size=32`", "batch_size=32", None),
    ("`relax_sparsity=true`", "relax_sparsity=true", None),
    ("defaults, today's ORL checkpoint", None, "defaults"),
    ("`method_args.retain_distill=10`", "method_args.retain_distill=10", None),
    ("`max_steps=400` (ORL: today's checkpoint)", "max_steps=400", None),
    ("`max_steps=300`", "max_steps=300", None),
    ("`hold_margin=true` (ORL: today's checkpoint)", "hold_margin=true", None),
    ("`min_replay=6` (ORL: today's checkpoint)", "min_replay=6", None),
    ("`method_args.forget_pull=true` (ORL: today's checkpoint)", "method_args.forget_pull=true", None),
)


@table("variants")
def variants(r: Results) -> str:
    """Mean ΔAcc_r over the 4 tasks, 2 decimals (tasks missing the bar), per setting and dataset."""
    runs = r("forget_defaults.json")["runs"]
    rows = []
    for label, key, orl_key in VARIANTS:
        cells = [label]
        for ds in VARIANT_DATASETS:
            k = orl_key if (ds.startswith("orl") and orl_key) else (None if ds.startswith("orl") and key is None
                                                                    else key)
            entry = runs[ds].get(k) if k else None
            if entry is None:
                cells.append("-")
                continue
            ts = entry["tasks"]
            misses = sum(1 for t in ts if not all(t["bar_met"].values()))
            cells.append(f"{mean(-t['acc_r_drop'] for t in ts):+.2f} ({misses})".replace("-0.00", "0.00"))
        rows.append(cells)
    return md_table(["settings", "bundled faces", "ORL 4 × 5", "ORL 4 × 8", "GT 4 × 10", "omniglot"], rows)


@table("retention_options")
def retention_options(r: Results) -> str:
    """Mean ΔAcc_r (worst Acc_f, worst Acc_o) of the retention options, from docs/results/retention_options.json."""
    data = r("retention_options.json")
    cols = ("orl-4x5", "orl-4x8", "gt-4x10")
    rows = [["defaults (then)"] + [f"{mean(data['defaults'][c]):+.2f}" for c in cols]]
    order: list[str] = []
    for run in data["runs"]:
        if run["settings"] not in order:
            order.append(run["settings"])
    for settings in order:
        model = re.fullmatch(r"defaults \((\S+), (.*)\)", settings)  # "defaults (vit_face_small, 84.8% test)"
        cells = [f"`--model {model.group(1)}` ({model.group(2)})" if model else f"`{settings}`"]
        for c in cols:
            run = next((x for x in data["runs"] if x["settings"] == settings and x["dataset"].startswith(c)), None)
            if run is None:
                cells.append("-")
                continue
            ts = run["tasks"]
            worst_f = max(t["acc_f"] for t in ts)
            worst_o = max(t["acc_o"] for t in ts if t["acc_o"] is not None)
            cells.append(f"{run['mean_acc_r_change']:+.2f} (Acc_f ≤ {f1(worst_f)}, Acc_o ≤ {f1(worst_o)})")
        rows.append(cells)
    return md_table(["settings", "ORL 4 × 5", "ORL 4 × 8", "GT 4 × 10"], rows)


# --- the erasure record (docs/record.md) --------------------------------------------------------------------------


RECORD_RUNS = {"r1": "1: forget 5 from the pre-trained HF folder", "r2": "2: forget 5 more from `r1/final/` (HF)",
               "r2b": "2b: forget 5 more from `r1/final.safetensors`"}


@table("record_chain")
def record_chain(r: Results) -> str:
    """benchmarks/record_chain.py: each request of the ORL chain, from docs/results/record_chain.json."""
    rows = []
    for key, label in RECORD_RUNS.items():
        for t in r("record_chain.json")["runs"].get(key, []):
            d = t.get("deployed") or {}
            rows.append([label, f1(t["acc_f"]), f1(t["acc_o"]), f1(d.get("acc_o")), signed(t["acc_r_change"]),
                         f"{f1(t['probe_f_before'])} → {f1(t['probe_f'])}", f0(t["recovery"]),
                         {True: "yes", False: "no", None: "-"}[t["certified"]],
                         f"{t['gate_seconds']:.1f} of {t['task_seconds']:.1f} ({100 * t['gate_share_of_task']:.0f}%)"])
    return md_table(["request", "Acc_f", "Acc_o (paper, unmasked)", "Acc_o deployed", "ΔAcc_r",
                     "probe Acc_f (gate)", "recovery % (gate)", "certified", "gate s of task s"], rows)


@table("record_chain_steps")
def record_chain_steps(r: Results) -> str:
    """The commands of benchmarks/record_chain.py with their exit status and what they said."""
    rows = []
    for key, step in r("record_chain.json")["steps"].items():
        said = (step["stderr"] or step["stdout"] or [""])[-1]
        where = re.compile(r"/\S*?/record-chain\d*/")  # the run's temporary folder, not part of the result
        said = where.sub("", said)
        command = where.sub("", step["command"].split(" --data")[0]).replace("gslora gslora ", "gslora ")
        rows.append([key.split("_", 1)[0], f"`{command}`", str(step["exit"]),
                     said[:150] + ("…" if len(said) > 150 else "")])
    return md_table(["step", "command", "exit", "last line it printed"], rows)


@table("cli_startup")
def cli_startup(r: Results) -> str:
    """benchmarks/cli_startup.py: wall time of the command line's help, from docs/results/cli_startup.json."""
    data = r("cli_startup.json")
    rows = [[f"`{x['command']}`", f"{x['median_s']:.2f}", f"{x['min_s']:.2f}–{x['max_s']:.2f}", str(x["repeats"])]
            for x in data["rows"]]
    return md_table(["command", "median (s)", "range (s)", "runs"], rows)


# --- the summary (README) ------------------------------------------------------------------------------------------


def _comparison_headline(r: Results, name: str) -> str:
    """GS-LoRA in a --depth comparison: its rank by mean H, and its probe / recovery against the references'."""
    ref, _, scores = depth_scores(r(f"comparison_{name}_depth.json"))
    ranked = sorted(scores, key=lambda k: -scores[k]["h"])
    rank, best, g = ranked.index("gslora") + 1, ranked[0], scores["gslora"]
    nth = f"{rank}{'th' if 10 <= rank % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(rank % 10, 'th')}"
    return (f"GS-LoRA {nth} of {len(scores)} by mean H ({f1(g['h'])}; best {LABELS.get(best, best)} "
            f"{f1(scores[best]['h'])}); probe Acc_f {f1(g['probe_f'])} (retrained {f1(ref['probe_f'])}), recovery "
            f"{f0(g['recovery'])}% ({f0(ref['recovery'])}%)")


@table("summary")
def summary(r: Results) -> str:
    """One line per benchmark with its headline figures; the details are on the linked pages."""
    cpu = "2-core x86_64 CPU"
    rows = []
    demo = r("demo_time.json")
    run = demo["runs"]["bundled model (default)"]
    ts = run["tasks"]
    rows.append(["`gslora demo`: bundled faces, 4 × 20, `vit_face_tiny`",
                 f"{run['printed_demo_seconds']:.0f} s; Acc_f ≤ {f1(max(t['acc_f'] for t in ts))}, Acc_o ≤ "
                 f"{f1(max(t['acc_o'] for t in ts if t['acc_o'] is not None))}, ΔAcc_r "
                 f"{signed(min(t['acc_r_change_vs_pretrained'] for t in ts))} to "
                 f"{signed(max(t['acc_r_change_vs_pretrained'] for t in ts))}",
                 f"{cpu}, 2 threads", "[above](#the-demo)"])
    for label, rec in _depth_runs(r, "depth_proof_rerun.json"):  # the proof from zero on the current code
        ts, m = rec["tasks"], rec["audit"]["models"]
        bar = sum(1 for t in ts if not bar_misses(t["acc_f"], t["acc_o"], t["acc_r_change"]))
        acc_o = [t["acc_o"] for t in ts if t["acc_o"] is not None]
        result = (f"Acc_f ≤ {f1(max(t['acc_f'] for t in ts))}, Acc_o ≤ {f1(max(acc_o))}, mean ΔAcc_r "
                  f"{signed(mean(t['acc_r_change'] for t in ts))}; bar met on {bar} of {len(ts)} tasks; probe Acc_f "
                  f"{f1(m['forgotten']['probe_f'])} (retrained {f1(m['retrained']['probe_f'])}, head "
                  f"{f1(m['head']['probe_f'])}), recovery {_rec(m['forgotten'])} ({_rec(m['retrained'])}, "
                  f"{_rec(m['head'])}); {sum(t['wall_seconds'] for t in ts):.0f} s")
        pre = rec["pretrain"].get("test_acc")
        rows.append([f"defaults only, {label} (pre-trained {f1(pre)}% test)", result,
                     "2-core x86_64 CPU (Intel Xeon, AVX-512), 1 thread, shared",
                     "[audit](docs/audit.md#depth-with-the-defaults)"])
    for key, label in (("orl", "ORL, continual 4 × 8"), ("orl_single", "ORL, single step 40-2/4/20/36"),
                       ("faces", "bundled faces, continual 4 × 20"),
                       ("faces_single", "bundled faces, single step 100-5/10/50/90")):
        rows.append([f"16 methods tuned alike (3 trials), depth columns: {label}", _comparison_headline(r, key),
                     f"{cpu}, 1 thread, shared", "[comparisons](docs/benchmarks.md#the-tuned-comparisons)"])
    # (the earlier comparisons predate the current defaults: docs/results/ARCHIVE.md, not this summary)
    plus = r("gslora_plus.json")["datasets"]
    cells = []
    for ds, label in (("orl", "ORL"), ("faces", "faces")):
        for s in ("full", "few-shot", "missing"):
            m = plus[ds]["settings"][s]["methods"]
            g, gp = (mean(t["h_mean"] or 0.0 for t in m[k]["tasks"]) for k in ("gslora", "gslora++"))
            cells.append(f"{label} {s} {f1(gp)} vs {f1(g)}")
    rows.append(["GS-LoRA++ vs GS-LoRA, mean H", "; ".join(cells), f"{cpu}, 1 thread, shared",
                 "[GS-LoRA++](docs/gslora_plus.md)"])
    det = r("detection_demo.json")
    g = det["methods"]["gslora"]["tasks"]
    others = [m for m in det["methods"] if m != "gslora"]
    rows.append(["detection demo: Deformable DETR, digits, 4 × 2",
                 f"GS-LoRA meets the bar on {sum(t['bar_met'] for t in g)} of {len(g)} tasks, "
                 + ", ".join(f"{DETECTION_LABELS.get(m, m)} on {sum(t['bar_met'] for t in det['methods'][m]['tasks'])}"
                             for m in others)
                 + f"; pre-trained test AP {f1(det['pretrain']['test_ap'])}",
                 f"{cpu}, 1 thread, shared", "[detection](docs/detection.md)"])
    chain = r("record_chain.json")
    gates = [t for run in chain["runs"].values() for t in run]
    rows.append(["erasure record on ORL: 2 requests on one HF ViT, `--audit`, `history`, `verify`, tampering",
                 "verify 0 on the model, 1 on a flipped byte and on an edited entry; the `--audit` gate "
                 + "–".join(dict.fromkeys((f1(min(t["gate_seconds"] for t in gates)),
                                           f1(max(t["gate_seconds"] for t in gates)))))
                 + " s per task ("
                 + "–".join(dict.fromkeys((f0(100 * min(t["gate_share_of_task"] for t in gates)),
                                           f0(100 * max(t["gate_share_of_task"] for t in gates)))))
                 + "% of the task's own time); deployed Acc_o "
                 f"{f1(max(t['deployed']['acc_o'] or 0 for t in gates))}",
                 chain["machine"], "[record](docs/record.md)"])
    gpu = r("gpu_paper_size.json")
    row = {(x["case"], x["precision"]): x for x in gpu["throughput"]["rows"]}
    rows.append(["paper-size `vit_face` training step (96 images)",
                 f"GS-LoRA {f1(row['gslora', 'bf16']['ms_per_step'])} ms bf16 / "
                 f"{f1(row['gslora', 'fp32']['ms_per_step'])} ms fp32; L2 fine-tuning "
                 f"{f1(row['l2', 'bf16']['ms_per_step'])} / {f1(row['l2', 'fp32']['ms_per_step'])} ms",
                 gpu["machine"]["gpu"], "[GPU](docs/gpu.md)"])
    return md_table(["benchmark", "result", "machine", "details"], rows)


# ------------------------------------------------------------------------------------------------- the rewriting


def markdown_files(root: Path) -> list[Path]:
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted((root / "docs").rglob("*.md")) if (root / "docs").is_dir() else files


def render(text: str, results: Results, where: str, problems: list[str]) -> tuple[str, list[str], list[str]]:
    """The text with every table regenerated, the names found, and the names whose committed text differs."""
    opened, closed = OPEN.findall(text), CLOSE.findall(text)
    for name in sorted(set(opened) | set(closed)):
        if opened.count(name) != closed.count(name):
            problems.append(f"{where}: the markers of table:{name} do not pair up (<!-- table:{name} --> ... "
                            f"<!-- /table:{name} -->)")
    names, differ = [], []

    def one(m: re.Match) -> str:
        name = m.group("name")
        names.append(name)
        fn = TABLES.get(name)
        if fn is None:
            problems.append(f"{where}: no function makes table:{name}")
            return m.group(0)
        try:
            body = fn(results).rstrip("\n") + "\n"
        except (OSError, KeyError, ValueError, TypeError, StopIteration, ZeroDivisionError, IndexError) as err:
            problems.append(f"{where}: table:{name} could not be made from the raw files: {type(err).__name__}: {err}")
            return m.group(0)
        if body != m.group("body"):
            differ.append(name)
        return f"<!-- table:{name} -->\n{body}<!-- /table:{name} -->"

    return MARKER.sub(one, text), names, differ


def run(root: Path, results_dir: Path, check: bool) -> tuple[int, list[str]]:
    """Regenerate (or, with check, compare) every table under root; the exit status and the lines to print."""
    results = Results(results_dir)
    out, problems, differ_all, found = [], [], [], {}
    for path in markdown_files(root):
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(root))
        new, names, differ = render(text, results, where, problems)
        for name in names:
            found.setdefault(name, []).append(where)
        differ_all += [f"{where}: table:{name}" for name in differ]
        if not check and new != text:
            path.write_text(new, encoding="utf-8")
            out.append(f"rewrote {where} ({', '.join(differ)})")
    for name, wheres in found.items():
        if len(wheres) > 1:
            out.append(f"note: table:{name} appears in {', '.join(wheres)}")
    if check and differ_all:
        out.append("tables that differ from what benchmarks/make_tables.py makes from the raw files "
                   "(run it without --check to rewrite them):")
        out += ["  " + d for d in differ_all]
    out += problems
    status = 1 if problems or (check and differ_all) else 0
    count = sum(len(wheres) for wheres in found.values())
    if status == 0 and (check or not any(line.startswith("rewrote") for line in out)):
        out.append(f"{count} tables match the raw files in {results_dir}")
    return status, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming every table that differs")
    p.add_argument("--list", action="store_true", help="print the table names and where they are used")
    p.add_argument("--root", type=Path, default=REPO, help="the folder holding README.md and docs/")
    p.add_argument("--results", type=Path, default=None, help="the raw files (default: ROOT/docs/results)")
    args = p.parse_args(argv)
    results_dir = args.results or args.root / "docs" / "results"
    if args.list:
        used: dict[str, list[str]] = {}
        for path in markdown_files(args.root):
            for name in OPEN.findall(path.read_text(encoding="utf-8")):
                used.setdefault(name, []).append(str(path.relative_to(args.root)))
        for name in TABLES:
            print(f"{name:40} {', '.join(used.get(name, ['(not used)']))}")
        return 0
    status, lines = run(args.root, results_dir, args.check)
    for line in lines:
        print(line, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
