"""Matplotlib figures for the scaling report; no pyplot, no global state.

Every function takes plain data (lists of dicts, DataFrames) and returns a
``matplotlib.figure.Figure`` drawn on the Agg canvas, so figures can be made
in any thread and without a display. `to_png(fig)` turns one into PNG bytes.

Conventions, so that every figure reads the same way:
  * the law lives on log axes: dataset size, learning rate and compute are
    always log scale; loss is log scale where a power law is drawn;
  * one colour per series (epochs setting, and LoRA rank when several), the
    same colour in every figure (`series_colour`);
  * solid lines are fitted over the measured range, dashed lines are
    extrapolations, shaded bands are bootstrap / prediction intervals;
  * axis labels carry their units.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

# The Agg canvas is attached to each Figure explicitly: no pyplot, and the
# process-wide backend (a notebook's, say) is left alone.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

__all__ = [
    "METRIC_LABELS",
    "plot_compute",
    "plot_effective_data",
    "plot_emergence",
    "plot_loss_vs_data",
    "plot_lr_rule",
    "plot_lr_sensitivity",
    "series_colour",
    "to_png",
]

DPI = 110  # ~880 px wide at 8 in: sharp on screen, ~60-120 kB per PNG
WIDTH = 8.0  # inches
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")

METRIC_LABELS = {
    "eval_loss": "eval loss (nats per answer token)",
    "token_accuracy": "token accuracy (fraction of answer tokens)",
    "exact_match": "exact match (fraction of problems)",
    "answer_logprob": "answer log-prob (nats per problem)",
}
_D_LABEL = "dataset size (training examples, log scale)"


def series_colour(i: int) -> str:
    """The i-th series colour (cycles after 8)."""
    return _PALETTE[i % len(_PALETTE)]


def _figure(nrows: int = 1, ncols: int = 1, *, height: float = 4.8, sharex: bool = False,
            sharey: bool = False) -> tuple[Figure, np.ndarray]:  # fmt: skip
    fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)
    for ax in axes.flat:
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
    return fig, axes


def to_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (no metadata: the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _finite(*arrays: Any) -> np.ndarray:
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(np.asarray(a, dtype=float))
    return ok


def _plain_log_y(ax) -> None:
    """Log y axis labelled 0.8, 1, 1.5, 2 ... instead of 2x10^0 (a loss spans less than a decade)."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if hi / max(lo, 1e-300) < 30:  # within ~1.5 decades: label 1-1.5-2-3-5-7 steps, no minor labels
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _finish_log_log(ax, drawn: bool, empty_text: str, *, legend_size: float = 7.5) -> None:
    """Log-log axes with a legend once something is drawn; else say why the panel is empty."""
    if not drawn:
        _empty(ax, empty_text)
        return
    ax.set_xscale("log")
    _plain_log_y(ax)
    ax.legend(fontsize=legend_size, loc="best")  # matplotlib's default placement, said aloud


# ---- 1. loss vs data -------------------------------------------------------------


def plot_loss_vs_data(series: Sequence[Mapping[str, Any]], *, y_label: str = "test eval loss (nats per answer token)",
                      title: str = "Test loss vs dataset size (config chosen on validation)") -> Figure:  # fmt: skip
    """Log-log loss vs dataset size, one colour per series.

    Each series: ``label``; ``x``, ``y`` the measured points (all seeds);
    optionally ``grid`` (D values), ``fit`` (fitted loss on grid), ``lo``/``hi``
    (its band), ``fitted_max`` (largest D fitted: the line is dashed beyond),
    ``extrapolation`` {"x", "y", "lo", "hi"} drawn as a marker with an error bar,
    ``holdout`` {"x", "y"}: the prediction of a fit that did not see that size.
    """
    fig, axes = _figure()
    ax = axes[0, 0]
    drawn = False
    for i, s in enumerate(series):
        c = series_colour(i)
        x, y = np.asarray(s.get("x", []), float), np.asarray(s.get("y", []), float)
        ok = _finite(x, y) & (x > 0) & (y > 0) if x.size else np.zeros(0, bool)
        if ok.any():
            drawn = True
            ax.scatter(
                x[ok], y[ok], s=18, color=c, alpha=0.55, zorder=3, label=f"{s['label']}: measured"
            )
            # mean per size on top, so seeds read as scatter around it
            df = pd.DataFrame({"x": x[ok], "y": y[ok]}).groupby("x")["y"].mean()
            ax.plot(df.index, df.to_numpy(), "o", ms=6, mfc="white", mec=c, zorder=4)
        grid = np.asarray(s.get("grid", []), float)
        if grid.size and "fit" in s:
            fit = np.asarray(s["fit"], float)
            fmax = float(s.get("fitted_max", grid.max()))
            inside = grid <= fmax * (1 + 1e-9)
            ax.plot(
                grid[inside],
                fit[inside],
                "-",
                color=c,
                lw=1.8,
                label=f"{s['label']}: fitted power law",
            )
            if (~inside).any():
                k = max(int(inside.sum()) - 1, 0)
                ax.plot(
                    grid[k:], fit[k:], "--", color=c, lw=1.5, label=f"{s['label']}: extrapolation"
                )
            if "lo" in s and "hi" in s:
                lo, hi = np.asarray(s["lo"], float), np.asarray(s["hi"], float)
                okb = _finite(lo, hi)
                if okb.any():
                    ax.fill_between(grid[okb], lo[okb], hi[okb], color=c, alpha=0.15, lw=0)
            drawn = True
        ex = s.get("extrapolation")
        if ex and all(np.isfinite([ex.get("x", np.nan), ex.get("y", np.nan)])):
            lo, hi = ex.get("lo", np.nan), ex.get("hi", np.nan)
            err = None
            if np.isfinite(lo) and np.isfinite(hi):
                err = [[max(ex["y"] - lo, 0.0)], [max(hi - ex["y"], 0.0)]]
            ax.errorbar([ex["x"]], [ex["y"]], yerr=err, fmt="D", color=c, ms=6, capsize=4, zorder=5,
                        label=f"{s['label']}: predicted at {ex['x']:.3g}")  # fmt: skip
        ho = s.get("holdout")
        if ho and all(np.isfinite([ho.get("x", np.nan), ho.get("y", np.nan)])):
            ax.plot([ho["x"]], [ho["y"]], "x", color=c, ms=9, mew=2, zorder=5,
                    label=f"{s['label']}: hold-out prediction")  # fmt: skip
    _finish_log_log(ax, drawn, "no completed trials with a test loss")
    ax.set_xlabel(_D_LABEL)
    ax.set_ylabel(y_label + " (log scale)")
    ax.set_title(title, fontsize=11)
    return fig


# ---- 2. learning rate ------------------------------------------------------------


def plot_lr_sensitivity(trials: pd.DataFrame, *, lr_range: tuple[float, float] | None = None,
                        panel: str = "series", metric_label: str = "validation eval loss (nats per answer token)") -> Figure:  # fmt: skip
    """Final validation metric vs learning rate, one panel per ``panel`` value, one line per D.

    ``trials`` columns: the ``panel`` column (a label), dataset_size,
    learning_rate, value (the trial's final metric; NaN for failed trials,
    drawn as a cross at the top), best (bool: the chosen trial of its cell).
    ``lr_range``: the searched range, drawn as dotted verticals.
    """
    panels = list(dict.fromkeys(trials[panel])) if len(trials) else []
    n = max(len(panels), 1)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig, axes = _figure(nrows, ncols, height=3.6 * nrows + 0.6, sharey=True)
    if not panels:
        _empty(axes[0, 0], "no trials")
    sizes = sorted(trials["dataset_size"].dropna().unique()) if len(trials) else []
    cmap = matplotlib.colormaps["viridis"]
    colour = {d: cmap(0.9 * k / max(len(sizes) - 1, 1)) for k, d in enumerate(sizes)}
    finite_vals = trials["value"].to_numpy(float) if len(trials) else np.zeros(0)
    finite_vals = finite_vals[np.isfinite(finite_vals)]
    top = float(finite_vals.max()) if finite_vals.size else 1.0
    for ax, p in zip(axes.flat, panels, strict=False):
        sub = trials[trials[panel] == p]
        for d in sizes:
            cell = sub[sub["dataset_size"] == d].sort_values("learning_rate")
            if cell.empty:
                continue
            v = cell["value"].to_numpy(float)
            lr = cell["learning_rate"].to_numpy(float)
            ok = np.isfinite(v)
            ax.plot(lr[ok], v[ok], "o-", color=colour[d], ms=4, lw=1.2, label=f"D={int(d)}")
            if (~ok).any():
                ax.plot(lr[~ok], np.full((~ok).sum(), top), "x", color=colour[d], ms=7, mew=1.5)
            b = cell[cell["best"].astype(bool)]
            if len(b):
                ax.plot(
                    b["learning_rate"],
                    b["value"],
                    "*",
                    color=colour[d],
                    ms=13,
                    mec="black",
                    mew=0.6,
                    zorder=5,
                )
        if lr_range:
            for v_ in lr_range:
                ax.axvline(v_, color="0.3", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_title(str(p), fontsize=10)
        ax.set_xlabel("learning rate (log scale)")
        ax.legend(fontsize=7, loc="best")
    for ax in axes[:, 0]:
        ax.set_ylabel(metric_label)
    for ax in list(axes.flat)[len(panels) :]:
        if panels:
            ax.set_visible(False)
    fig.suptitle("Learning-rate sensitivity per cell (star: chosen on validation; x: failed; dotted: searched range)",
                 fontsize=10)  # fmt: skip
    return fig


def plot_lr_rule(best: pd.DataFrame, curves: Sequence[Mapping[str, Any]],
                 predictions: Sequence[Mapping[str, Any]] = ()) -> Figure:  # fmt: skip
    """Best LR per cell (with its interval) vs D, and the fitted rule per epochs setting.

    ``best``: `best_lr` frame plus a ``series`` column (its label) and ``colour``
    index. ``curves``: {"label", "colour", "x", "y", "lo", "hi"} (rule and
    prediction band). ``predictions``: {"colour", "dataset_size", "lr", "lo", "hi"}.
    Cells at the searched edge are drawn hollow (the rule leaves them out).
    """
    fig, axes = _figure()
    ax = axes[0, 0]
    drawn = False
    for _, r in best.iterrows():
        lr = float(r["lr_best"]) if pd.notna(r["lr_best"]) else math.nan
        if not math.isfinite(lr):
            continue
        c = series_colour(int(r["colour"]))
        lo, hi = float(r["lr_low"]), float(r["lr_high"])
        err = [[lr - lo], [hi - lr]] if math.isfinite(lo) and math.isfinite(hi) else None
        edge = bool(r.get("at_edge", False))
        ax.errorbar([float(r["dataset_size"])], [lr], yerr=err, fmt="o", color=c, capsize=3,
                    mfc="white" if edge else c, ms=6)  # fmt: skip
        drawn = True
    labelled: set[str] = set()
    for s in best.drop_duplicates("series").itertuples():
        if s.series not in labelled:
            ax.plot(
                [],
                [],
                "o",
                color=series_colour(int(s.colour)),
                label=f"{s.series}: best LR (90% interval)",
            )
            labelled.add(s.series)
    for cv in curves:
        c = series_colour(int(cv["colour"]))
        x, y = np.asarray(cv["x"], float), np.asarray(cv["y"], float)
        ax.plot(x, y, "-", color=c, lw=1.5, label=f"{cv['label']}: LR rule")
        lo, hi = np.asarray(cv.get("lo", []), float), np.asarray(cv.get("hi", []), float)
        if lo.size and _finite(lo, hi).any():
            ok = _finite(lo, hi)
            ax.fill_between(x[ok], lo[ok], hi[ok], color=c, alpha=0.12, lw=0)
        drawn = True
    for p in predictions:
        c = series_colour(int(p["colour"]))
        lo, hi = p.get("lo", math.nan), p.get("hi", math.nan)
        err = [[p["lr"] - lo], [hi - p["lr"]]] if math.isfinite(lo) and math.isfinite(hi) else None
        ax.errorbar(
            [p["dataset_size"]], [p["lr"]], yerr=err, fmt="D", color=c, ms=6, capsize=3, mfc="white"
        )
    if predictions:
        ax.plot([], [], "D", color="0.3", mfc="white", label="predicted for unseen sizes")
    _finish_log_log(ax, drawn, "no cell has a best learning rate")
    ax.set_xlabel(_D_LABEL)
    ax.set_ylabel("best learning rate (log scale)")
    ax.set_title("Best learning rate vs dataset size, and the fitted LR rule (hollow: at the searched edge)",
                 fontsize=10)  # fmt: skip
    return fig


# ---- 3. data or epochs -----------------------------------------------------------


def plot_effective_data(
    rows: Sequence[Mapping[str, Any]], *, curve: Mapping[str, Any] | None = None
) -> Figure:
    """Effective data D'/D against epochs: what repeating the data is worth.

    ``rows``: {"epochs", "multiplier", "lo", "hi"} for the studied epochs
    settings; ``curve``: {"epochs", "multiplier", "lo", "hi"} arrays for a
    smooth line. References: y = epochs (repeats as good as fresh data) and
    y = 1 (repeats worthless).
    """
    fig, axes = _figure(height=4.4)
    ax = axes[0, 0]
    if not rows and not curve:
        _empty(ax, "no data-constrained fit")
        return fig
    emax = max(
        [float(r["epochs"]) for r in rows] + ([float(np.max(curve["epochs"]))] if curve else [])
    )
    e = np.linspace(1.0, max(emax, 2.0), 100)
    ax.plot(e, e, ":", color="0.4", lw=1, label="repeats worth fresh data (D' = epochs x D)")
    ax.plot(e, np.ones_like(e), "-.", color="0.6", lw=1, label="repeats worthless (D' = D)")
    if curve:
        x = np.asarray(curve["epochs"], float)
        ax.plot(
            x,
            curve["multiplier"],
            "-",
            color=series_colour(0),
            lw=1.8,
            label="data-constrained law",
        )
        lo, hi = np.asarray(curve.get("lo", []), float), np.asarray(curve.get("hi", []), float)
        if lo.size and _finite(lo, hi).any():
            ok = _finite(lo, hi)
            ax.fill_between(x[ok], lo[ok], hi[ok], color=series_colour(0), alpha=0.15, lw=0)
    for r in rows:
        m, lo, hi = (
            float(r["multiplier"]),
            float(r.get("lo", math.nan)),
            float(r.get("hi", math.nan)),
        )
        err = [[m - lo], [hi - m]] if math.isfinite(lo) and math.isfinite(hi) else None
        ax.errorbar(
            [float(r["epochs"])], [m], yerr=err, fmt="o", color=series_colour(0), capsize=4, ms=6
        )
    ax.set_xlabel("epochs (passes over the same examples)")
    ax.set_ylabel("effective data D' / D (fresh-example equivalents)")
    ax.set_title(
        "What a repeated epoch is worth (Muennighoff et al. 2023 data-constrained law)", fontsize=10
    )
    ax.legend(fontsize=7.5, loc="upper left")
    return fig


def plot_compute(
    series: Sequence[Mapping[str, Any]], *, x_label: str = "training compute (FLOPs, log scale)"
) -> Figure:
    """Test loss vs training compute per series (several epochs settings side by side).

    Each series: {"label", "x" (compute per point), "y" (loss)}. At equal
    compute, the lower curve is the better way to spend it.
    """
    fig, axes = _figure(height=4.4)
    ax = axes[0, 0]
    drawn = False
    for i, s in enumerate(series):
        x, y = np.asarray(s["x"], float), np.asarray(s["y"], float)
        ok = _finite(x, y) & (x > 0) & (y > 0)
        if not ok.any():
            continue
        df = pd.DataFrame({"x": x[ok], "y": y[ok]}).groupby("x")["y"].mean()
        ax.plot(df.index, df.to_numpy(), "o-", color=series_colour(i), ms=5, label=s["label"])
        drawn = True
    _finish_log_log(ax, drawn, "no compute recorded", legend_size=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test eval loss (nats per answer token, log scale)")
    ax.set_title(
        "Test loss vs training compute: at equal compute, lower is the better spend", fontsize=10
    )
    return fig


def plot_pareto(x: Any, y: Any, front: Any) -> Figure:
    """Validation loss vs train FLOPs, one point per completed trial; the Pareto front (``front``, a
    bool mask: no trial better on both) in colour, joined as a staircase."""
    fig, axes = _figure(height=4.4)
    ax = axes[0, 0]
    x, y, on = np.asarray(x, float), np.asarray(y, float), np.asarray(front, bool)
    ok = _finite(x, y) & (x > 0) & (y > 0)
    drawn = bool(ok.any())
    if drawn:
        ax.plot(x[ok & ~on], y[ok & ~on], "o", color="0.65", ms=5, label="trial (dominated)")
        order = np.argsort(x[ok & on])
        fx, fy = x[ok & on][order], y[ok & on][order]
        ax.step(fx, fy, where="post", color=series_colour(0), lw=1.2)
        ax.plot(fx, fy, "o", color=series_colour(0), ms=6, label="Pareto front")
    _finish_log_log(ax, drawn, "no completed trial", legend_size=8)
    ax.set_xlabel("training compute (train FLOPs, log scale)")
    ax.set_ylabel("validation eval loss (log scale)")
    ax.set_title("Loss against compute: the trials no other beats on both", fontsize=10)
    return fig


# ---- 4. sudden abilities -----------------------------------------------------------


def plot_emergence(series: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> Figure:
    """One panel per metric (discontinuous first), metric vs D, one line per series.

    Each series: {"label", "curves": {metric: (x, y)}, "jumps": {metric:
    (x_lo, x_hi)}}: a jump interval is shaded in that metric's panel.
    """
    metrics = list(metrics)
    n = max(len(metrics), 1)
    fig, axes = _figure(n, 1, height=2.3 * n + 0.8, sharex=True)
    if not metrics:
        _empty(axes[0, 0], "no test metrics")
        return fig
    for ax, m in zip(axes[:, 0], metrics, strict=True):
        drawn = False
        for i, s in enumerate(series):
            c = series_colour(i)
            xy = s.get("curves", {}).get(m)
            if xy is None or len(xy[0]) == 0:
                continue
            ax.plot(xy[0], xy[1], "o-", color=c, ms=4, lw=1.3, label=s["label"])
            drawn = True
            iv = s.get("jumps", {}).get(m)
            if iv:
                ax.axvspan(iv[0], iv[1], color=c, alpha=0.12, lw=0)
        if drawn:
            ax.set_xscale("log")
            ax.legend(fontsize=7, loc="best")
        ax.set_ylabel(METRIC_LABELS.get(m, m).replace(" (", "\n("), fontsize=8)
    axes[-1, 0].set_xlabel(_D_LABEL)
    fig.suptitle("Test metrics vs dataset size (shaded: detected jump)", fontsize=10)
    return fig
