"""The results table's names, the Run analysis is handed, and THE per-trial summary.

Nothing of the project's run machinery lives here (no file I/O, no ray, no torch): this is the
vocabulary both sides share. ``scaling`` writes rows with these names (records, the sweep's
recorder, a trial's metrics dict) and reads a run directory into a `Run`; ``analysis`` reads
tables with them, and every analysis that needs one row per trial (the report, best_lr, the
CLI, the mirage check) gets it from `trial_summary`.

Metrics carry a split prefix: ``val_*`` is the validation set (the only split any selection
reads: Optuna, early stopping, best LR), ``test_*`` is the held-out test set (the only split
reported as a headline number or fed to the laws).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "COLUMNS",
    "EVAL_KEYS",
    "LOSS",
    "MAXIMISED",
    "METRICS",
    "METRIC_KEYS",
    "RESULTS_FILE",
    "ROW_KEYS",
    "Run",
    "SELECT",
    "SELECT_METRIC",
    "SPLITS",
    "clean",
    "trial_summary",
]

RESULTS_FILE = "results.parquet"

# per-split evaluation metrics; continuous ones (loss, per-token accuracy, answer log-prob)
# sit beside the discontinuous one (exact match) so every jump can be checked against them
METRICS = ("eval_loss", "token_accuracy", "exact_match", "answer_logprob")
SPLITS = ("val", "test")
EVAL_KEYS = tuple(f"{s}_{m}" for s in SPLITS for m in METRICS)

SELECT_METRIC = "val_eval_loss"  # selection reads the validation split only
SELECT = SELECT_METRIC  # what selection reads
LOSS = "test_eval_loss"  # the laws' y: test split of the val-selected config
# metrics where higher is better; every other metric (the losses) is minimised
MAXIMISED = ("token_accuracy", "exact_match", "answer_logprob")

# the keys of every metrics dict a trial reports (one per evaluation), in this order
METRIC_KEYS = (
    "epoch", "step", "train_loss", "train_tokens", "train_flops", "wall_seconds",
    *EVAL_KEYS, "trainable_params",
)  # fmt: skip

# the per-evaluation keys the recorder copies from a reported result into a row
ROW_KEYS = (
    "epoch", "step", "train_tokens", "train_flops", "train_loss", "trainable_params", "wall_seconds",
    "worker_pid", "worker_rss_mb", *EVAL_KEYS,
)  # fmt: skip

# name -> pandas dtype; the order is the column order of the file
COLUMNS: dict[str, str] = {
    "study": "string",
    # the study's identity (a UUID made on its first run, kept in spec.yaml's run.study_uid and
    # on every cell study in the Optuna storage): rows of another storage never pass as this one's
    "study_uid": "string",
    "trial_id": "string",
    "optuna_trial": "Int64",
    "cell": "string",
    "phase": "string",  # search | repeat (extra seeds of the cell's best config)
    "dataset_size": "Int64",
    "epochs": "Int64",
    "learning_rate": "float64",
    "lora_r": "Int64",
    "lora_alpha": "float64",
    "seed": "Int64",
    "model": "string",
    # the base model's non-embedding parameter count N (from its config, no weights loaded); a
    # table written before it has no such column, read as missing
    "model_params_n": "Int64",
    "task": "string",
    "epoch": "Int64",
    "step": "Int64",
    "train_tokens": "Int64",
    "train_flops": "float64",
    "train_loss": "float64",
    **{k: "float64" for k in EVAL_KEYS},
    "trainable_params": "Int64",
    "wall_seconds": "float64",  # since the trial started; a packed trial shared it (pack_size)
    "pack_size": "Int64",  # most adapters trained at once in this trial's pack; 1 = alone
    "worker_pid": "Int64",  # the Ray worker process that ran the trial (reused between trials)
    "worker_rss_mb": "float64",  # its resident memory after this evaluation: leaks show here
    "status": "string",  # ok | failed | pruned
    "error": "string",
    "node": "string",
    "recorded_at": "string",
}


@dataclass(frozen=True)
class Run:
    """What analysis is handed: the results table plus plain facts about the study (no file I/O here).

    ``spec`` is the study spec as a plain dict (spec.yaml as written, but trials_per_cell,
    sampler.extra_trials and budget as its last sweep ran them: a resume may raise them), ``facts`` the values derived
    from it (StudySpec.facts(): dataset_sizes, epochs, planned_trials), ``run_dir`` where it came
    from (a label and the default report folder, never read here), ``spec_file`` the spec copy's
    path, ``optuna_url`` the Optuna storage and ``optuna_exists`` whether a sqlite one is on disk.
    """

    table: pd.DataFrame
    spec: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    spec_file: str | None = None
    optuna_url: str | None = None
    optuna_exists: bool | None = None


# ---- plain values --------------------------------------------------------------


def _py(v: Any) -> Any:
    """A plain Python scalar: numpy unwrapped, pandas NA -> None."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    return v


def clean(value: Any) -> Any:
    """JSON-safe copy: numpy/pandas scalars unwrapped, NaN/inf -> None, tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    value = _py(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- THE per-trial summary ---------------------------------------------------------


def trial_summary(
    table: pd.DataFrame,
    *,
    by: tuple[str, ...] = (),
    carry: tuple[str, ...] = (),
    value: str | None = None,
    use: str = "final",
    higher: bool = False,
) -> pd.DataFrame:
    """One row per trial: its axes, LR, status, final metrics, FLOPs, wall time and error.

    status: "failed" if any row failed, else "pruned" if any row was pruned,
    else "ok". Final values come from the trial's last evaluated epoch;
    train_flops and wall_seconds are cumulative per trial, so their final
    value is what the trial spent. A packed trial's wall_seconds is its whole
    pack's (K adapters trained at once, pack_size = K): the summary's
    wall_seconds is the trial's share, the pack's time / pack_size, so that
    summing over trials counts every pack's time once (pack_wall_seconds keeps
    the pack's own). ``pruned`` says whether any row of the trial was pruned.

    ``value`` (a metric column) adds the trial's "value" of it: the last
    finite value among its rows that did not fail (use="final"), or its best
    over those rows (use="best_epoch": max if ``higher`` else min); NaN when it
    has none. ``by`` (columns) splits a trial id reused in several cells into
    one row per cell; ``carry`` (columns) adds their final values too. A table without status counts every row "ok"; one without epoch
    takes its rows in order.
    """
    cols = ["trial_id", "cell", "phase", "dataset_size", "epochs", "lora_r", "learning_rate", "seed",
            "status", "error", "train_flops", "wall_seconds", "pack_size", "pack_wall_seconds", "last_epoch", "model",
            "model_params_n", "task", "pruned", *([] if value is None else ["value"])]  # fmt: skip
    if table.empty:
        return pd.DataFrame(columns=cols)
    df = table.copy()
    if "status" not in df.columns:
        df["status"] = "ok"
    for c in ("cell", "phase", "error", "model", "model_params_n", "task", "lora_r", "seed", "epoch", "train_flops",
              "wall_seconds", "pack_size", "dataset_size", "epochs", "learning_rate"):  # fmt: skip
        if c not in df.columns:
            df[c] = np.nan
    df["_status"] = df["status"].astype("string").fillna("").astype(str)
    df["_epoch"] = pd.to_numeric(df["epoch"], errors="coerce").astype(float).fillna(-1.0)
    keys = [*by, "trial_id"]
    df = df.sort_values([*keys, "_epoch"], kind="stable")
    g = df.groupby(keys, sort=False)
    last = g.tail(1).set_index(keys)
    out = pd.DataFrame(index=last.index)
    for c in (
        "cell",
        "phase",
        "dataset_size",
        "epochs",
        "lora_r",
        "learning_rate",
        "seed",
        "model",
        "model_params_n",
        "task",
    ):
        if c not in keys:
            out[c] = last[c]
    st = g["_status"].agg(
        lambda s: "failed" if (s == "failed").any() else "pruned" if (s == "pruned").any() else "ok"
    )
    out["status"] = st
    out["pruned"] = g["_status"].agg(lambda s: bool((s == "pruned").any()))
    out["error"] = g["error"].agg(
        lambda s: next((str(v) for v in s if isinstance(v, str) and v), None)
    )
    out["train_flops"] = g["train_flops"].agg(lambda s: pd.to_numeric(s, errors="coerce").max())
    out["pack_wall_seconds"] = g["wall_seconds"].agg(lambda s: pd.to_numeric(s, errors="coerce").max())
    # a table without pack_size (written before packing) trained every trial alone
    pack = g["pack_size"].agg(lambda s: pd.to_numeric(s, errors="coerce").max())
    out["pack_size"] = pack.where(pack >= 1, 1.0).fillna(1.0).astype(float)
    out["wall_seconds"] = out["pack_wall_seconds"] / out["pack_size"]
    out["last_epoch"] = last["_epoch"].where(last["_epoch"] >= 0)
    for c in table.columns:
        if c.startswith(("val_", "test_")):
            out[c] = pd.to_numeric(last[c], errors="coerce").astype(float)
    for c in carry:
        if c not in out.columns and c not in keys and c in last.columns:
            out[c] = last[c]
    if value is not None:
        v = pd.to_numeric(df[value], errors="coerce").astype(float)
        usable = df.assign(_v=v)[(df["_status"] != "failed") & np.isfinite(v)]
        gv = usable.groupby(keys, sort=False)["_v"]
        picked = gv.last() if use == "final" else gv.max() if higher else gv.min()
        out["value"] = picked.reindex(out.index).astype(float)
    return out.reset_index()

