"""The report package draws on Figure objects and touches no global matplotlib state."""

import matplotlib
from matplotlib.figure import Figure

from gslora.report import accuracies_figure, group_norms_figure, markdown, save_figure

RESULTS = {
    "method": {"method": "gslora"}, "data": {"name": "faces"},
    "tasks": [{"task": t, "acc_r": 80.0, "acc_f": 1.0, "acc_o": None if t == 1 else 2.0, "h_mean": 79.0,
               "pretrained": {"acc_r": 85.0}, "method_info": {"relative_delta_norms": [0.1, 0.2, 0.3]}}
              for t in (1, 2)],
}


def test_figures_are_figure_objects_and_no_backend_is_switched(tmp_path, monkeypatch):
    def no_switch(*args, **kwargs):
        raise AssertionError("matplotlib.use called")

    monkeypatch.setattr(matplotlib, "use", no_switch)
    backend = dict.__getitem__(matplotlib.rcParams, "backend")
    figs = [accuracies_figure(RESULTS), group_norms_figure(RESULTS)]
    assert all(isinstance(f, Figure) for f in figs)
    for i, fig in enumerate(figs):
        assert save_figure(fig, tmp_path / f"{i}.png").read_bytes()[:4] == b"\x89PNG"
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    assert group_norms_figure({**RESULTS, "tasks": [{**RESULTS["tasks"][0], "method_info": {}}]}) is None


def test_markdown_pads_columns():
    assert markdown([["a", "bb"], ["ccc", "d"]]) == "| a   | bb |\n|-----|----|\n| ccc | d  |"
