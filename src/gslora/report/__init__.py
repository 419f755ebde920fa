"""Rendering apart from computing: tables (Markdown, CSV) and plots (:class:`matplotlib.figure.Figure` objects, no
global matplotlib state) of a run, a comparison and an audit, and writing them into a folder."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_write_text
from .plots import accuracies_figure, group_norms_figure, save_figure
from .tables import fmt, markdown, paper_table, results_csv, results_markdown, task_table


def write_run_report(results: dict, out_dir: str | Path, plots_dir: str | Path | None = None) -> list[Path]:
    """A run's plots (``plots/accuracies.png``, ``plots/group_norms.png``), ``results.csv`` and ``results.md``.
    Returns the paths written; ``results.json`` is the run folder's business (:mod:`gslora.rundir`)."""
    out_dir = Path(out_dir)
    plots = Path(plots_dir) if plots_dir is not None else out_dir / "plots"
    written = [save_figure(accuracies_figure(results), plots / "accuracies.png")]
    heat = group_norms_figure(results)
    if heat is not None:
        written.append(save_figure(heat, plots / "group_norms.png"))
    written.append(atomic_write_text(out_dir / "results.csv", results_csv(results)))
    written.append(atomic_write_text(out_dir / "results.md", results_markdown(results)))
    return written


__all__ = ["accuracies_figure", "fmt", "group_norms_figure", "markdown", "paper_table", "results_csv",
           "results_markdown", "save_figure", "task_table", "write_run_report"]
