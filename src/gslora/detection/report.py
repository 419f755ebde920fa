"""Detection reports: ``results.md`` in the paper's Table 2 layout and the before / after figure of predicted boxes."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_write
from .data import DetectionSet


def _f(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def results_markdown(results: dict) -> str:
    """Table 2 layout: one row for the pre-trained model and one for the method; per task H, AP_r, AP_f (AP_o from
    the second task), AP in % (IoU .50:.95), plus a per-task detail table."""
    rows = results["tasks"]
    method = results["method"]["method"]
    head = ["Method", "Tunable ratio"]
    sub = ["", ""]
    pre = ["Pre-train", "-"]
    meth = [method, f"{rows[0]['tunable_ratio']:.2f}%" if rows else "-"]
    for r in rows:
        cols = ["H ↑", "AP_r ↑", "AP_f ↓"] + (["AP_o ↓"] if r["ap_o"] is not None else [])
        head += [f"task {r['task']} ({r['setting']})"] + [""] * (len(cols) - 1)
        sub += cols
        pre += ["-", _f(r["ap_r_pretrained"]), _f(r["ap_f_before"] if r["task"] == 1 else None)] + \
               (["-"] if r["ap_o"] is not None else [])
        meth += [_f(r["h_mean"]), _f(r["ap_r"]), _f(r["ap_f"])] + ([_f(r["ap_o"])] if r["ap_o"] is not None else [])
    lines = [f"# Detection forgetting: {method} on {results['data']['name']}", "",
             f"Model: {results['model']['arch']} ({results['model']['parameters']:,} parameters, "
             f"{results['model']['encoder_layers']} + {results['model']['decoder_layers']} layers); "
             f"COCO bbox AP (IoU .50:.95, %) on the test split restricted to the remaining (AP_r), this task's "
             f"forgotten (AP_f) and earlier forgotten (AP_o) categories; H = 2·AP_r·Drop / (AP_r + Drop), "
             f"Drop = AP_f before the task − after.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(sub) + " |",
             "| " + " | ".join(pre) + " |", "| " + " | ".join(meth) + " |", "",
             "| task | forgotten | AP_f before → after | AP50_f after | AP_r (pre-trained → after) | AP_o | H | steps "
             "| seconds | groups kept |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = r["method_info"].get("selected_groups")
        lines.append(f"| {r['task']} | {', '.join(r['forget'])} | {_f(r['ap_f_before'])} → {_f(r['ap_f'])} | "
                     f"{_f(r['ap50_f'])} | {_f(r['ap_r_pretrained'])} → {_f(r['ap_r'])} | {_f(r['ap_o'])} | "
                     f"{_f(r['h_mean'])} | {r['steps']} | {r['wall_seconds']:.0f} | "
                     f"{', '.join(kept) if kept is not None else '-'} |")
    lines += ["", f"Wall time {results['wall_seconds']:.0f} s on {results['device']}.", ""]
    return "\n".join(lines)


def boxes_figure(dataset: DetectionSet, pictures: list[tuple[str, list[dict]]], classes: list[str], path,
                 score_threshold: float = 0.3) -> Path:
    """A grid: one row per model state (pre-trained, after each task), one column per test image; the detections
    scoring at least ``score_threshold`` drawn with their category and score."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n_rows, n_cols = len(pictures), len(dataset)
    fig = Figure(figsize=(2.2 * n_cols, 2.3 * n_rows))
    name_of = dict(zip(dataset.category_ids, classes))
    palette = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
               "tab:cyan", "tab:gray"]
    for r, (title, dets) in enumerate(pictures):
        for c, im in enumerate(dataset.images):
            ax = fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            ax.imshow(im.pixels())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
            for d in dets:
                if d["image_id"] != im.image_id or d["score"] < score_threshold:
                    continue
                x, y, w, h = d["bbox"]
                color = palette[dataset.category_ids.index(d["category_id"]) % len(palette)]
                ax.add_patch(Rectangle((x, y), w, h, fill=False, color=color, linewidth=1.2))
                ax.text(x, y, f"{name_of[d['category_id']]} {d['score']:.2f}", color="white", fontsize=5,
                        bbox={"facecolor": color, "alpha": 0.7, "pad": 0.5, "linewidth": 0})
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
