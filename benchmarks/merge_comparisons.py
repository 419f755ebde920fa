"""One comparison table from several `gslora benchmark` folders of the same setting, data and checkpoint.

A comparison of every method is often run as a few parallel `gslora tune` + `gslora benchmark --tuned` processes, one
per group of methods (one CPU core each). This script checks that the folders agree on setting, data, model, plans and
seed, concatenates their methods (in the order given), merges the tuning records (a method benchmarked without
`--tuned` is listed as "packaged values") and writes the usual `comparison.{md,json}`, plus `tuning.md` when tuning
folders are given.

    .venv/bin/python benchmarks/merge_comparisons.py --out docs/results/comparison_orl_single_tuned \
        runs/cmp/orl-bench-single-a runs/cmp/orl-bench-single-b runs/cmp/orl-bench-single-rf \
        --tuning runs/cmp/orl-tune-single-a runs/cmp/orl-tune-single-b --tuning-out docs/results/tune_orl_single
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from gslora.report.comparison import comparison_markdown
from gslora.report.tuning import tuning_markdown

UNTUNED = "<untuned>"  # a method benchmarked without --tuned; its "trial" cell reads "packaged values, not tuned"
MUST_AGREE = ("setting", "plans", "seed", "data", "model", "source_checkpoint")


def merge_comparisons(folders: list[Path]) -> dict:
    docs = [json.loads((f / "comparison.json").read_text()) for f in folders]
    first = docs[0]
    for f, d in zip(folders[1:], docs[1:]):
        for key in MUST_AGREE:
            if d.get(key) != first.get(key):
                raise SystemExit(f"{f}: {key} differs from {folders[0]} ({d.get(key)!r} vs {first.get(key)!r})")
    merged = {**first, "methods": [e for d in docs for e in d["methods"]], "merged_from": [str(f) for f in folders]}
    for e in merged["methods"]:  # folders written before gslora counted a resumed method's earlier runs (0 s)
        if e["runs"]:
            e["wall_seconds"] = sum(r["wall_seconds"] for r in e["runs"])
    tunings = [d.get("tuning") for d in docs if d.get("tuning")]
    if tunings:
        files = dict.fromkeys(t["file"] for t in tunings if t.get("file"))  # each once, in order
        tuning = {**tunings[0], "file": ", ".join(files), "methods": {}}
        for t in tunings:
            if (t["budget"], t.get("sampler"), t.get("plan")) != (tuning["budget"], tuning.get("sampler"),
                                                                  tuning.get("plan")):
                raise SystemExit("the tuning records differ in budget, sampler or plan; they cannot share one table")
            tuning["methods"].update(t["methods"])
        for e in merged["methods"]:
            tuning["methods"].setdefault(e["method"], {"values": {}, "trial": UNTUNED, "trials": UNTUNED,
                                                       "val_score": None})
        merged["tuning"] = tuning
    return merged


def merge_tunings(folders: list[Path]) -> dict:
    docs = [yaml.safe_load((f / "tuned.yaml").read_text()) for f in folders]
    merged = {**docs[0], "methods": {}, "wall_seconds": sum(d.get("wall_seconds", 0.0) for d in docs),
              "merged_from": [str(f) for f in folders]}
    for d in docs:
        merged["methods"].update(d["methods"])
    return merged


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="benchmark folders (comparison.json in each)")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.md and PREFIX.json")
    p.add_argument("--tuning", nargs="*", type=Path, default=[], help="tuning folders (tuned.yaml in each)")
    p.add_argument("--tuning-out", help="output prefix for the merged tuning: PREFIX.md and PREFIX.yaml")
    p.add_argument("--depth", type=Path, metavar="FOLDER", help="audit every method's final model against the "
                   "retrained reference (as `gslora benchmark --depth`), audits written to FOLDER; adds the Depth "
                   "table")
    args = p.parse_args(argv)
    merged = merge_comparisons(args.folders)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.depth:
        from gslora.compare import comparison_depth

        home = {e["method"]: folder for folder in args.folders
                for e in json.loads((folder / "comparison.json").read_text())["methods"]}
        merged["depth"] = comparison_depth(merged, lambda method, label: home[method] / "runs" / method / label,
                                           args.depth)
    out.with_suffix(".json").write_text(json.dumps(merged, indent=1, default=str))
    text = comparison_markdown(merged).replace(f"{UNTUNED} of {UNTUNED}", "packaged values, not tuned")
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out}.md and {out}.json ({len(merged['methods'])} methods)")
    if args.tuning and args.tuning_out:
        tuned = merge_tunings(args.tuning)
        t_out = Path(args.tuning_out)
        t_out.with_suffix(".yaml").write_text(yaml.safe_dump(tuned, sort_keys=False, allow_unicode=True))
        t_out.with_suffix(".md").write_text(tuning_markdown(tuned))
        print(f"wrote {t_out}.md and {t_out}.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
