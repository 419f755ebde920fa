"""The α sweep of GS-LoRA's proximal group sparsity: blocks selected vs Acc_f / ΔAcc_r, per task.

α is the share of a full Adam step (≈ lr per entry) that a block's B update must exceed to move (see
``gslora.lora.prox_group_b``). For each α the script runs `gslora forget` with every other setting at its default
(one trial per task, so that the lr search does not hide α's effect) on the pre-trained checkpoints of
``benchmarks/forget_defaults.py`` (made with `gslora pretrain` defaults when missing), and draws
docs/results/alpha_sweep.png: blocks selected, Acc_f and ΔAcc_r (test) against α, one line per dataset.

    .venv/bin/python benchmarks/alpha_sweep.py                     # bundled faces 4x20 and ORL 4x5
    .venv/bin/python benchmarks/alpha_sweep.py --alphas 0 0.5 0.9 --only orl-4x5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from forget_defaults import GSLORA, RUNS, run, summarise  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.3, 0.6, 0.8, 0.9, 1.0])
    p.add_argument("--only", action="append", choices=sorted(RUNS))
    p.add_argument("--out", default="runs/forget-defaults")
    p.add_argument("--results", default=str(HERE.parent / "docs" / "results" / "alpha_sweep.json"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results)
    saved = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}
    for name in args.only or ["faces-4x20", "orl-4x5"]:
        data, tasks, model = RUNS[name]
        ckpt = out / f"{name.split('-')[0]}.safetensors"
        if not ckpt.exists():
            run([*GSLORA, "pretrain", "--data", data, "--model", model, "--out", str(ckpt), "--no-progress"])
        for alpha in args.alphas:
            folder = out / f"sweep-{name}-alpha{alpha:g}"
            seconds = run([*GSLORA, "forget", "--checkpoint", str(ckpt), "--data", data, "--tasks", tasks, "--out",
                           str(folder), "--overwrite", "--no-progress", "--set", f"method_args.alpha={alpha}",
                           "--set", "max_trials=1"])
            rows = summarise(json.loads((folder / "results.json").read_text()))
            saved["runs"].setdefault(name, {})[f"{alpha:g}"] = {"seconds": seconds, "tasks": rows}
            sel = " ".join(f"{len(r['selected_blocks'])}/{r['num_blocks']}" for r in rows)
            acc_f = " ".join(f"{r['acc_f']:.0f}" for r in rows)
            d_acc_r = " ".join(f"{-r['acc_r_drop']:+.1f}" for r in rows)
            print(f"{name} alpha {alpha:g}: blocks {sel} | Acc_f {acc_f} | dAcc_r {d_acc_r} | {seconds:.0f} s",
                  flush=True)
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(saved, indent=1))
    plot(saved, results_path.with_suffix(".png"))
    return 0


def plot(saved: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    for name, by_alpha in saved["runs"].items():
        alphas = sorted(by_alpha, key=float)
        xs = [float(a) for a in alphas]

        def mean(key, a, by_alpha=by_alpha):
            return sum(key(r) for r in by_alpha[a]["tasks"]) / len(by_alpha[a]["tasks"])

        axes[0].plot(xs, [mean(lambda r: len(r["selected_blocks"]), a) for a in alphas], "o-", label=name)
        axes[1].plot(xs, [mean(lambda r: r["acc_f"], a) for a in alphas], "o-", label=name)
        axes[2].plot(xs, [mean(lambda r: -r["acc_r_drop"], a) for a in alphas], "o-", label=name)
    for ax, title in zip(axes, ["blocks selected (mean over tasks)", "Acc_f (test, mean over tasks)",
                                "ΔAcc_r vs pre-trained (test, mean)"]):
        ax.set_xlabel("α (share of an Adam step)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
