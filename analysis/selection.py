"""The one selection rule: validation picks, test reports.

Every analysis command (the report, `scaling plan`, `show`, `best-lr`, `emergence`, `fit RUN_DIR`)
selects through this module, so they all agree on the same run:

1. direction: a metric is minimised (losses) or maximised (exact_match, token_accuracy,
   answer_logprob; `analysis.table.MAXIMISED`), whatever its split prefix.
2. axes: a config is chosen per (dataset_size, epochs) cell, and per LoRA rank when the study
   has two or more ranks.
3. choice: `best_lr` on the validation split of the metric, in its direction, picks the cell's
   trial (trial_id_best).
4. points: that trial's final *test* metrics, plus the "repeat" trials of the cell at the same
   learning rate (extra seeds), one row per trial (`selected_points`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.lr_cell import best_lr
from analysis.table import LOSS, MAXIMISED, _py, trial_summary

__all__ = [
    "Selection",
    "MODEL_AXIS",
    "axes_of",
    "n_text",
    "higher_is_better",
    "select",
    "selected_points",
    "series",
    "series_label",
    "series_points",
]


def higher_is_better(metric: str) -> bool:
    """True for the maximised metrics (exact_match, token_accuracy, answer_logprob), split prefix or not."""
    name = metric.split("_", 1)[1] if metric.startswith(("val_", "test_")) else metric
    return name in MAXIMISED


MODEL_AXIS = "model_params_n"  # the base model as an axis: its non-embedding parameter count N


def _varies(trials: pd.DataFrame, col: str) -> bool:
    return col in trials.columns and pd.to_numeric(trials[col], errors="coerce").dropna().nunique() >= 2


def axes_of(trials: pd.DataFrame) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(by, series_cols): the cell axes and the non-D series axes; lora_r joins both when it varies,
    and so does the base model (as its N, model_params_n) when the table holds two or more N and
    every row has one (a table from before the column, or of one model, is read as before)."""
    by, ser = ["dataset_size", "epochs"], ["epochs"]
    if _varies(trials, "lora_r"):
        by.append("lora_r")
        ser.append("lora_r")
    if _varies(trials, MODEL_AXIS) and pd.to_numeric(trials[MODEL_AXIS], errors="coerce").notna().all():
        by.insert(0, MODEL_AXIS)
        ser.insert(0, MODEL_AXIS)
    return tuple(by), tuple(ser)


@dataclass(frozen=True)
class Selection:
    """What the rule chose: ``best`` (the best_lr frame, one row per cell), ``points``
    (`selected_points`), the axes ``by`` and ``series_cols``, the validation ``metric`` read and
    its direction ``mode`` ("min" | "max")."""

    best: pd.DataFrame
    points: pd.DataFrame
    by: tuple[str, ...]
    series_cols: tuple[str, ...]
    metric: str
    mode: str


def select(
    table: pd.DataFrame,
    *,
    metric: str = "eval_loss",
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.9,
    edge_warn: bool = False,
    lr_range: Any = None,
) -> Selection:
    """Choose each cell's config on the validation split of ``metric`` (in its direction).

    ``bootstrap``/``seed``/``level`` go to `best_lr` (they set the LR intervals, never the choice);
    ``lr_range`` (the searched (low, high), e.g. from `analysis.lr_edge.search_range` of the spec) lets it
    tell a best LR beyond the range from one that was never bracketed.
    Raises ValueError when the table lacks the metric's validation column.
    """
    by, series_cols = axes_of(trial_summary(table) if len(table) else table)
    mode = "max" if higher_is_better(metric) else "min"
    with warnings.catch_warnings():
        if not edge_warn:
            warnings.simplefilter("ignore")  # edges and empty cells are reported by the callers
        best = best_lr(table, by=by, metric=metric, mode=mode, split="val", bootstrap=bootstrap, seed=seed,
                       level=level, edge_warn=edge_warn, lr_range=lr_range)  # fmt: skip
    return Selection(best=best, points=selected_points(table, best, by=by), by=by, series_cols=series_cols,
                     metric=metric, mode=mode)  # fmt: skip


def selected_points(table: pd.DataFrame, best: pd.DataFrame, *, by: Sequence[str]) -> pd.DataFrame:
    """The test-split points of the configs chosen on validation, one row per trial.

    For every cell of ``best`` (a `best_lr` frame) with a chosen trial: the
    final evaluation of every complete trial of that cell run at the chosen
    learning rate (the chosen trial and its "repeat" seeds). Columns: the
    ``by`` axes, dataset_size, epochs, lora_r, learning_rate, trial_id, seed,
    phase, examples_seen (dataset_size x epochs), train_flops, and every
    val_/test_ metric. Reads val_ only through `best`.
    """
    trials = trial_summary(table)
    rows = []
    ok = trials[trials["status"] == "ok"]
    for _, b in best.iterrows():
        tid = _py(b.get("trial_id_best"))
        if tid is None:
            continue
        chosen = trials[trials["trial_id"] == tid]
        if chosen.empty:
            continue
        lr = float(chosen["learning_rate"].iloc[0])
        same = np.ones(len(ok), dtype=bool)
        for c in by:
            same &= (ok[c].astype(float) == float(b[c])).to_numpy()
        same &= np.isclose(ok["learning_rate"].astype(float).to_numpy(), lr, rtol=1e-9, atol=0)
        rows.append(ok[same])
    if not rows:
        return pd.DataFrame(
            columns=["trial_id", "dataset_size", "epochs", "lora_r", "examples_seen", LOSS]
        )
    pts = pd.concat(rows, ignore_index=True).drop_duplicates("trial_id")
    for c in ("dataset_size", "epochs", "lora_r", "learning_rate", "train_flops", MODEL_AXIS):
        if c in pts.columns:
            pts[c] = pd.to_numeric(pts[c], errors="coerce").astype(float)
    pts["examples_seen"] = pts["dataset_size"] * pts["epochs"]
    pts["status"] = "ok"
    order = [c for c in (MODEL_AXIS, "epochs", "lora_r", "dataset_size", "trial_id") if c in by or c != MODEL_AXIS]
    return pts.sort_values(order, kind="stable").reset_index(drop=True)


# ---- series: the non-D axes (epochs, plus lora_r when the study has several ranks) ----------


def n_text(n: float) -> str:
    """A parameter count for a person: 53.5k, 0.853M, 3.41M."""
    n = float(n)
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M" if n >= 1e5 else f"{n / 1e3:.3g}k"


def series_label(key: Mapping[str, float]) -> str:
    parts = [f"N={n_text(key[MODEL_AXIS])}"] if MODEL_AXIS in key else []
    parts += [f"epochs={int(key['epochs'])}"] if "epochs" in key else []
    if "lora_r" in key:
        parts.append(f"r={int(key['lora_r'])}")
    return ", ".join(parts) or "all"


def series(points: pd.DataFrame, cols: Sequence[str], *, fallback: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """[{"label", "key"}] per distinct value of ``cols`` in ``points`` (``fallback`` when it is empty)."""
    src = points if len(points) else (fallback if fallback is not None else points)
    if src.empty:
        return []
    keys = src[list(cols)].astype(float).dropna().drop_duplicates()
    keys = keys.sort_values(list(cols)).to_dict("records")
    return [{"label": series_label(k), "key": k} for k in keys]


def series_points(points: pd.DataFrame, key: Mapping[str, float]) -> pd.DataFrame:
    """The rows of ``points`` whose series axes equal ``key``."""
    m = np.ones(len(points), dtype=bool)
    for c, v in key.items():
        m &= (points[c].astype(float) == float(v)).to_numpy()
    return points[m]
