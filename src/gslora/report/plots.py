"""Plots as :class:`matplotlib.figure.Figure` objects, built without pyplot: nothing here touches matplotlib's global
state (no backend switch, no figure registry), so a notebook user can display the figures or save them."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ..files import atomic_write


def accuracies_figure(results: dict) -> Figure:
    """Acc_r, Acc_m (missing classes, when the run has them), Acc_f, Acc_o and H-Mean per task, with the pre-trained
    Acc_r."""
    rows = results["tasks"]
    x = [r["task"] for r in rows]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, label, style in [("acc_r", "Acc_r (remaining)", "o-"), ("acc_m", "Acc_m (missing, no data)", "v-"),
                              ("acc_f", "Acc_f (forgotten now)", "s-"),
                              ("acc_o", "Acc_o (forgotten before)", "^-"), ("h_mean", "H-Mean", "d--")]:
        pts = [(t, r.get(key)) for t, r in zip(x, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.plot(x, [r["pretrained"]["acc_r"] for r in rows], ":", color="grey", label="pre-trained Acc_r")
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(x)
    ax.set_ylim(-2, 102)
    ax.set_title(f"{results['method']['method']} on {results['data']['name']}")
    ax.legend(fontsize=8)
    return fig


def group_norms_figure(results: dict) -> Figure | None:
    """Heat map of ‖ΔW‖/‖W‖ per task and block (None when no task reports it)."""
    rows = [r for r in results["tasks"] if "relative_delta_norms" in r.get("method_info", {})]
    if not rows:
        return None
    import numpy as np

    data = np.array([r["method_info"]["relative_delta_norms"] for r in rows])
    fig = Figure(figsize=(1.2 + 0.7 * data.shape[1], 1.4 + 0.5 * data.shape[0]))
    ax = fig.subplots()
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
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Lay out and write a figure atomically as PNG (no pyplot, no backend switch: safe inside a notebook)."""
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    return path
