"""Tables and plots from results dicts. Pure formatting: nothing here trains or evaluates."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .io import atomic_write, atomic_write_json, atomic_write_text


def fmt(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def paper_table(results: dict, label: str | None = None) -> str:
    """The paper's Table 3 layout: a Pre-train row and a method row; per task H, Acc_r, Acc_f (Acc_o from task 2)."""
    rows = results["tasks"]
    header, sub, pre, ours = ["Method"], [""], ["Pre-train"], [label or results["method"]["method"]]
    for r in rows:
        cols = ["H ↑", "Acc_r ↑", "Acc_f ↓"] + (["Acc_o ↓"] if r["task"] > 1 else [])
        header += [f"T{r['task']} {r['setting']}"] + [""] * (len(cols) - 1)
        sub += cols
        pre += ["-", fmt(r["pretrained"]["acc_r"]), fmt(r["pretrained"]["acc_f"])] + (["-"] if r["task"] > 1 else [])
        ours += [fmt(r["h_mean"]), fmt(r["acc_r"]), fmt(r["acc_f"])] + ([fmt(r["acc_o"])] if r["task"] > 1 else [])
    return _markdown([header, sub, pre, ours])


def task_table(results: dict) -> str:
    """One row per task: the numbers the paper omits (drop, change of Acc_r, blocks touched, time)."""
    lines = [["Task", "Setting", "Acc_f before", "Acc_f", "Drop", "Acc_r", "ΔAcc_r vs pre-train", "Acc_o", "H",
              "Tunable", "Blocks selected", "Time (s)"]]
    for r in results["tasks"]:
        sel = r.get("selected_blocks")
        lines.append([
            str(r["task"]), r["setting"], fmt(r["before"]["acc_f"]), fmt(r["acc_f"]), fmt(r["drop"]), fmt(r["acc_r"]),
            fmt(r["acc_r_change_vs_pretrained"]), fmt(r["acc_o"]), fmt(r["h_mean"]), f"{r['tunable_ratio']:.2f}%",
            "-" if sel is None else f"{len(sel)}/{len(r['group_norms'])} {sel}", f"{r['wall_seconds']:.1f}",
        ])
    return _markdown(lines)


def _markdown(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows[1:]]
    return "\n".join(out)


CSV_FIELDS = ["task", "setting", "n_forget", "n_remain", "n_old", "acc_f", "acc_r", "acc_o", "drop", "h_mean",
              "acc_f_before", "acc_r_pretrained", "acc_r_change_vs_pretrained", "val_acc_f", "val_acc_r", "val_acc_o",
              "val_h_mean", "tunable_ratio", "trainable_params", "selected_blocks", "group_norms",
              "relative_delta_norms", "replay_images", "forget_images", "steps", "train_seconds", "wall_seconds"]


def results_csv(results: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in results["tasks"]:
        flat = dict(r)
        flat["acc_f_before"] = r["before"]["acc_f"]
        flat["acc_r_pretrained"] = r["pretrained"]["acc_r"]
        for k in ("acc_f", "acc_r", "acc_o", "h_mean"):
            flat[f"val_{k}"] = r["val"][k]
        for k in ("selected_blocks", "group_norms", "relative_delta_norms"):
            if k in r:
                flat[k] = " ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r[k])
        w.writerow(flat)
    return buf.getvalue()


def results_markdown(results: dict) -> str:
    m = results["model"]
    parts = [
        f"# Forgetting run: {results['method']['method']} on {results['data']['name']}",
        "",
        f"Model `{m['arch']}` ({m['parameters']:,} parameters, {m['num_classes']} classes), "
        f"device {results['device']}, "
        f"gslora {results['gslora_version']}, total {results['wall_seconds']:.1f} s. Accuracies in %, test split, "
        "top-1 over all classes; Drop is measured against the model at the start of each task.",
        "",
        paper_table(results),
        "",
        task_table(results),
        "",
        "Validation split (carved from training data; use it, not the test split, for any model selection):",
        "",
        _markdown([["Task", "Acc_f", "Acc_r", "Acc_o", "H"]] + [
            [str(r["task"]), fmt(r["val"]["acc_f"]), fmt(r["val"]["acc_r"]), fmt(r["val"]["acc_o"]),
             fmt(r["val"]["h_mean"])] for r in results["tasks"]]),
        "",
    ]
    return "\n".join(parts)


def plot_accuracies(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["tasks"]
    x = [r["task"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in [("acc_r", "Acc_r (remaining)", "o-"), ("acc_f", "Acc_f (forgotten now)", "s-"),
                              ("acc_o", "Acc_o (forgotten before)", "^-"), ("h_mean", "H-Mean", "d--")]:
        pts = [(t, r[key]) for t, r in zip(x, rows) if r[key] is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.plot(x, [r["pretrained"]["acc_r"] for r in rows], ":", color="grey", label="pre-trained Acc_r")
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(x)
    ax.set_ylim(-2, 102)
    ax.set_title(f"{results['method']['method']} on {results['data']['name']}")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_group_norms(results: dict, path: Path) -> Path | None:
    rows = [r for r in results["tasks"] if "relative_delta_norms" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([r["relative_delta_norms"] for r in rows])
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * data.shape[1], 1.4 + 0.5 * data.shape[0]))
    im = ax.imshow(data, cmap="Purples", aspect="auto")
    ax.set_xlabel("Transformer block")
    ax.set_ylabel("task")
    ax.set_xticks(range(data.shape[1]))
    ax.set_yticks(range(data.shape[0]), [str(r["task"]) for r in rows])
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.3f}", ha="center", va="center", fontsize=7,
                    color="white" if data[i, j] > data.max() / 2 else "black")
    fig.colorbar(im, ax=ax, label="‖ΔW‖ / ‖W‖ of the block's FFN")
    ax.set_title("LoRA update per task and block")
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write atomically as PNG, and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
    return path


def write_reports(out_dir: Path, results: dict) -> None:
    """Plots, CSV and Markdown first; ``results.json`` last, so its presence means the run finished."""
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    results["plots"] = [str(p.relative_to(out_dir)) for p in
                        (plot_accuracies(results, plots / "accuracies.png"),
                         plot_group_norms(results, plots / "group_norms.png")) if p is not None]
    atomic_write_text(out_dir / "results.csv", results_csv(results))
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    atomic_write_json(out_dir / "results.json", results)
