"""The scaling report: a run directory in; report.html, report.md and report.json out.

    from analysis.report import write_report
    paths = write_report("runs/demo")   # runs/demo/report/report.{html,md,json} + PNGs

How a report is made, top to bottom (`analyse` does 1-4, `build_report` 5-6):

1. load: the results table, the study spec the sweep saved (spec.yaml) and
   the Optuna storage URL.
2. trials: one row per trial (status, final FLOPs and wall time, error).
3. selection, on the validation split only: `best_lr` per cell picks the
   config (trial_id_best); that trial's final-epoch *test* metrics, plus the
   "repeat" trials of the cell at the same learning rate (extra seeds), are
   the points every law, verdict and headline number below is computed from.
4. numbers, one section each, every one answering a question:
     1. the study          what ran, what failed and why, what it cost
     2. loss vs data       power law per epochs setting, exponent CI,
                           10x extrapolation, hold-out check
     3. data or epochs?    data-constrained law: what a repeated epoch is worth;
                           multiplicative vs Chinchilla across LoRA ranks
     4. best LR            per-cell optimum, sensitivity, LR rule, importances
     5. sudden abilities   jump verdict and mirage check per discontinuous metric
     6. recommendations    derived from the numbers above
   A step that cannot run (one dataset size, no completed trial, a FitError)
   leaves a ``reason`` in the JSON and a sentence in the report; an
   unexpected exception in a section is recorded under ``errors`` and the
   report goes on.
5. figures: analysis.plots (matplotlib, Agg canvas), as PNG bytes.
6. render: HTML (figures inline as base64 data: URIs, CSS inline, no
   network), Markdown (PNG files beside it) and JSON (NaN -> null).

`analysis` never imports ray or torch; matplotlib and optuna are imported
only when figures or importances are made.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.emergence import check_mirage
from analysis.fit import FitError, LawFit, compare, fit_law, holdout
from analysis.lr import LRRule, best_lr, lr_rule

__all__ = [
    "Analysis",
    "Report",
    "ReportPaths",
    "SECTIONS",
    "analyse",
    "build_report",
    "selected_points",
    "trial_summary",
    "write_report",
]

# ---- defaults ----------------------------------------------------------------
BOOTSTRAP = 200  # law resamples: a 90% percentile interval from 200 draws has 10 in each tail
LEVEL = 0.9  # interval level everywhere (the fitter's and best_lr's default too)
EXTRAPOLATE = 10.0  # "10x more data is predicted to give ..."
LR_PREDICT_AT = (2.0, 10.0)  # LR rule predictions at these multiples of the largest D
MIN_SIZES_LAW = 3  # E + A D^-alpha has 3 parameters
MIN_SIZES_HOLDOUT = 4  # fit on >= 3 smaller sizes, test on the largest
MIN_TRIALS_IMPORTANCE = 8  # fewer complete trials: importances are noise
WIDE_CI = 0.5  # exponent interval wider than 50% of its value: "add seeds / sizes"
HOLDOUT_BAD = 0.05  # hold-out error above 5% of the loss: the law extrapolates poorly
PAYS_Z = 2.0  # a predicted gain above 2 noise SDs is one the next run could measure
# Data-constrained law for fine-tunes of one base model: N is a constant, so its
# term A/N'^alpha is a constant too and folds into E; fixing A ~ 0 and alpha = 0
# leaves E, B, beta and R*_D free (R*_N is then irrelevant and fixed at 1).
DC_FIXED = {"A": 1e-12, "alpha": 0.0, "R_N_star": 1.0}

CONTINUOUS = ("eval_loss", "token_accuracy", "answer_logprob")
DISCONTINUOUS = ("exact_match",)
LOSS = "test_eval_loss"  # the law's y: test split of the val-selected config
SELECT = "val_eval_loss"  # what selection reads

SECTIONS = ("study", "data", "epochs", "lr", "emergence", "recommendations")
# what `analyse` can compute: the sections, plus Optuna importances (part of section 4, but they
# import optuna and cost a second, so `plan` leaves them out)
PARTS = (*SECTIONS, "importance")
_TITLES = {
    "study": ("The study", "What ran, what failed and why, and what it cost?"),
    "data": ("How loss scales with data", "How does test loss fall as the fine-tuning set grows, and what would more data buy?"),
    "epochs": ("Data or epochs?", "Is another pass over the same examples worth as much as fresh examples?"),
    "lr": ("Best learning rate", "Which learning rate is best in each cell, how sure are we, and how does it move with data?"),
    "emergence": ("Sudden abilities", "Does exact match jump suddenly with data, and is the jump real or an artefact of the metric?"),
    "recommendations": ("Recommendations", "What should the next run change?"),
}  # fmt: skip


# ---- small helpers -------------------------------------------------------------


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


def _f(v: Any) -> float:
    v = _py(v)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _g(v: Any, digits: int = 3) -> str:
    """A number for a person: 3 significant digits, 'n/a' for missing."""
    v = _py(v)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _ci(lo: Any, hi: Any) -> str:
    return f"[{_g(lo)}, {_g(hi)}]"


def _pct(v: Any) -> str:
    v = _f(v)
    return "n/a" if not math.isfinite(v) else f"{100 * v:.1f}%"


def _d(v: Any) -> str:
    """A dataset size: an integer with thousands separators."""
    v = _f(v)
    return "n/a" if not math.isfinite(v) else f"{round(v):,}"


def _redact(url: str) -> str:
    """Hide a password in a database URL (postgresql://user:secret@host -> user:***@host)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


# ---- 1-3. loading, trials, selection ----------------------------------------------


def trial_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its axes, LR, status, final metrics, FLOPs, wall time and error.

    status: "failed" if any row failed, else "pruned" if any row was pruned,
    else "ok". Final values come from the trial's last evaluated epoch;
    train_flops and wall_seconds are cumulative per trial, so their final
    value is what the trial spent.
    """
    cols = ["trial_id", "cell", "phase", "dataset_size", "epochs", "lora_r", "learning_rate", "seed",
            "status", "error", "train_flops", "wall_seconds", "last_epoch", "model", "task"]  # fmt: skip
    if table.empty:
        return pd.DataFrame(columns=cols)
    df = table.copy()
    for c in ("cell", "phase", "error", "model", "task", "lora_r", "seed", "epoch", "train_flops",
              "wall_seconds", "dataset_size", "epochs", "learning_rate"):  # fmt: skip
        if c not in df.columns:
            df[c] = np.nan
    df["_status"] = df["status"].astype("string").fillna("").astype(str)
    df["_epoch"] = pd.to_numeric(df["epoch"], errors="coerce").astype(float).fillna(-1.0)
    df = df.sort_values(["trial_id", "_epoch"], kind="stable")
    g = df.groupby("trial_id", sort=False)
    last = g.tail(1).set_index("trial_id")
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
        "task",
    ):
        out[c] = last[c]
    st = g["_status"].agg(
        lambda s: "failed" if (s == "failed").any() else "pruned" if (s == "pruned").any() else "ok"
    )
    out["status"] = st
    out["error"] = g["error"].agg(
        lambda s: next((str(v) for v in s if isinstance(v, str) and v), None)
    )
    out["train_flops"] = g["train_flops"].agg(lambda s: pd.to_numeric(s, errors="coerce").max())
    out["wall_seconds"] = g["wall_seconds"].agg(lambda s: pd.to_numeric(s, errors="coerce").max())
    out["last_epoch"] = last["_epoch"].where(last["_epoch"] >= 0)
    for c in table.columns:
        if c.startswith(("val_", "test_")):
            out[c] = pd.to_numeric(last[c], errors="coerce").astype(float)
    return out.reset_index()


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
    for c in ("dataset_size", "epochs", "lora_r", "learning_rate", "train_flops"):
        pts[c] = pd.to_numeric(pts[c], errors="coerce").astype(float)
    pts["examples_seen"] = pts["dataset_size"] * pts["epochs"]
    pts["status"] = "ok"
    return pts.sort_values(
        ["epochs", "lora_r", "dataset_size", "trial_id"], kind="stable"
    ).reset_index(drop=True)


def _load_spec(run_dir: Path | None) -> tuple[dict[str, Any], Any]:
    """(raw spec dict, validated StudySpec or None) from run_dir/spec.yaml."""
    if run_dir is None or not (run_dir / "spec.yaml").exists():
        return {}, None
    import yaml

    try:
        raw = yaml.safe_load((run_dir / "spec.yaml").read_text()) or {}
    except yaml.YAMLError:
        return {}, None
    if not isinstance(raw, dict):
        return {}, None
    try:
        from scaling.spec import parse_spec

        return raw, parse_spec(raw, source=str(run_dir / "spec.yaml"))
    except Exception:  # a moved task file or an older spec: the raw dict still describes it
        return raw, None


@dataclass
class Analysis:
    """Everything the report says, as numbers (``numbers``, the JSON) and fitted objects.

    ``numbers`` has one key per section (see SECTIONS) plus "meta", "notes"
    and "errors". Fitted objects, for callers that want more: ``loss_fits``
    {series label: LawFit}, ``dc_fits`` {label: LawFit}, ``rule`` (LRRule or
    None), ``best`` (the best_lr frame), ``points`` (selected_points),
    ``trials`` (trial_summary).
    """

    run_dir: Path | None
    table: pd.DataFrame
    spec: dict[str, Any]
    spec_obj: Any
    bootstrap: int
    seed: int
    level: float
    sections: tuple[str, ...] = PARTS
    by: tuple[str, ...] = ()
    series_cols: tuple[str, ...] = ("epochs",)
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    best: pd.DataFrame | None = None
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    loss_fits: dict[str, LawFit] = field(default_factory=dict)
    dc_fits: dict[str, LawFit] = field(default_factory=dict)
    rule: LRRule | None = None
    numbers: dict[str, Any] = field(default_factory=dict)
    figdata: dict[str, Any] = field(default_factory=dict)

    # series = the non-D axes: epochs, plus lora_r when the study has several ranks
    def series(self) -> list[dict[str, Any]]:
        src = self.points if len(self.points) else self.trials
        if src.empty:
            return []
        keys = src[list(self.series_cols)].astype(float).dropna().drop_duplicates()
        keys = keys.sort_values(list(self.series_cols)).to_dict("records")
        return [{"label": _series_label(k), "key": k} for k in keys]

    def series_points(self, key: Mapping[str, float]) -> pd.DataFrame:
        p = self.points
        m = np.ones(len(p), dtype=bool)
        for c, v in key.items():
            m &= (p[c].astype(float) == float(v)).to_numpy()
        return p[m]


def _series_label(key: Mapping[str, float]) -> str:
    parts = [f"epochs={int(key['epochs'])}"] if "epochs" in key else []
    if "lora_r" in key:
        parts.append(f"r={int(key['lora_r'])}")
    return ", ".join(parts) or "all"


def _run_section(an: Analysis, name: str, fn: Callable[[Analysis], None]) -> None:
    """Run one section; a failure becomes an entry in errors, never a crash of the report."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn(an)
        except Exception as err:  # the report must survive any one section; the error is shown
            an.numbers["errors"].append({"section": name, "error": f"{type(err).__name__}: {err}"})
            an.numbers.setdefault(name, {})["reason"] = (
                f"this section could not be computed: {type(err).__name__}: {err}"
            )
    msgs = []
    for w in caught:
        msg = str(w.message)
        if "outside the fitted range" in msg or msg in msgs:
            continue  # extrapolating is what the predictions are for; they say so
        msgs.append(msg)
    if msgs:
        an.numbers.setdefault(name, {}).setdefault("warnings", []).extend(msgs)


def analyse(source: str | Path | pd.DataFrame, *, bootstrap: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL,
            sections: Collection[str] = PARTS) -> Analysis:  # fmt: skip
    """Compute every number of the report (no figures); never raises on degenerate data.

    ``source``: a run directory (results.parquet + spec.yaml), a results file,
    or a results DataFrame. ``sections``: a subset of PARTS to compute
    ("plan" needs only study, data, epochs, lr). Raises RecordsError (a
    ValueError) only when there is no readable results table at all.
    """
    from scaling.records import read_results

    # 1. load
    if isinstance(source, pd.DataFrame):
        run_dir, table = None, source.copy()
    else:
        p = Path(source)
        run_dir = p if p.is_dir() else p.parent
        table = read_results(p)
    spec, spec_obj = _load_spec(run_dir)
    if not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    unknown = set(sections) - set(PARTS)
    if unknown:
        raise ValueError(f"sections must be among {PARTS}, got {sorted(unknown)}")
    an = Analysis(run_dir=run_dir, table=table, spec=spec, spec_obj=spec_obj, bootstrap=bootstrap, seed=seed,
                  level=level, sections=tuple(sections))  # fmt: skip
    an.numbers = {
        "schema": "scaling-report/1",
        "meta": {
            "run_dir": str(run_dir) if run_dir else None,
            "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "bootstrap": bootstrap,
            "seed": seed,
            "level": level,
            "selection": f"configs chosen on {SELECT} (validation split); laws and headline numbers use test_ metrics",
        },
        "errors": [],
    }

    # 2. trials; 3. selection
    an.trials = trial_summary(table)
    ranks = (
        pd.to_numeric(an.trials.get("lora_r", pd.Series(dtype=float)), errors="coerce")
        .dropna()
        .unique()
    )
    an.series_cols = ("epochs", "lora_r") if len(ranks) >= 2 else ("epochs",)
    an.by = ("dataset_size", "epochs", "lora_r") if len(ranks) >= 2 else ("dataset_size", "epochs")
    _run_section(an, "selection", _select)

    # 4. the sections
    steps = {"study": _study, "data": _data, "epochs": _epochs, "lr": _lr, "emergence": _emergence,
             "recommendations": _recommend}  # fmt: skip
    for name in SECTIONS:
        if name in sections:
            _run_section(an, name, steps[name])
    return an


def _select(an: Analysis) -> None:
    out: dict[str, Any] = {"metric": SELECT, "by": list(an.by)}
    an.numbers["selection"] = out
    if an.trials.empty or SELECT not in an.table.columns:
        out["reason"] = (
            "no trials in the table" if an.trials.empty else f"the table has no {SELECT} column"
        )
        an.best = None
        an.points = selected_points(an.table, pd.DataFrame(), by=an.by)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # edges and empty cells are reported in section 4
        an.best = best_lr(an.table, by=an.by, metric="eval_loss", split="val", bootstrap=an.bootstrap, seed=an.seed,
                          level=an.level, edge_warn=False)  # fmt: skip
    an.points = selected_points(an.table, an.best, by=an.by)
    out["cells"] = int(len(an.best))
    out["cells_with_choice"] = int(an.best["trial_id_best"].notna().sum())
    out["points"] = int(len(an.points))


# ---- 4.1 the study ----------------------------------------------------------------------


def _study(an: Analysis) -> None:
    s, t = an.spec, an.trials
    out: dict[str, Any] = {}
    an.numbers["study"] = out

    def first(frame: pd.DataFrame, c: str) -> Any:
        return _py(frame[c].dropna().iloc[0]) if c in frame and frame[c].notna().any() else None

    def distinct(c: str) -> list[int]:
        if c not in t or t.empty:
            return []
        return sorted(pd.to_numeric(t[c], errors="coerce").dropna().astype(int).unique().tolist())

    axes = s.get("axes") or {}
    lr = s.get("learning_rate") or {}
    out["spec"] = {
        "name": s.get("name") or first(an.table, "study"),
        "model": s.get("model") or first(t, "model"),
        "task": s.get("task") or first(t, "task"),
        "dataset_sizes": list(an.spec_obj.axes.dataset_sizes()) if an.spec_obj is not None else distinct("dataset_size"),
        "epochs": list(an.spec_obj.axes.epoch_values()) if an.spec_obj is not None else distinct("epochs"),
        "lora_r": axes.get("lora_r") or (s.get("lora") or {}).get("r") or distinct("lora_r") or None,
        "learning_rate_range": [lr.get("low"), lr.get("high")] if lr else None,
        "trials_per_cell": s.get("trials_per_cell"),
        "repeat_seeds": (s.get("seeds") or {}).get("repeat_best"),
        "sampler": s.get("sampler"),
        "early_stopping": (s.get("early_stopping") or {}).get("method"),
        "eval": s.get("eval"),
        "planned_trials": an.spec_obj.planned_trials() if an.spec_obj is not None else None,
        "spec_file": str(an.run_dir / "spec.yaml") if an.run_dir and (an.run_dir / "spec.yaml").exists() else None,
    }  # fmt: skip
    counts = t["status"].value_counts().to_dict() if len(t) else {}
    out["trials"] = {
        "total": int(len(t)),
        "ok": int(counts.get("ok", 0)),
        "failed": int(counts.get("failed", 0)),
        "pruned": int(counts.get("pruned", 0)),
        "rows": int(len(an.table)),
        "by_phase": {str(k): int(v) for k, v in t["phase"].fillna("n/a").value_counts().items()}
        if len(t)
        else {},
    }
    failed = (
        t[t["status"] == "failed"].sort_values(["dataset_size", "epochs", "trial_id"])
        if len(t)
        else t
    )
    out["failed_trials"] = [
        {"trial_id": r.trial_id, "cell": _py(r.cell), "learning_rate": _f(r.learning_rate), "error": r.error or "(no message)"}
        for r in failed.itertuples()
    ]  # fmt: skip
    errs = (
        failed["error"].fillna("(no message)").value_counts()
        if len(failed)
        else pd.Series(dtype=int)
    )
    out["failure_kinds"] = [{"error": str(k), "trials": int(v)} for k, v in errs.items()]

    # compute: the final (cumulative) FLOPs and wall time of every trial, failed ones included
    flops = (
        pd.to_numeric(t.get("train_flops"), errors="coerce") if len(t) else pd.Series(dtype=float)
    )
    wall = (
        pd.to_numeric(t.get("wall_seconds"), errors="coerce") if len(t) else pd.Series(dtype=float)
    )
    ok = t["status"] == "ok" if len(t) else pd.Series(dtype=bool)
    good = ok & (flops > 0) & (wall > 0) if len(t) else ok
    seen = (
        (
            pd.to_numeric(t["dataset_size"], errors="coerce")
            * pd.to_numeric(t["last_epoch"], errors="coerce")
        )
        if len(t)
        else flops
    )
    fpe = (flops / seen)[ok & (flops > 0) & (seen > 0)] if len(t) else flops
    elapsed = math.nan
    if "recorded_at" in an.table and an.table["recorded_at"].notna().any():
        ts = pd.to_datetime(an.table["recorded_at"], errors="coerce", utc=True).dropna()
        if len(ts) >= 2:
            elapsed = float((ts.max() - ts.min()).total_seconds())
    out["compute"] = {
        "train_flops_total": float(flops.sum(min_count=1)) if len(flops) else None,
        "trial_seconds_total": float(wall.sum(min_count=1)) if len(wall) else None,
        "elapsed_seconds": elapsed,
        "flops_per_second": float(flops[good].sum() / wall[good].sum()) if good.any() else None,
        "flops_per_example": float(fpe.median()) if len(fpe) else None,
        "note": "train_flops = 6 x (parameters in the forward pass) x training tokens, summed over trials; "
                "flops_per_second is per trial (one trial's resources), from completed trials; "
                "elapsed_seconds spans the first to the last recorded trial end",
    }  # fmt: skip

    # Optuna storage
    url = None
    if isinstance(s.get("storage"), dict) and s["storage"].get("optuna"):
        url = str(s["storage"]["optuna"])
    elif an.run_dir is not None:
        url = f"sqlite:///{(an.run_dir / 'optuna.db').resolve()}"
    shown = _redact(url) if url else None
    out["optuna"] = {
        "url": shown,
        "dashboard_command": f"optuna-dashboard {shown}" if shown else None,
        "exists": (an.run_dir / "optuna.db").exists()
        if url and url.startswith("sqlite") and an.run_dir
        else None,
        "study_names": f"{out['spec']['name']}/D=..,E=..,r=..",
        "lr_param": "learning_rate",
    }


# ---- 4.2 loss vs data ---------------------------------------------------------------------


def _seed_noise(pts: pd.DataFrame, y: str) -> tuple[float, int]:
    """Pooled within-size standard deviation of y (seeds of one config), and its dof."""
    ss, dof = 0.0, 0
    for _, g in pts.groupby("dataset_size"):
        v = g[y].to_numpy(float)
        v = v[np.isfinite(v)]
        if v.size >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += v.size - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def _band(
    fit: LawFit, xs: np.ndarray, col: str, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = {col: xs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mid = fit.predict(frame)
        if fit.draws_.shape[0]:
            lo, hi = fit.predict_interval(frame, level=level)
        else:
            lo = hi = np.full(xs.shape, np.nan)
    return np.asarray(mid, float), np.asarray(lo, float), np.asarray(hi, float)


def _data(an: Analysis) -> None:
    out: dict[str, Any] = {"y": LOSS, "law": "power: L(D) = E + A * D^-alpha", "series": []}
    an.numbers["data"] = out
    an.figdata["loss"] = []
    if an.points.empty or LOSS not in an.points:
        out["reason"] = "no completed trial has a test loss, so no law can be fitted"
        return
    for s in an.series():
        pts = an.series_points(s["key"])
        pts = pts[np.isfinite(pts[LOSS].astype(float)) & (pts[LOSS].astype(float) > 0)]
        sizes = sorted(pts["dataset_size"].unique())
        entry: dict[str, Any] = {
            "label": s["label"], **{c: _py(v) for c, v in s["key"].items()},
            "sizes": [int(v) for v in sizes], "n_points": int(len(pts)),
            "points": [{"dataset_size": int(r.dataset_size), "seed": _py(r.seed), "trial_id": r.trial_id,
                        "learning_rate": r.learning_rate, "test_eval_loss": float(getattr(r, LOSS))}
                       for r in pts.itertuples()],
        }  # fmt: skip
        out["series"].append(entry)
        fig = {
            "label": s["label"],
            "x": pts["dataset_size"].to_numpy(float),
            "y": pts[LOSS].to_numpy(float),
        }
        an.figdata["loss"].append(fig)
        noise, dof = _seed_noise(pts, LOSS)
        entry["seed_noise"] = {"sd": noise, "dof": dof}
        if len(sizes) < MIN_SIZES_LAW:
            entry["reason"] = (
                f"{len(sizes)} dataset size(s) with a test loss; the power law E + A*D^-alpha has 3 "
                f"parameters and needs at least {MIN_SIZES_LAW} sizes"
            )
            continue
        data = {
            "dataset_size": pts["dataset_size"].to_numpy(float),
            LOSS: pts[LOSS].to_numpy(float),
        }
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = fit_law(law="power", data=data, x="dataset_size", y=LOSS, bootstrap=an.bootstrap,
                              seed=an.seed, level=an.level)  # fmt: skip
        except FitError as err:
            entry["reason"] = f"the power-law fit failed: {err}"
            continue
        an.loss_fits[s["label"]] = fit
        entry["fit"] = fit.to_dict()
        entry["exponent"] = {
            "alpha": fit.params_["alpha"],
            "ci": list(fit.ci_.get("alpha", (math.nan, math.nan))),
        }
        entry["floor"] = {"E": fit.params_["E"], "ci": list(fit.ci_.get("E", (math.nan, math.nan)))}
        dmax = float(max(sizes))
        # extrapolation: 10x the largest size
        x10 = np.array([EXTRAPOLATE * dmax])
        m, lo, hi = _band(fit, x10, "dataset_size", an.level)
        entry["extrapolation"] = {"factor": EXTRAPOLATE, "dataset_size": float(x10[0]), "loss": float(m[0]),
                                  "lo": float(lo[0]), "hi": float(hi[0])}  # fmt: skip
        # what doubling the data buys, with its bootstrap interval, against the noise
        x12 = np.array([dmax, 2 * dmax])
        pred, _, _ = _band(fit, x12, "dataset_size", an.level)
        gain = float(pred[0] - pred[1])
        g_lo = g_hi = math.nan
        if fit.draws_.shape[0]:
            dl = np.exp(fit.law_.log_predict(fit.draw_thetas_, x12[:, None]))  # (B, 2)
            g = dl[:, 0] - dl[:, 1]
            g_lo, g_hi = np.quantile(g, [(1 - an.level) / 2, (1 + an.level) / 2])
        scatter = float(np.mean(pts[LOSS])) * fit.metrics_["rmsle"]
        ref = noise if math.isfinite(noise) else scatter
        entry["gain_2x"] = {
            "from": dmax, "to": 2 * dmax, "gain": gain, "lo": float(g_lo), "hi": float(g_hi),
            "noise": ref, "noise_kind": "seed SD" if math.isfinite(noise) else "scatter around the fit",
            "gain_over_noise": gain / ref if ref > 0 else math.nan,
        }  # fmt: skip
        grid = np.geomspace(float(min(sizes)), EXTRAPOLATE * dmax, 80)
        gm, glo, ghi = _band(fit, grid, "dataset_size", an.level)
        fig.update(grid=grid, fit=gm, lo=glo, hi=ghi, fitted_max=dmax,
                   extrapolation={"x": float(x10[0]), "y": float(m[0]), "lo": float(lo[0]), "hi": float(hi[0])})  # fmt: skip
        # hold-out: fit the smaller sizes, predict the largest
        if len(sizes) >= MIN_SIZES_HOLDOUT:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    h = holdout(law="power", data=data, x="dataset_size", y=LOSS, split_on="dataset_size",
                                threshold=dmax, bootstrap=0, seed=an.seed)  # fmt: skip
                entry["holdout"] = {
                    "train_sizes": [int(v) for v in sizes[:-1]], "test_size": int(dmax),
                    "mape": h.mape, "predicted": float(np.mean(h.predicted)), "observed": float(np.mean(h.observed)),
                    "alpha_train": h.fit.params_["alpha"],
                }  # fmt: skip
                fig["holdout"] = {"x": dmax, "y": float(np.mean(h.predicted))}
            except FitError as err:
                entry["holdout"] = {"reason": f"the hold-out fit failed: {err}"}
        else:
            entry["holdout"] = {
                "reason": f"{len(sizes)} sizes; the hold-out check needs {MIN_SIZES_HOLDOUT} "
                f"(fit on >= {MIN_SIZES_HOLDOUT - 1}, test on the largest)"
            }


# ---- 4.3 data or epochs ------------------------------------------------------------------


def dc_multiplier(epochs: Any, r_star: Any) -> np.ndarray:
    """Effective data per unique example after ``epochs`` passes, D'/U (Muennighoff et al. 2023, Eq. 5).

    1 + R*(1 - exp(-(epochs - 1)/R*)): 1 for one epoch, -> epochs as R* -> inf
    (repeats as good as fresh data), -> 1 + R* for many epochs.
    """
    e, r = np.asarray(epochs, float), np.asarray(r_star, float)
    return 1.0 + r * -np.expm1(-(np.maximum(e, 1.0) - 1.0) / r)


def _epochs(an: Analysis) -> None:
    out: dict[str, Any] = {"data_constrained": [], "rank_comparison": []}
    an.numbers["epochs"] = out
    an.figdata["effective"] = None
    an.figdata["compute"] = []
    pts = an.points
    if pts.empty or LOSS not in pts:
        out["reason"] = "no completed trial has a test loss"
        return
    pts = pts[np.isfinite(pts[LOSS].astype(float)) & (pts[LOSS].astype(float) > 0)]
    n_epochs = pts["epochs"].nunique()
    for s in an.series():
        sp = an.series_points(s["key"])
        x = (
            sp["train_flops"].to_numpy(float)
            if sp["train_flops"].notna().any()
            else sp["examples_seen"].to_numpy(float)
        )
        an.figdata["compute"].append({"label": s["label"], "x": x, "y": sp[LOSS].to_numpy(float)})
    an.figdata["compute_x"] = "flops" if pts["train_flops"].notna().any() else "examples"
    if n_epochs < 2:
        out["reason"] = (
            f"the study has {n_epochs} epochs setting(s) with results; comparing repeated epochs "
            "with fresh data needs at least 2"
        )
    else:
        groups = [("all ranks" if "lora_r" not in an.series_cols else f"r={int(r)}",
                   pts if "lora_r" not in an.series_cols else pts[pts["lora_r"] == r])
                  for r in (sorted(pts["lora_r"].dropna().unique()) if "lora_r" in an.series_cols else [None])]  # fmt: skip
        for label, g in groups:
            entry: dict[str, Any] = {"label": label, "law": "data_constrained", "x": ["N (constant)", "examples seen = D x epochs", "unique examples = D"],
                                     "fixed": DC_FIXED, "n_points": int(len(g))}  # fmt: skip
            out["data_constrained"].append(entry)
            if g["epochs"].nunique() < 2 or g["dataset_size"].nunique() < 2 or len(g) < 6:
                entry["reason"] = (
                    f"{g['epochs'].nunique()} epochs setting(s), {g['dataset_size'].nunique()} size(s), "
                    f"{len(g)} points: the law's 4 free parameters need >= 2 of each and >= 6 points"
                )
                continue
            data = {"N": np.ones(len(g)), "examples_seen": g["examples_seen"].to_numpy(float),
                    "dataset_size": g["dataset_size"].to_numpy(float), LOSS: g[LOSS].to_numpy(float)}  # fmt: skip
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = fit_law(law="data_constrained", data=data, x=["N", "examples_seen", "dataset_size"], y=LOSS,
                                  bootstrap=an.bootstrap, seed=an.seed, level=an.level, fixed=DC_FIXED)  # fmt: skip
            except FitError as err:
                entry["reason"] = f"the data-constrained fit failed: {err}"
                continue
            an.dc_fits[label] = fit
            entry["fit"] = fit.to_dict()
            r = fit.params_["R_D_star"]
            r_lo, r_hi = fit.ci_.get("R_D_star", (math.nan, math.nan))
            entry["R_D_star"] = {"value": r, "ci": [r_lo, r_hi]}
            entry["beta"] = {
                "value": fit.params_["beta"],
                "ci": list(fit.ci_.get("beta", (math.nan, math.nan))),
            }
            rows = []
            studied = sorted(int(e) for e in g["epochs"].unique())
            for e in sorted(set(studied) | {1}):
                m = float(dc_multiplier(e, r))
                lo, hi = (
                    (float(dc_multiplier(e, r_lo)), float(dc_multiplier(e, r_hi)))
                    if math.isfinite(r_lo)
                    else (math.nan, math.nan)
                )
                prev = float(dc_multiplier(e - 1, r)) if e > 1 else math.nan
                rows.append({
                    "epochs": e, "studied": e in studied, "multiplier": m, "lo": lo, "hi": hi,
                    "repeat_worth": (m - 1.0) / (e - 1.0) if e > 1 else None,
                    "last_epoch_worth": m - prev if e > 1 else None,
                })  # fmt: skip
            entry["effective_data"] = rows
            if an.figdata["effective"] is None:
                ee = np.linspace(1.0, max(studied + [2]), 60)
                an.figdata["effective"] = {
                    "rows": [rw for rw in rows if rw["studied"]],
                    "curve": {"epochs": ee, "multiplier": dc_multiplier(ee, r),
                              "lo": dc_multiplier(ee, r_lo) if math.isfinite(r_lo) else np.full_like(ee, np.nan),
                              "hi": dc_multiplier(ee, r_hi) if math.isfinite(r_hi) else np.full_like(ee, np.nan)},
                }  # fmt: skip
    _equal_compute(an, out)
    # several LoRA ranks: multiplicative (Zhang et al. 2024) vs additive (Chinchilla form) by AIC
    ranks = sorted(pts["lora_r"].dropna().unique())
    if len(ranks) < 2:
        out["rank_comparison_reason"] = (
            f"the study has {len(ranks)} LoRA rank(s); comparing laws across ranks needs 2"
        )
        return
    for e in sorted(pts["epochs"].unique()):
        g = pts[pts["epochs"] == e]
        entry = {"epochs": int(e), "x": ["lora_r", "dataset_size"], "n_points": int(len(g))}
        out["rank_comparison"].append(entry)
        if g["lora_r"].nunique() < 2 or g["dataset_size"].nunique() < 2 or len(g) < 7:
            entry["reason"] = "needs >= 2 ranks, >= 2 sizes and >= 7 points at this epochs setting"
            continue
        data = {"lora_r": g["lora_r"].to_numpy(float), "dataset_size": g["dataset_size"].to_numpy(float),
                LOSS: g[LOSS].to_numpy(float)}  # fmt: skip
        fits = {}
        for law in ("multiplicative", "chinchilla"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fits[law] = fit_law(
                        law=law, data=data, x=["lora_r", "dataset_size"], y=LOSS, seed=an.seed
                    )
                entry[law] = fits[law].to_dict()
            except FitError as err:
                entry[law] = {"reason": str(err)}
        if len(fits) == 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = compare(fits)
            entry["better"] = str(table["name"].iloc[0])
            entry["delta_aic"] = float(table["delta_aic"].iloc[1])
            entry["weights"] = {
                str(n): float(w) for n, w in zip(table["name"], table["weight"], strict=True)
            }


def _equal_compute(an: Analysis, out: dict[str, Any]) -> None:
    """At one compute budget inside every setting's fitted range: which epochs setting wins?

    S example-passes buy D = S / epochs for each epochs setting; S is the
    largest value at which every setting's D lies within its fitted sizes
    (no extrapolation). Per LoRA rank when several.
    """
    out["equal_compute"] = []
    groups: dict[Any, list] = {}
    for s in an.series():
        if s["label"] in an.loss_fits:
            groups.setdefault(s["key"].get("lora_r"), []).append(s)
    for rank, ss in groups.items():
        if len(ss) < 2:
            continue
        fits = [(float(s["key"]["epochs"]), an.loss_fits[s["label"]], s["label"]) for s in ss]
        lo = max(e * f.x_range_["dataset_size"][0] for e, f, _ in fits)
        hi = min(e * f.x_range_["dataset_size"][1] for e, f, _ in fits)
        entry: dict[str, Any] = {"lora_r": rank, "examples_seen": hi}
        out["equal_compute"].append(entry)
        if lo > hi:
            entry["reason"] = (
                "the epochs settings' fitted sizes do not overlap in examples seen (D x epochs)"
            )
            continue
        rows = []
        for e, f, label in fits:
            m, l_, h_ = _band(f, np.array([hi / e]), "dataset_size", an.level)
            rows.append({"series": label, "epochs": int(e), "dataset_size": hi / e, "loss": float(m[0]),
                         "lo": float(l_[0]), "hi": float(h_[0])})  # fmt: skip
        entry["options"] = rows
        best = min(rows, key=lambda r: r["loss"])
        entry["best_epochs"] = best["epochs"]
        rest = [r for r in rows if r is not best]
        entry["clear"] = bool(all(math.isfinite(r["lo"]) and r["lo"] > best["hi"] for r in rest))


# ---- 4.4 learning rate ---------------------------------------------------------------------


def _importances(an: Analysis) -> dict[str, Any]:
    """Optuna parameter importances over all complete trials, in one in-memory study."""
    t = an.trials
    done = (
        t[
            (t["status"] == "ok")
            & np.isfinite(pd.to_numeric(t.get(SELECT), errors="coerce").astype(float))
        ]
        if len(t) and SELECT in t
        else t.iloc[0:0]
    )
    out: dict[str, Any] = {
        "how": "one in-memory Optuna study built from every complete trial of every cell "
               "(params dataset_size, epochs, learning_rate, and lora_r when it varies; value = final "
               f"{SELECT}); each cell's own Optuna study has only learning_rate, whose importance is trivially 1",
        "n_trials": int(len(done)),
    }  # fmt: skip
    if len(done) < MIN_TRIALS_IMPORTANCE:
        out["reason"] = (
            f"{len(done)} complete trials; importances need at least {MIN_TRIALS_IMPORTANCE}"
        )
        return out
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    params = {}
    for c, log, integer in (("dataset_size", True, False), ("epochs", False, True), ("learning_rate", True, False),
                            ("lora_r", True, True)):  # fmt: skip
        v = pd.to_numeric(done[c], errors="coerce").astype(float)
        if v.isna().any() or v.nunique() < 2:
            continue
        lo, hi = float(v.min()), float(v.max())
        params[c] = (
            IntDistribution(int(lo), int(hi), log=log)
            if integer
            else FloatDistribution(lo, hi, log=log),
            integer,
        )
    out["params"] = list(params)
    if len(params) < 2:
        out["reason"] = (
            f"only {list(params)} vary across the complete trials; an importance needs two or more"
        )
        return out
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize")
        for r in done.itertuples():
            ps = {
                c: (int(getattr(r, c)) if integer else float(getattr(r, c)))
                for c, (_, integer) in params.items()
            }
            study.add_trial(create_trial(params=ps, distributions={c: d for c, (d, _) in params.items()},
                                         value=float(getattr(r, SELECT))))  # fmt: skip
        try:
            import sklearn  # noqa: F401  (fANOVA, Optuna's default evaluator, needs it)

            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=an.seed)
            out["evaluator"] = "fANOVA (Optuna's default)"
        except ImportError:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            out["evaluator"] = (
                "PED-ANOVA (Optuna's; fANOVA, the default, needs scikit-learn, which is not installed)"
            )
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    finally:
        optuna.logging.set_verbosity(verbosity)
    out["importances"] = {k: float(v) for k, v in imp.items()}
    return out


def _lr(an: Analysis) -> None:
    out: dict[str, Any] = {"metric": SELECT, "cells": [], "edges": [], "predictions": []}
    an.numbers["lr"] = out
    lr_range = an.spec.get("learning_rate") or {}
    out["searched_range"] = [lr_range.get("low"), lr_range.get("high")] if lr_range else None
    best = an.best
    t = an.trials
    trials_fig = pd.DataFrame(columns=["series", "dataset_size", "learning_rate", "value", "best"])
    if best is None or best.empty:
        out["reason"] = "no trials to choose a learning rate from"
        an.figdata["lr"] = {"trials": trials_fig, "best": None, "curves": [], "predictions": []}
        if "importance" in an.sections:
            out["importance"] = _importances(an)
        return
    labels = {s["label"]: i for i, s in enumerate(an.series())}
    chosen = set(best["trial_id_best"].dropna())
    if len(t):
        tf = t[t["status"] != "pruned"].copy()
        tf["value"] = (
            pd.to_numeric(tf.get(SELECT), errors="coerce").astype(float).where(tf["status"] == "ok")
        )
        tf["series"] = [
            _series_label({c: float(getattr(r, c)) for c in an.series_cols})
            for r in tf.itertuples()
        ]
        tf["best"] = tf["trial_id"].isin(chosen)
        trials_fig = tf[["series", "dataset_size", "learning_rate", "value", "best"]].astype(
            {"dataset_size": float, "learning_rate": float}
        )
    for b in best.itertuples():
        key = {c: float(getattr(b, c)) for c in an.series_cols}
        cell_vals = trials_fig[
            (trials_fig["series"] == _series_label(key))
            & (trials_fig["dataset_size"] == float(b.dataset_size))
        ]["value"]
        spread = (
            float(cell_vals.max() - cell_vals.min()) if cell_vals.notna().sum() >= 2 else math.nan
        )
        row = {c: _py(getattr(b, c)) for c in an.by}
        row.update({"lr_best": b.lr_best, "lr_low": b.lr_low, "lr_high": b.lr_high, "val_loss_best": b.metric_best,
                    "val_loss_spread": spread, "n_trials": int(b.n_trials), "n_failed": int(b.n_failed),
                    "trial_id_best": _py(b.trial_id_best), "at_edge": bool(b.at_edge), "edge": b.edge, "method": b.method})  # fmt: skip
        out["cells"].append(row)
        if b.at_edge:
            where = {"low": "the smallest searched: widen the range downward",
                     "high": "the largest searched: widen the range upward",
                     "both": "the only one searched: search a range around it"}[b.edge]  # fmt: skip
            out["edges"].append(
                {
                    **{c: row[c] for c in an.by},
                    "edge": b.edge,
                    "lr_best": b.lr_best,
                    "advice": where,
                }
            )
    # the LR rule
    bf = best.copy()
    bf["series"] = [
        _series_label({c: float(getattr(r, c)) for c in an.series_cols}) for r in bf.itertuples()
    ]
    bf["colour"] = [labels.get(s, 0) for s in bf["series"]]
    curves, preds = [], []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            an.rule = lr_rule(best, level=an.level)
        out["rule"] = an.rule.to_dict()
        out["rule"]["lr_proportional_to"] = f"D^{an.rule.params_['p']:.3g}" + (
            f" x epochs^{an.rule.params_['q']:.3g}" if "q" in an.rule.terms_ else ""
        )
    except ValueError as err:
        an.rule = None
        out["rule"] = None
        out["rule_reason"] = str(err)
    if an.rule is not None:
        dmax = float(best["dataset_size"].astype(float).max())
        dmin = float(best["dataset_size"].astype(float).min())
        grid = np.geomspace(dmin, max(LR_PREDICT_AT) * dmax, 50)
        for s in an.series():
            e = s["key"]["epochs"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = an.rule.predict(dataset_size=grid, epochs=e)
                lo, hi = an.rule.predict_interval(dataset_size=grid, epochs=e)
            curves.append(
                {
                    "label": s["label"],
                    "colour": labels[s["label"]],
                    "x": grid,
                    "y": y,
                    "lo": lo,
                    "hi": hi,
                }
            )
            for f in LR_PREDICT_AT:
                d = f * dmax
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    lr = an.rule.predict(dataset_size=d, epochs=e)
                    plo, phi = an.rule.predict_interval(dataset_size=d, epochs=e)
                p = {
                    "series": s["label"],
                    "epochs": e,
                    "factor": f,
                    "dataset_size": d,
                    "lr": lr,
                    "lo": plo,
                    "hi": phi,
                }
                out["predictions"].append(p)
                preds.append({**p, "colour": labels[s["label"]]})
    an.figdata["lr"] = {"trials": trials_fig, "best": bf, "curves": curves, "predictions": preds}
    if "importance" in an.sections:
        out["importance"] = _importances(an)


# ---- 4.5 sudden abilities --------------------------------------------------------------------


_PLAIN = {
    "metric artefact": "the all-or-nothing metric jumps while the continuous metrics improve smoothly: the model "
                       "gets steadily better and only the exact-match threshold makes it look sudden",
    "genuine jump": "a continuous metric jumps at the same place: the model itself changes there",
    "no jump": "no sudden jump: the metric changes gradually (or not at all) with data",
    "insufficient": "too few dataset sizes to tell a jump from a trend (at least 4 are needed)",
    "inconclusive": "the metric jumps, but no continuous metric was measured to check it against",
}  # fmt: skip


def _emergence(an: Analysis) -> None:
    out: dict[str, Any] = {"x": "dataset_size", "split": "test", "agg": "mean over the seeds of the chosen config",
                           "series": []}  # fmt: skip
    an.numbers["emergence"] = out
    an.figdata["emergence"] = {"series": [], "metrics": []}
    pts = an.points
    if pts.empty:
        out["reason"] = "no completed trial with test metrics"
        return
    present = [
        m
        for m in (*DISCONTINUOUS, *CONTINUOUS)
        if f"test_{m}" in pts and pts[f"test_{m}"].notna().any()
    ]
    disc = [m for m in DISCONTINUOUS if m in present]
    cont = [m for m in CONTINUOUS if m in present]
    an.figdata["emergence"]["metrics"] = present
    if not disc:
        out["reason"] = f"no discontinuous metric ({', '.join(DISCONTINUOUS)}) has test values"
    for s in an.series():
        sp = an.series_points(s["key"])
        fig: dict[str, Any] = {"label": s["label"], "curves": {}, "jumps": {}}
        an.figdata["emergence"]["series"].append(fig)
        for m in present:
            g = sp.groupby("dataset_size")[f"test_{m}"].mean().dropna()
            fig["curves"][m] = (g.index.to_numpy(float), g.to_numpy(float))
        for m in disc:
            res = check_mirage(
                sp, "dataset_size", discontinuous=m, continuous=cont, split="test", agg="mean"
            )
            jump = res.results[m]
            entry = {
                "label": s["label"], **{c: _py(v) for c, v in s["key"].items()}, "metric": m,
                "jump": jump.to_dict(), "verdict": jump.verdict,
                "interval": list(jump.interval) if jump.interval else None,
                "mirage": res.verdict, "reason": res.reason, "plain": _PLAIN.get(res.verdict, ""),
                "continuous": {k: r.verdict for k, r in res.results.items() if k != m},
                "missing": list(res.missing),
            }  # fmt: skip
            out["series"].append(entry)
            if jump.verdict == "jump" and jump.interval:
                fig["jumps"][m] = jump.interval
            for k, r in res.results.items():
                if k != m and r.verdict == "jump" and r.interval:
                    fig["jumps"][k] = r.interval


# ---- 4.6 recommendations -----------------------------------------------------------------------


def _recommend(an: Analysis) -> None:
    recs: list[dict[str, Any]] = []
    an.numbers["recommendations"] = recs
    N = an.numbers

    def add(kind: str, text: str, **data: Any) -> None:
        recs.append({"kind": kind, "text": text, **data})

    study = N.get("study", {})
    tr = study.get("trials", {})
    if tr.get("total", 0) == 0:
        add("run", "The table holds no trials: run `scaling sweep` on the spec first.")
    elif tr.get("ok", 0) == 0:
        kinds = study.get("failure_kinds") or [{"error": "n/a", "trials": 0}]
        add("failures", f"No trial completed ({tr.get('failed', 0)} failed, {tr.get('pruned', 0)} pruned); the most "
            f"common error is: {kinds[0]['error']} ({kinds[0]['trials']} trials). Fix it before reading any law.",
            error=kinds[0]["error"])  # fmt: skip
    elif tr.get("failed", 0):
        div = [
            f
            for f in study.get("failed_trials", [])
            if re.search(r"diverg|\bnan\b|\binf\b", f["error"], re.I)
        ]
        diverged = len(div)
        lowest = min(
            (f["learning_rate"] for f in div if math.isfinite(_f(f["learning_rate"]))),
            default=math.nan,
        )
        extra = (f" {diverged} of them diverged (non-finite loss), the lowest at learning rate {_g(lowest)}: keep "
                 "learning_rate.high below it." if diverged else "")  # fmt: skip
        add("failures", f"{tr['failed']} of {tr['total']} trials failed; see section 1 for their errors.{extra}",
            failed=tr["failed"], diverged=diverged)  # fmt: skip
    # LR range
    edges = N.get("lr", {}).get("edges", [])
    for side, word in (
        ("high", "upward"),
        ("low", "downward"),
        ("both", "around the single value"),
    ):
        cells = [e for e in edges if e["edge"] == side]
        if cells:
            rng = N["lr"].get("searched_range") or [None, None]
            names = ", ".join(f"D={_d(c['dataset_size'])} epochs={c['epochs']}" for c in cells)
            bound = rng[1] if side == "high" else rng[0]
            add("lr_range", f"Widen the learning-rate range {word}"
                + (f" (beyond {_g(bound)})" if bound is not None and side != "both" else "")
                + f": the best LR sits at the edge of the search in {len(cells)} cell(s) ({names}), so their optimum "
                "is censored and the LR rule leaves them out.", side=side, cells=len(cells))  # fmt: skip
    # seeds, sizes, and whether more data pays
    data = N.get("data", {})
    has_seeds = any((s.get("seed_noise") or {}).get("dof", 0) > 0 for s in data.get("series", []))
    if an.points is not None and len(an.points) and not has_seeds:
        add("seeds", "No cell has repeat seeds of its best config, so noise is estimated from the scatter around the "
            "fit only: set seeds.repeat_best: 2 (or more) in the spec for error bars.")  # fmt: skip
    for s in data.get("series", []):
        ex = s.get("exponent")
        if not ex:
            if s.get("reason"):
                add("sizes", f"{s['label']}: add dataset sizes: {s['reason']}.", series=s["label"])
            continue
        lo, hi = ex["ci"]
        a = ex["alpha"]
        if (
            lo is not None
            and hi is not None
            and math.isfinite(lo)
            and math.isfinite(hi)
            and a > 0
            and (hi - lo) / a > WIDE_CI
        ):
            add("seeds", f"{s['label']}: the exponent alpha={_g(a)} has a wide {an.level:.0%} interval {_ci(lo, hi)}: "
                "add seeds (seeds.repeat_best) and dataset sizes to pin it down.", series=s["label"])  # fmt: skip
        g = s.get("gain_2x") or {}
        z = g.get("gain_over_noise", math.nan)
        if math.isfinite(_f(z)):
            if z >= PAYS_Z:
                add("more_data", f"{s['label']}: more data still pays: doubling D from {_d(g['from'])} to {_d(g['to'])} "
                    f"is predicted to lower test loss by {_g(g['gain'])} {_ci(g['lo'], g['hi'])}, {_g(z, 2)}x the "
                    f"{g['noise_kind']} ({_g(g['noise'])}).", series=s["label"], gain_over_noise=z)  # fmt: skip
            else:
                add("more_data", f"{s['label']}: doubling D from {_d(g['from'])} to {_d(g['to'])} is predicted to lower "
                    f"test loss by only {_g(g['gain'])}, {_g(z, 2)}x the {g['noise_kind']} ({_g(g['noise'])}): "
                    "the next doubling would hardly be measurable; spend elsewhere (epochs, rank, learning rate).",
                    series=s["label"], gain_over_noise=z)  # fmt: skip
        h = s.get("holdout") or {}
        if math.isfinite(_f(h.get("mape"))) and h["mape"] > HOLDOUT_BAD:
            add("holdout", f"{s['label']}: the law fitted without the largest size misses it by {_pct(h['mape'])}: "
                "treat extrapolations with care and add a larger size.", series=s["label"])  # fmt: skip
    for dc in N.get("epochs", {}).get("data_constrained", []):
        rows = [r for r in dc.get("effective_data", []) if r["epochs"] > 1 and r["studied"]]
        if rows:
            r = rows[-1]
            worth = r["repeat_worth"]
            if worth < 0.5:
                add("epochs", f"Repeated epochs add little: {r['epochs']} epochs over D examples are worth "
                    f"{_g(r['multiplier'])}x D fresh examples (each repeat {_pct(worth)} of a fresh one); "
                    "prefer fresh data over more epochs.", repeat_worth=worth)  # fmt: skip
            else:
                add("epochs", f"Repeating is nearly as good as fresh data up to {r['epochs']} epochs (each repeat is "
                    f"worth {_pct(worth)} of a fresh example): when data is scarce, more epochs are a good use of "
                    "compute.", repeat_worth=worth)  # fmt: skip
    for e in N.get("emergence", {}).get("series", []):
        if e["mirage"] == "genuine jump" and e["interval"]:
            add("emergence", f"{e['label']}: {e['metric']} and a continuous metric jump between D={_d(e['interval'][0])} "
                f"and D={_d(e['interval'][1])}: add dataset sizes in that range to resolve the transition.")  # fmt: skip
        elif e["mirage"] == "metric artefact":
            add("emergence", f"{e['label']}: the jump of {e['metric']} is an artefact of the metric; track "
                "token accuracy and answer log-prob to forecast it.")  # fmt: skip
        elif e["mirage"] == "insufficient":
            add(
                "emergence",
                f"{e['label']}: add dataset sizes (at least 4) to judge whether {e['metric']} jumps.",
            )
    if not recs:
        add("none", "Nothing stands out: the numbers above raise no warning.")


# ---- 5-6. figures and rendering ----------------------------------------------------------------


@dataclass
class Report:
    """A rendered-ready report: sections of blocks, figures (PNG bytes) and the JSON numbers.

    Blocks: ("p", text), ("list", [text, ...]), ("table", header, rows),
    ("figure", name, caption), ("code", text).
    """

    title: str
    sections: list[tuple[str, str, str, list[tuple]]]  # (id, title, question, blocks)
    figures: dict[str, bytes]
    numbers: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(clean(self.numbers), indent=2, allow_nan=False)

    def to_markdown(self, *, figure_path: Callable[[str], str] = lambda n: f"{n}.png") -> str:
        out = [f"# {self.title}", ""]
        for i, (_, title, question, blocks) in enumerate(self.sections, 1):
            out += [f"## {i}. {title}", "", f"*{question}*", ""]
            for b in blocks:
                if b[0] == "p":
                    out += [b[1], ""]
                elif b[0] == "list":
                    out += [f"- {item}" for item in b[1]] + [""]
                elif b[0] == "code":
                    out += ["```", b[1], "```", ""]
                elif b[0] == "table":
                    header, rows = b[1], b[2]
                    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
                    out += ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
                    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows] + [""]
                elif b[0] == "figure" and b[1] in self.figures:
                    out += [f"![{b[2]}]({figure_path(b[1])})", "", f"*{b[2]}*", ""]
        return "\n".join(out).rstrip() + "\n"

    def to_html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>", "<nav><ol>"]
        body += [f'<li><a href="#{sid}">{e(t)}</a></li>' for sid, t, _, _ in self.sections]
        body.append("</ol></nav>")
        for i, (sid, title, question, blocks) in enumerate(self.sections, 1):
            body.append(
                f'<section id="{sid}"><h2>{i}. {e(title)}</h2><p class="q">{e(question)}</p>'
            )
            for b in blocks:
                if b[0] == "p":
                    body.append(f"<p>{_inline(b[1])}</p>")
                elif b[0] == "list":
                    body.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
                elif b[0] == "code":
                    body.append(f"<pre><code>{e(b[1])}</code></pre>")
                elif b[0] == "table":
                    head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
                    rows = "".join(
                        "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in r) + "</tr>" for r in b[2]
                    )
                    body.append(
                        f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
                    )
                elif b[0] == "figure" and b[1] in self.figures:
                    data = base64.b64encode(self.figures[b[1]]).decode("ascii")
                    body.append(f'<figure><img alt="{e(b[2])}" src="data:image/png;base64,{data}">'
                                f"<figcaption>{e(b[2])}</figcaption></figure>")  # fmt: skip
            body.append("</section>")
        return _HTML.format(title=e(self.title), css=_CSS, body="\n".join(body))


def _inline(text: str) -> str:
    """HTML-escape, then render `code` spans (the only markup report text uses)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #eee}
p.q{color:#555;font-style:italic}table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
.tw{overflow-x:auto}figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}code,pre{background:#f6f6f6;border-radius:3px;padding:1px 4px;font-size:.92em}
pre{padding:.6em;overflow-x:auto}nav ol{columns:2}
""".strip()
_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""


def _figures(an: Analysis) -> dict[str, bytes]:
    """Every figure as PNG bytes, keyed by file stem; a figure that fails is left out and noted."""
    from analysis import plots

    figs: dict[str, bytes] = {}

    def make(name: str, fn: Callable[[], Any]) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figs[name] = plots.to_png(fn())
        except Exception as err:  # a figure is not worth losing the report over; say so
            an.numbers["errors"].append(
                {"section": f"figure {name}", "error": f"{type(err).__name__}: {err}"}
            )

    if an.figdata.get("loss"):
        make("loss_vs_data", lambda: plots.plot_loss_vs_data(an.figdata["loss"]))
    if an.figdata.get("compute") and an.points["epochs"].nunique() >= 2:
        xl = ("training compute (FLOPs, log scale)" if an.figdata.get("compute_x") == "flops"
              else "examples seen (dataset size x epochs, log scale)")  # fmt: skip
        make("loss_vs_compute", lambda: plots.plot_compute(an.figdata["compute"], x_label=xl))
    eff = an.figdata.get("effective")
    if eff:
        make("effective_data", lambda: plots.plot_effective_data(eff["rows"], curve=eff["curve"]))
    lr = an.figdata.get("lr")
    if lr and len(lr["trials"]):
        rng = an.numbers.get("lr", {}).get("searched_range")
        rng_t = tuple(rng) if rng and all(v is not None for v in rng) else None
        make("lr_sensitivity", lambda: plots.plot_lr_sensitivity(lr["trials"], lr_range=rng_t))
    if lr and lr["best"] is not None and lr["best"]["lr_best"].notna().any():
        make("lr_rule", lambda: plots.plot_lr_rule(lr["best"], lr["curves"], lr["predictions"]))
    em = an.figdata.get("emergence")
    if em and em["series"] and em["metrics"]:
        make("emergence", lambda: plots.plot_emergence(em["series"], em["metrics"]))
    return figs


def _fit_table(fit: Mapping[str, Any], level: float) -> tuple[list[str], list[list[str]]]:
    rows = []
    for k, v in fit["params"].items():
        ci = fit["ci"].get(k)
        rows.append(
            [k, _g(v, 4), _ci(*ci) if ci else ("fixed" if k in fit.get("fixed", {}) else "n/a")]
        )
    return ["parameter", "value", f"{level:.0%} CI"], rows


def _blocks_study(an: Analysis) -> list[tuple]:
    N = an.numbers.get("study", {})
    if not N.get("spec"):
        return [("p", N.get("reason", "no study information"))]
    s, t, c, o = N["spec"], N["trials"], N["compute"], N["optuna"]
    task = s["task"]
    if isinstance(task, dict):
        task = ", ".join(f"{k}={v}" for k, v in task.items() if v is not None)
    rng = s.get("learning_rate_range")
    rows = [
        ["study", _g(s["name"])], ["model", _g(s["model"])], ["task", _g(task)],
        ["dataset sizes (D)", ", ".join(_d(v) for v in s["dataset_sizes"]) or "n/a"],
        ["epochs", ", ".join(map(str, s["epochs"] or [])) or "n/a"], ["LoRA rank", _g(s["lora_r"])],
        ["learning-rate range", f"{_g(rng[0])} .. {_g(rng[1])} (log)" if rng else "n/a"],
        ["LR trials per cell", _g(s["trials_per_cell"])], ["repeat seeds of the best config", _g(s["repeat_seeds"])],
        ["sampler", _g(", ".join(f"{k}={v}" for k, v in (s["sampler"] or {}).items()) or None)],
        ["early stopping", _g(s["early_stopping"])], ["planned trials", _g(s["planned_trials"])],
    ]  # fmt: skip
    blocks: list[tuple] = [("table", ["setting", "value"], rows)]
    blocks.append(("p", f"Trials run: {t['total']} ({t['ok']} completed, {t['failed']} failed, {t['pruned']} pruned), "
                   f"{t['rows']} evaluation rows. Selection of every config below reads the validation split only; "
                   "every reported number is on the test split."))  # fmt: skip
    if N["failed_trials"]:
        shown = N["failed_trials"][:20]
        blocks.append(("table", ["failed trial", "cell", "learning rate", "error"],
                       [[f["trial_id"], _g(f["cell"]), _g(f["learning_rate"]), f["error"][:300]] for f in shown]))  # fmt: skip
        if len(N["failed_trials"]) > 20:
            blocks.append(
                (
                    "p",
                    f"... and {len(N['failed_trials']) - 20} more failed trials (all in report.json).",
                )
            )
    hours = _f(c["trial_seconds_total"]) / 3600
    if math.isfinite(_f(c["train_flops_total"])) or math.isfinite(hours):
        blocks.append(("p", f"Compute spent: {_g(c['train_flops_total'])} training FLOPs over "
                       f"{_g(c['trial_seconds_total'])} trial-seconds ({_g(hours)} trial-hours); "
                       f"{_g(c['elapsed_seconds'])} s from the first to the last recorded trial. Measured throughput "
                       f"{_g(c['flops_per_second'])} FLOPs/s per trial and {_g(c['flops_per_example'])} FLOPs per "
                       "training example seen."))  # fmt: skip
    else:
        blocks.append(
            (
                "p",
                "Compute spent: no trial recorded training FLOPs or wall time (none reached an evaluation).",
            )
        )
    if o["url"]:
        blocks.append(("p", f"Optuna storage: `{o['url']}`, one Optuna study per cell named `{o['study_names']}` "
                       f"(LR parameter `{o['lr_param']}`). Browse it with:"))  # fmt: skip
        blocks.append(("code", o["dashboard_command"]))
    return blocks


def _blocks_data(an: Analysis) -> list[tuple]:
    N = an.numbers.get("data", {})
    if N.get("reason"):
        return [("p", f"Not computed: {N['reason']}.")]
    blocks: list[tuple] = [("p", "Each point is the final test loss of the config chosen on validation in one cell (with "
                            "its repeat seeds). The law L(D) = E + A·D^-alpha is fitted per epochs setting by a robust "
                            f"(Huber) fit in log space; intervals are {an.level:.0%} bootstrap percentiles over "
                            f"{an.bootstrap} resamples of the points.")]  # fmt: skip
    rows = []
    for s in N.get("series", []):
        if "exponent" not in s:
            rows.append([s["label"], "n/a", "n/a", "n/a", "n/a", "-"])
            continue
        ex, fl, x = s["exponent"], s["floor"], s["extrapolation"]
        h = s["holdout"]
        rows.append([s["label"], _g(ex["alpha"]), _ci(*ex["ci"]), f"{_g(fl['E'])} {_ci(*fl['ci'])}",
                     f"{_g(x['loss'])} {_ci(x['lo'], x['hi'])}", _pct(h.get("mape")) if "mape" in h else h.get("reason", "")])  # fmt: skip
    blocks.append(("table", ["series", "exponent alpha", f"{an.level:.0%} CI", "floor E [CI]",
                             f"loss at {EXTRAPOLATE:g}x the largest D [CI]", "hold-out error"], rows))  # fmt: skip
    blocks.append(("figure", "loss_vs_data", "Test loss vs dataset size (log-log): measured points (hollow: mean over "
                   "seeds), fitted power law (solid), extrapolation (dashed), bootstrap band, prediction at 10x the "
                   "largest size (diamond) and the hold-out prediction (x)."))  # fmt: skip
    items = []
    for s in N.get("series", []):
        if "exponent" not in s:
            items.append(f"{s['label']}: no law: {s.get('reason', '')}.")
            continue
        x, g, h = s["extrapolation"], s["gain_2x"], s["holdout"]
        items.append(f"{s['label']}: loss falls as D^-{_g(s['exponent']['alpha'])} (CI {_ci(*s['exponent']['ci'])}) "
                     f"towards a floor of {_g(s['floor']['E'])}. {EXTRAPOLATE:g}x more data (D={_d(x['dataset_size'])}) "
                     f"is predicted to give test loss {_g(x['loss'])} {_ci(x['lo'], x['hi'])}; doubling D from "
                     f"{_d(g['from'])} gains {_g(g['gain'])} {_ci(g['lo'], g['hi'])} against a {g['noise_kind']} of "
                     f"{_g(g['noise'])}.")  # fmt: skip
        if "mape" in h:
            items.append(f"{s['label']}: hold-out check: fitted on D={', '.join(_d(v) for v in h['train_sizes'])}, the law "
                         f"predicts {_g(h['predicted'])} at D={_d(h['test_size'])} where {_g(h['observed'])} was measured "
                         f"({_pct(h['mape'])} error).")  # fmt: skip
        else:
            items.append(f"{s['label']}: no hold-out check: {h.get('reason', '')}.")
        for w in s["fit"].get("warnings", []):
            items.append(f"{s['label']}: fit warning: {w}")
    blocks.append(("list", items))
    return blocks


def _blocks_epochs(an: Analysis) -> list[tuple]:
    N = an.numbers.get("epochs", {})
    blocks: list[tuple] = []
    if N.get("reason"):
        blocks.append(("p", f"Not computed: {N['reason']}."))
    for dc in N.get("data_constrained", []):
        if dc.get("reason"):
            blocks.append(
                ("p", f"Data-constrained law ({dc['label']}): not fitted: {dc['reason']}.")
            )
            continue
        r = dc["R_D_star"]
        blocks.append(("p", "The data-constrained law of Muennighoff et al. (2023) treats E passes over D examples as "
                       "D' = D·(1 + R*·(1 - exp(-(E-1)/R*))) fresh examples: R* is the number of repeats after which "
                       "repeated data has lost 1 - 1/e of its value. Fitted on the test loss of all epochs settings "
                       "at once (the base model is fixed, so its parameter term folds into E): "
                       f"R* = {_g(r['value'])} {_ci(*r['ci'])}, beta = {_g(dc['beta']['value'])} {_ci(*dc['beta']['ci'])}."))  # fmt: skip
        rows = [[str(e["epochs"]), _g(e["multiplier"]), _ci(e["lo"], e["hi"]),
                 _pct(e["repeat_worth"]) if e["repeat_worth"] is not None else "-",
                 _pct(e["last_epoch_worth"]) if e["last_epoch_worth"] is not None else "-",
                 "yes" if e["studied"] else "no"] for e in dc["effective_data"]]  # fmt: skip
        blocks.append(("table", ["epochs", "effective data D'/D", f"{an.level:.0%} CI", "worth of a repeat (avg)",
                                 "worth of the last epoch", "studied"], rows))  # fmt: skip
        items = [f"{e['epochs']} epochs over D examples are worth {_g(e['multiplier'])}x D fresh examples "
                 f"{_ci(e['lo'], e['hi'])}: each repeated pass is worth {_pct(e['repeat_worth'])} of a fresh one."
                 for e in dc["effective_data"] if e["epochs"] > 1]  # fmt: skip
        blocks.append(("list", items))
        for w in dc["fit"].get("warnings", []):
            blocks.append(("p", f"Fit warning: {w}"))
    if an.figdata.get("effective"):
        blocks.append(("figure", "effective_data", "Effective data D'/D against epochs (data-constrained law, band: "
                       "bootstrap interval of R*); dotted: repeats as good as fresh data; dash-dot: repeats worthless."))  # fmt: skip
    for ec in N.get("equal_compute", []):
        if ec.get("reason"):
            blocks.append(("p", f"Equal-compute comparison: {ec['reason']}."))
            continue
        opts = "; ".join(f"{o['epochs']} epoch(s) over D={_d(o['dataset_size'])}: {_g(o['loss'], 4)} "
                         f"[{_g(o['lo'], 4)}, {_g(o['hi'], 4)}]"
                         for o in ec["options"])  # fmt: skip
        rank = (
            f" (r={_g(ec['lora_r'])})"
            if ec.get("lora_r") is not None and "lora_r" in an.series_cols
            else ""
        )
        verdict = (f"{ec['best_epochs']} epoch(s) is the better spend" + ("" if ec["clear"] else
                   ", though the intervals overlap"))  # fmt: skip
        blocks.append(("p", f"At equal compute{rank}, {_d(ec['examples_seen'])} training examples seen (the largest "
                       f"budget every setting covers without extrapolating), the fitted laws predict test loss: {opts}: "
                       f"{verdict}. When fresh data is limited, `scaling plan RUN_DIR --budget FLOPS --max-data N` "
                       "weighs the two."))  # fmt: skip
    blocks.append(("figure", "loss_vs_compute", "Test loss against training compute, one line per epochs setting: "
                   "at equal compute, the lower line is the better way to spend it."))  # fmt: skip
    if N.get("rank_comparison"):
        rows = []
        for rc in N["rank_comparison"]:
            if rc.get("reason") or "better" not in rc:
                rows.append([str(rc["epochs"]), "n/a", "n/a", rc.get("reason", "a fit failed")])
                continue
            rows.append([str(rc["epochs"]), rc["better"], _g(rc["delta_aic"]),
                         ", ".join(f"{k}: {_g(v)}" for k, v in rc["weights"].items())])  # fmt: skip
        blocks.append(("p", "LoRA rank and data: the multiplicative law L = E + A·r^-alpha·D^-beta (Zhang et al. 2024) "
                       "against the additive L = E + A·r^-alpha + B·D^-beta (Chinchilla form), by AIC (lower is "
                       "better; a difference above 2 is worth noting, above 10 is strong)."))  # fmt: skip
        blocks.append(("table", ["epochs", "better law", "delta AIC", "Akaike weights"], rows))
    elif N.get("rank_comparison_reason"):
        blocks.append(("p", f"Rank comparison: {N['rank_comparison_reason']}."))
    return blocks


def _blocks_lr(an: Analysis) -> list[tuple]:
    N = an.numbers.get("lr", {})
    blocks: list[tuple] = []
    if N.get("reason"):
        blocks.append(("p", f"Not computed: {N['reason']}."))
    if N.get("cells"):
        head = [*(["D", "epochs", "r"] if "lora_r" in an.by else ["D", "epochs"]), "best LR", f"{an.level:.0%} interval",
                "val loss", "spread over LRs", "trials (failed)", "method", "at edge"]  # fmt: skip
        rows = []
        for c in N["cells"]:
            axes = [_d(c["dataset_size"]), _g(c["epochs"])] + (
                [_g(c["lora_r"])] if "lora_r" in an.by else []
            )
            rows.append([*axes, _g(c["lr_best"]), _ci(c["lr_low"], c["lr_high"]), _g(c["val_loss_best"], 4),
                         _g(c["val_loss_spread"]), f"{c['n_trials']} ({c['n_failed']})", c["method"],
                         c["edge"] or "-"])  # fmt: skip
        blocks.append(("p", f"Best LR per cell from the final {SELECT} of its trials: the vertex of a quadratic in "
                       "log LR around the best trial, with a bootstrap interval (or the neighbouring searched LRs). "
                       "'spread' is how much worse the worst searched LR was: how much the LR matters there."))  # fmt: skip
        blocks.append(("table", head, rows))
        blocks.append(("figure", "lr_sensitivity", "Validation loss against learning rate per cell: one panel per "
                       "epochs setting, one line per dataset size; star: the chosen trial."))  # fmt: skip
    for e in N.get("edges", []):
        blocks.append(("p", f"Warning: at D={_d(e['dataset_size'])}, epochs={e['epochs']} the best LR {_g(e['lr_best'])} is "
                       f"{e['advice']}."))  # fmt: skip
    rule = N.get("rule")
    if rule:
        p, ci = rule["params"], rule["ci"]
        text = (f"LR rule (least squares over {rule['n_cells']} cells, edge cells left out): log lr* = {_g(p['c'])} "
                f"+ {_g(p['p'])}·log D" + (f" + {_g(p['q'])}·log epochs" if "q" in rule["terms"] else "")
                + f", i.e. lr* ∝ {rule['lr_proportional_to']}; p {_ci(*ci['p'])}"
                + (f", q {_ci(*ci['q'])}" if "q" in rule["terms"] else "") + ".")  # fmt: skip
        blocks.append(("p", text))
        rows = [[str(int(x["epochs"])), f"{x['factor']:g}x", _d(x["dataset_size"]), _g(x["lr"]), _ci(x["lo"], x["hi"])]
                for x in N["predictions"]]  # fmt: skip
        blocks.append(("table", ["epochs", "D multiple", "D", "predicted best LR", f"{an.level:.0%} prediction interval"],
                       rows))  # fmt: skip
        blocks.append(("figure", "lr_rule", "Best LR per cell (bars: interval; hollow: at the searched edge) and the "
                       "fitted LR rule with its prediction band; diamonds: predictions for unseen sizes."))  # fmt: skip
    elif N.get("rule_reason"):
        blocks.append(("p", f"No LR rule: {N['rule_reason']}."))
    imp = N.get("importance") or {}
    if imp.get("importances"):
        parts = ", ".join(f"{k} {_pct(v)}" for k, v in imp["importances"].items())
        blocks.append(
            (
                "p",
                f"Parameter importances for {SELECT} ({imp['evaluator']}): {parts}. How: {imp['how']}.",
            )
        )
    elif imp:
        blocks.append(
            (
                "p",
                f"Parameter importances: not computed: {imp.get('reason', '')}. ({imp.get('how', '')})",
            )
        )
    return blocks


def _blocks_emergence(an: Analysis) -> list[tuple]:
    N = an.numbers.get("emergence", {})
    blocks: list[tuple] = []
    if N.get("reason"):
        blocks.append(("p", f"Not computed: {N['reason']}."))
    if N.get("series"):
        blocks.append(("p", "Each discontinuous metric is tested for a sudden jump against dataset size (a sigmoid in "
                       "log D against a straight line, by BIC), then checked against the continuous metrics measured "
                       "on the same trials (Schaeffer et al. 2023): a jump that the continuous metrics do not share "
                       "is an artefact of the all-or-nothing metric. Test split, config chosen on validation, mean "
                       "over its seeds."))  # fmt: skip
        rows = []
        for e in N["series"]:
            iv = f"D={_d(e['interval'][0])} .. {_d(e['interval'][1])}" if e["interval"] else "-"
            cont = ", ".join(f"{k}: {v}" for k, v in e["continuous"].items()) or "none measured"
            rows.append([e["label"], e["metric"], e["verdict"], iv, cont, e["mirage"]])
        blocks.append(
            (
                "table",
                ["series", "metric", "jump verdict", "where", "continuous metrics", "verdict"],
                rows,
            )
        )
        blocks.append(("list", [f"{e['label']}, {e['metric']}: {e['mirage']}: {e['plain']}. ({e['reason']})"
                                for e in N["series"]]))  # fmt: skip
        blocks.append(("figure", "emergence", "Test metrics against dataset size, one line per epochs setting; shaded: "
                       "the interval of a detected jump."))  # fmt: skip
    return blocks


def build_report(source: str | Path | pd.DataFrame | Analysis, *, bootstrap: int = BOOTSTRAP, seed: int = 0,
                 level: float = LEVEL) -> Report:  # fmt: skip
    """Analyse (unless given an Analysis) and lay out the report: sections, figures, numbers."""
    an = (
        source
        if isinstance(source, Analysis)
        else analyse(source, bootstrap=bootstrap, seed=seed, level=level)
    )
    figs = _figures(an)
    makers = {"study": _blocks_study, "data": _blocks_data, "epochs": _blocks_epochs, "lr": _blocks_lr,
              "emergence": _blocks_emergence,
              "recommendations": lambda a: [("list", [r["text"] for r in a.numbers.get("recommendations", [])])]}  # fmt: skip
    sections = []
    for sid in SECTIONS:
        title, question = _TITLES[sid]
        try:
            blocks = makers[sid](an)
        except Exception as err:  # layout must not lose the report either
            an.numbers["errors"].append(
                {"section": f"layout {sid}", "error": f"{type(err).__name__}: {err}"}
            )
            blocks = [("p", f"This section could not be laid out: {type(err).__name__}: {err}")]
        reason = (
            an.numbers.get(sid, {}).get("reason") if isinstance(an.numbers.get(sid), dict) else None
        )
        if (
            reason
            and reason.startswith("this section could not")
            and not any(reason in str(b) for b in blocks)
        ):
            blocks.insert(0, ("p", reason))
        warns = (
            an.numbers.get(sid, {}).get("warnings", [])
            if isinstance(an.numbers.get(sid), dict)
            else []
        )
        if warns:
            blocks.append(("list", [f"warning: {w}" for w in warns]))
        sections.append(
            (f"s-{sid}", title, question, [b for b in blocks if b[0] != "figure" or b[1] in figs])
        )
    if an.numbers["errors"]:
        sections[-1][3].append(
            ("list", [f"error in {e['section']}: {e['error']}" for e in an.numbers["errors"]])
        )
    name = (an.numbers.get("study", {}).get("spec") or {}).get("name") or (
        an.run_dir.name if an.run_dir else "study"
    )
    an.numbers["figures"] = {k: f"{k}.png" for k in figs}
    return Report(
        title=f"Scaling report: {name}", sections=sections, figures=figs, numbers=an.numbers
    )


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    json: Path
    figures: tuple[Path, ...]


def write_report(run_dir: str | Path, *, out: str | Path | None = None, bootstrap: int = BOOTSTRAP, seed: int = 0,
                 level: float = LEVEL) -> ReportPaths:  # fmt: skip
    """Write report.html, report.md (+ PNGs beside it) and report.json to ``out`` [run_dir/report]."""
    run_dir = Path(run_dir)
    rep = build_report(run_dir, bootstrap=bootstrap, seed=seed, level=level)
    out_dir = (
        Path(out)
        if out is not None
        else (run_dir if run_dir.is_dir() else run_dir.parent) / "report"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = []
    for name, png in rep.figures.items():
        p = out_dir / f"{name}.png"
        p.write_bytes(png)
        figs.append(p)
    paths = ReportPaths(html=out_dir / "report.html", markdown=out_dir / "report.md", json=out_dir / "report.json",
                        figures=tuple(figs))  # fmt: skip
    for path, text in (
        (paths.json, rep.to_json()),
        (paths.markdown, rep.to_markdown()),
        (paths.html, rep.to_html()),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths
