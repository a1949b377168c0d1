"""Figures: labelled log axes where the law lives, placeholders for empty input, stable PNG bytes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from analysis import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _loss_series():
    d = np.array([250.0, 1000, 4000, 16000])
    grid = np.geomspace(250, 160000, 20)
    law = lambda x: 0.8 + 12 * x**-0.35  # noqa: E731
    return [{"label": "epochs=1", "x": d, "y": law(d), "grid": grid, "fit": law(grid), "lo": law(grid) * 0.99,
             "hi": law(grid) * 1.01, "fitted_max": 16000.0,
             "extrapolation": {"x": 160000.0, "y": law(160000.0), "lo": 0.9, "hi": 1.0}}]  # fmt: skip


def test_loss_vs_data_is_log_log_with_units():
    fig = plots.plot_loss_vs_data(_loss_series())
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "training examples" in ax.get_xlabel() and "nats" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("fitted power law" in t for t in labels) and any(
        "extrapolation" in t for t in labels
    )
    # the x range reaches the 10x extrapolation, not only the data
    assert ax.get_xlim()[1] >= 160000
    # plain tick labels on a short log range (1.5, 2 ... rather than 2x10^0)
    fig.canvas.draw()
    assert not any("times" in t.get_text() for t in ax.get_yticklabels())


def test_png_bytes_are_a_png_and_reproducible():
    a = plots.to_png(plots.plot_loss_vs_data(_loss_series()))
    b = plots.to_png(plots.plot_loss_vs_data(_loss_series()))
    assert a[:8] == PNG and a == b


def test_empty_inputs_draw_a_placeholder_not_an_error():
    for fig in (
        plots.plot_loss_vs_data([]),
        plots.plot_lr_sensitivity(
            pd.DataFrame(columns=["series", "dataset_size", "learning_rate", "value", "best"])
        ),
        plots.plot_effective_data([]),
        plots.plot_compute([]),
        plots.plot_emergence([], []),
    ):
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert any(texts), "an empty figure must say why it is empty"
        assert plots.to_png(fig)[:8] == PNG


def test_lr_sensitivity_panels_and_failed_trials():
    trials = pd.DataFrame({
        "series": ["epochs=1"] * 4 + ["epochs=3"] * 3,
        "dataset_size": [1000.0] * 4 + [1000.0] * 3,
        "learning_rate": [1e-4, 1e-3, 1e-2, 1e-1, 1e-4, 1e-3, 1e-2],
        "value": [1.5, 1.2, 1.4, np.nan, 1.4, 1.1, 1.3],
        "best": [False, True, False, False, False, True, False],
    })  # fmt: skip
    fig = plots.plot_lr_sensitivity(trials, lr_range=(1e-4, 1e-1))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["epochs=1", "epochs=3"]
    assert all(ax.get_xscale() == "log" and "learning rate" in ax.get_xlabel() for ax in visible)
    # the failed trial is drawn as an x at the top of its panel, at its LR
    xs = [line for line in visible[0].lines if line.get_marker() == "x"]
    assert len(xs) == 1 and xs[0].get_xdata()[0] == 1e-1


def test_analysis_imports_neither_ray_nor_torch():
    code = ("import sys, analysis.report, analysis.plan, analysis.plots, analysis.selection, analysis.findings; "
            "bad = [m for m in ('ray', 'torch', 'matplotlib.pyplot', 'scaling') if m in sys.modules]; "
            "assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
