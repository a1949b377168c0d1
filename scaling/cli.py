"""The `scaling` command: a thin layer that parses, calls the library and prints.

Exit codes: 0 done, 1 the work itself failed, 2 bad input (spec, table, arguments).
Heavy imports (ray, torch) happen inside the commands that need them so that
`scaling validate` and the analysis commands start quickly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from scaling.cli_common import _fail, _fmt, app, console

__all__ = ["app"]


def _load(spec_path: Path):  # -> StudySpec
    from scaling.spec import SpecError, load_spec
    from scaling.tasks import TaskError, make_task

    try:
        s = load_spec(spec_path)
    except SpecError as err:
        _fail(str(err))
    # the task's data, checked here rather than as a failed row in every trial
    try:
        task = make_task(kind=s.task.kind, digits=s.task.digits, path=s.task.path, seed=s.task.seed,
                         validation_size=s.eval.validation_size, test_size=s.eval.test_size,
                         split=s.task.split)  # fmt: skip
    except (TaskError, ValueError) as err:
        _fail(f"{spec_path}: task: {err}")
    most = max(s.axes.dataset_sizes())
    if task.max_train_size is not None and most > task.max_train_size:
        _fail(f"{spec_path}: axes.dataset_size: must be <= the {task.max_train_size} training examples of "
              f"task {task.name!r} (after eval.validation_size + eval.test_size) (got {most})")  # fmt: skip
    return s


def _warn_data(s) -> None:
    """The data's warnings (duplicates across splits, examples train.max_length truncates)."""
    from scaling.task_check import task_warnings
    from scaling.tasks import TaskError

    try:
        for w in task_warnings(s):
            console.print(f"[yellow]warning:[/] {w}", highlight=False)
    except TaskError as err:
        _fail(str(err))


def _table_or_fail(path: Path):
    from scaling.records import read_results
    from scaling.records_io import RecordsError

    try:
        return read_results(path)
    except RecordsError as err:
        _fail(str(err))


# -- running studies -----------------------------------------------------------------
@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="study spec (YAML)")]) -> None:
    """Check a study spec without running it."""
    from scaling.spec import SpecError, redact_url

    s = _load(spec)
    try:  # a ${VAR} in storage.optuna or tracking.mlflow.tracking_uri must be set
        url = s.optuna_url(s.run_dir())
        mlflow_uri = s.mlflow_uri()
    except SpecError as err:
        _fail(str(err))
    from scaling.models import ModelUnavailableError, TargetModulesError, prepare_base_models

    try:  # every base model loadable (a hub id: cached or served), every LoRA target a module of it
        prepare_base_models(s.models(), s.lora.target_modules, source=str(spec),
                            field="axes.model" if s.axes.model is not None else "model")  # fmt: skip
    except (ModelUnavailableError, TargetModulesError) as err:
        _fail(str(err))
    _warn_data(s)
    on = [n for n in ("mlflow", "tensorboard", "wandb") if getattr(s.tracking, n)]
    cells = s.cells()
    b = s.budget
    plan = (f"{len(cells)} cells x {s.trials_per_cell} LR trials (+{s.seeds.repeat_best} seeds) = {s.planned_trials()} trials"
            + (f" (up to {s.max_trials()} with sampler.extra_trials for unbracketed cells)" if s.sampler.extra_trials else "")
            if b is None else  # sampler.mode optimize
            f"one Optuna study (sampler.mode optimize, objective {s.sampler.objective}) under a budget of {b.total():g} "
            f"{'training FLOPs' if b.flops is not None else 'trial-hours'}, at most {b.max_trial_share:g} of it per trial")  # fmt: skip
    console.print(
        f"[green]ok[/] {spec}: study '{s.name}', {plan}; "
        f"D={list(s.axes.dataset_sizes())}, epochs={list(s.axes.epoch_values())}, "
        f"lr=[{s.learning_rate.low:g}, {s.learning_rate.high:g}]; Optuna storage {redact_url(url)}"
        + (f"; tracking: {', '.join(on)}" + (f" (MLflow {redact_url(mlflow_uri)})" if mlflow_uri else "") if on else "")
    )


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="study spec (YAML)")],
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<name>)")] = None,
    max_trials: Annotated[int | None, typer.Option(help="stop after this many trials (resume later)")] = None,
    resume: Annotated[bool, typer.Option(help="continue a study already in the run directory")] = True,
    adapters_per_worker: Annotated[int | None, typer.Option(
        help="train this many of a cell's trials at once on one base per worker (overrides the "
             "spec's packing; worth it on GPUs; results are the same)")] = None,
) -> None:
    """Run a study (resuming it when its run directory already holds one)."""
    from scaling.records import RunLocked, check_run_dir
    from scaling.records_io import RecordsError
    from scaling.spec import SpecError, redact_url

    if max_trials is not None and max_trials < 1:
        _fail(f"--max-trials: must be >= 1 (got {max_trials})")
    s = _load(spec)
    if adapters_per_worker is not None:
        from scaling.spec import with_packing

        try:
            s = with_packing(s, adapters_per_worker)
        except SpecError as err:
            _fail(str(err))
    run_dir = s.run_dir(out)
    try:  # an --out that is a file, a damaged spec copy or results table: refused before anything is written
        check_run_dir(run_dir)
        s.optuna_url(run_dir)  # a ${VAR} in storage.optuna must be set
        s.mlflow_uri()  # and in tracking.mlflow.tracking_uri
    except (RecordsError, SpecError) as err:
        _fail(str(err))
    if not resume and (run_dir / "spec.yaml").exists():
        _fail(f"{run_dir}: already holds a study; pass --resume or choose another --out")
    _warn_data(s)
    from scaling.cli_progress import SweepProgress
    from scaling.sweep import run_sweep

    progress = SweepProgress(console, s.name)
    try:
        res = run_sweep(s, out=out, max_trials=max_trials, on_start=progress.on_start,
                        on_trial_done=progress.on_done, on_epoch=progress.on_epoch)  # fmt: skip
    except (RunLocked, RecordsError) as err:
        _fail(str(err))
    except SpecError as err:
        _fail(str(err))
    finally:
        progress.stop()
    c = res.counts
    console.print(
        f"ran {res.trials_run} trials in {res.wall_seconds:.0f} s: {c['ok']} ok, {c['failed']} failed, "
        f"{c['pruned']} pruned" + (f" ({res.orphans_resumed} resumed from a dead driver)" if res.orphans_resumed else "")
    )
    if res.results.exists():
        _print_cells(res.run_dir)
    console.print("[bold]wrote[/]")
    console.print(f"  results table   {res.results}")
    console.print(f"  study spec      {res.run_dir / 'spec.yaml'}")
    # never the password: a ${VAR} as the user wrote it (the shell expands it), else redacted
    raw = s.storage.optuna
    shown = f'"{raw}"' if raw and "${" in raw else redact_url(res.optuna_url)
    console.print(f"  Optuna storage  {redact_url(res.optuna_url)}   (optuna-dashboard {shown})")
    console.print(f"  Ray Tune state  {res.run_dir / 'ray'}")
    if res.adapters:
        console.print(f"  adapters        {res.run_dir / 'adapters'}  ({len(res.adapters)} cells' selected "
                      f"trials, peft format; `scaling export {res.run_dir}` writes one out)")  # fmt: skip
    if res.all_failed:  # the rows stay (`scaling show` lists them); the exit code says the work failed
        first = " ".join((res.first_error or "no error recorded").split())
        _fail(f"{spec}: all {res.trials_run} trials of this sweep failed; the first: "
              f"{first[:500] + ' ...' if len(first) > 500 else first} (every failed row: `scaling show {res.run_dir}`)",
              code=1)  # fmt: skip


def _searched_range(where: Path):
    """The LR range the run searched (its spec.yaml), or None for a bare table. Reads the spec
    copy only: the caller has the table already."""
    from analysis.lr_edge import search_range
    from scaling.records import _load_spec
    from scaling.records_io import RecordsError

    try:
        raw, _ = _load_spec(where if where.is_dir() else where.parent)
        return search_range(raw)
    except (RecordsError, ValueError):
        return None


def _selection_or_fail(df, where: Path, *, metric: str = "eval_loss", bootstrap: int = 0, lr_range=None):
    """The one selection (analysis.selection): validation picks, per LoRA rank, in the metric's direction."""
    from analysis.selection import select

    try:
        return select(df, metric=metric, bootstrap=bootstrap, lr_range=lr_range)
    except ValueError as err:
        _fail(f"{where}: {err}")


def _print_cells(where: Path, df=None) -> None:
    """The chosen config of every cell of the table at ``where`` (or of ``df``, read from there)."""
    import numpy as np

    from analysis.table import trial_summary

    df = _table_or_fail(where) if df is None else df
    if (df["status"] == "ok").sum() == 0:
        console.print("[yellow]no completed trials yet[/]")
        return
    sel = _selection_or_fail(df, where)
    trials = trial_summary(df)
    ok = trials[trials["status"] == "ok"]
    t = Table(title=f"best learning rate per cell (selected on validation; test metrics shown) — {where}")
    with_n = "model_params_n" in sel.by  # a model axis: one row per (model, D, epochs[, r])
    cols = [*(["model"] if with_n else []), "D", "epochs", *(["r"] if "lora_r" in sel.by else []), "trials", "best lr",
            "val loss", "test loss", "test exact", "worst/best val loss"]  # fmt: skip
    for col in cols:
        t.add_column(col, justify="right")
    for _, b in sel.best.iterrows():
        same = np.ones(len(ok), dtype=bool)
        for c in sel.by:
            same &= (ok[c].astype(float) == float(b[c])).to_numpy()
        cell = ok[same]
        chosen = sel.points[sel.points["trial_id"] == b["trial_id_best"]]
        test_loss = chosen["test_eval_loss"].iloc[0] if len(chosen) and "test_eval_loss" in chosen else float("nan")
        test_em = chosen["test_exact_match"].iloc[0] if len(chosen) and "test_exact_match" in chosen else float("nan")
        spread = cell["val_eval_loss"].max() / cell["val_eval_loss"].min() if len(cell) else float("nan")
        rank = [str(b["lora_r"])] if "lora_r" in sel.by else []
        model = [str(cell["model"].iloc[0]) if len(cell) else str(b["model_params_n"])] if with_n else []
        t.add_row(
            *model, str(b["dataset_size"]), str(b["epochs"]), *rank, str(b["n_trials"]), f"{b['lr_best']:.2e}",
            _fmt(b["metric_best"]), _fmt(float(test_loss)), _fmt(float(test_em)), _fmt(float(spread)),
        )  # fmt: skip
    console.print(t)


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="run directory or results.parquet")]) -> None:
    """Print the best learning rate and loss per cell of a run."""
    df = _table_or_fail(run_dir)
    counts = df.drop_duplicates("trial_id")["status"].value_counts().to_dict()
    console.print(f"{run_dir}: {df['trial_id'].nunique()} trials ({counts}), {len(df)} rows")
    _print_cells(run_dir, df)
    failed = df[df["status"] == "failed"].drop_duplicates("trial_id")
    for _, r in failed.head(10).iterrows():
        console.print(f"[red]failed[/] {r['trial_id']}: {r['error']}")


# -- analysis ----------------------------------------------------------------------
def _read_any(path: Path):
    import pandas as pd

    if not path.exists():
        _fail(f"{path}: file does not exist")
    if path.is_dir():
        return _table_or_fail(path)
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:
        _fail(f"{path}: cannot read the table: {type(err).__name__}: {err}")


def _is_run_table(df) -> bool:
    """A results table a sweep wrote (one row per evaluation), as opposed to a plain (x, y) table."""
    from analysis.table import SELECT

    return all(c in df.columns for c in ("trial_id", "status", "learning_rate", SELECT))


@app.command()
def fit(
    table: Annotated[Path, typer.Argument(help="run directory, results table, or a plain CSV/Parquet (x, y) table")],
    law: Annotated[str, typer.Option(help="auto (chosen by leave-largest-out error; one x column) | power | "
                                          "power_nofloor | rectified | chinchilla | data_constrained | bnsl | "
                                          "multiplicative")] = "power",
    x: Annotated[str, typer.Option(help="input column(s), comma separated")] = "dataset_size",
    y: Annotated[str, typer.Option(help="output column")] = "test_eval_loss",
    epochs: Annotated[int | None, typer.Option(help="on a run: fit only this epochs setting (as the report does)")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for CIs")] = 0,
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """Fit a scaling law to a table; on a run, to the test points of the configs chosen on validation."""
    from analysis.fit import FitError, fit_law

    df = _read_any(table)
    if _is_run_table(df):
        if y not in df.columns:
            _fail(f"{table}: column {y!r} not found (has {list(df.columns)})")
        df = _selection_or_fail(df, table).points
        if epochs is not None:
            df = df[df["epochs"] == float(epochs)]
            if df.empty:
                _fail(f"{table}: --epochs {epochs}: no chosen config has epochs={epochs}")
    cols = [c.strip() for c in x.split(",") if c.strip()]
    try:
        f = fit_law(law=law, data=df, x=cols if len(cols) > 1 else cols[0], y=y, bootstrap=bootstrap, seed=seed)
    except FitError as err:
        _fail(f"{table}: {err}")
    d = f.to_dict()
    if as_json:
        keys = ("law", "params", "ci", "metrics", "param_status", "param_text", "selection")
        typer.echo(json.dumps({k: d[k] for k in keys}, default=float))
        return
    sel = d.get("selection")
    if sel:
        console.print(f"[bold]law chosen:[/] {d['law']} (leave-largest-out: fitted below x={_fmt(sel.get('split_at'))}, "
                      f"{sel.get('n_test')} point(s) held out)")  # fmt: skip
        for name, c in (sel.get("candidates") or {}).items():
            err = c.get("holdout_error")
            console.print(f"  {name}: held-out error {_fmt(err) if err is not None else 'n/a'}"
                          + ("" if c.get("eligible") else " (ineligible)") + (f"; {c['note']}" if c.get("note") else ""))  # fmt: skip
    t = Table(title=f"{d['law']} fit of {y} on {', '.join(cols)} ({table})")
    t.add_column("parameter")
    t.add_column("value", justify="right")
    t.add_column("90% CI", justify="right")
    for k, v in d["params"].items():
        ci = d["ci"].get(k)
        if d.get("param_status", {}).get(k, "estimated") in ("lower_bound", "upper_bound"):
            t.add_row(k, d["param_text"][k], "-")  # on its bound: a one-sided bound, never a point
            continue
        t.add_row(k, _fmt(v), f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "-")
    console.print(t)
    console.print("  ".join(f"{k}={_fmt(v)}" for k, v in d["metrics"].items()))
    for w in d.get("warnings", []):
        console.print(f"[yellow]warning:[/] {w}")


@app.command("best-lr")
def best_lr_cmd(
    run_dir: Annotated[Path, typer.Argument(help="run directory or results table")],
    metric: Annotated[str, typer.Option(help="validation metric; losses are minimised, exact_match, "
                                              "token_accuracy and answer_logprob maximised")] = "eval_loss",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Best learning rate per (dataset size, epochs[, LoRA rank]) cell and the fitted LR rule."""
    from analysis.lr_cell import BOOTSTRAP
    from analysis.lr_trend import lr_rule

    df = _read_any(run_dir)
    sel = _selection_or_fail(df, run_dir, metric=metric, bootstrap=BOOTSTRAP, lr_range=_searched_range(run_dir))
    best = sel.best
    rule, rule_reason = None, None
    try:  # a rule from too few bracketed cells is refused (no interval): say why, keep the cells
        rule = lr_rule(best)
    except ValueError as err:  # LRRuleError and too few distinct cells: no rule, and why
        rule_reason = str(err)
    if as_json:
        out = {"metric": metric, "mode": sel.mode, "cells": json.loads(best.to_json(orient="records")),
               "rule": rule.to_dict() if rule else None, "rule_reason": rule_reason}  # fmt: skip
        typer.echo(json.dumps(out, default=float))
        return
    t = Table(title=f"best learning rate per cell ({metric}, validation split, {sel.mode}imised)")
    with_n = "model_params_n" in sel.by  # a model axis: its N per row
    cols = [*(["N"] if with_n else []), "D", "epochs", *(["r"] if "lora_r" in sel.by else []), "lr*", "interval",
            metric, "trials", "edge"]  # fmt: skip
    for c in cols:
        t.add_column(c, justify="right")
    for _, b in best.iterrows():
        rank = [str(b["lora_r"])] if "lora_r" in sel.by else []
        t.add_row(
            *([str(int(b["model_params_n"]))] if with_n else []), str(b["dataset_size"]), str(b["epochs"]), *rank, f"{b['lr_best']:.2e}",
            f"[{_fmt(b['lr_low'])}, {_fmt(b['lr_high'])}]", _fmt(b["metric_best"]), str(b["n_trials"]),
            str(b.get("edge_kind") or b["edge"] or "") if b["at_edge"] else "",
        )  # fmt: skip
    console.print(t)
    for _, b in best[best["at_edge"]].iterrows():
        console.print(f"[yellow]D={b['dataset_size']} epochs={b['epochs']}:[/] {b['advice']}")
    if rule is not None:
        lvl = int(round(100 * rule.level))
        terms = ", ".join(f"{k} = {rule.params_[k]:.3f} [{rule.ci_[k][0]:.3f}, {rule.ci_[k][1]:.3f}]"
                          for k in rule.terms_)  # fmt: skip
        console.print(f"LR rule: {rule.to_dict()['form']}; {terms} ({lvl}% intervals)")
    else:
        console.print(f"LR rule: none fitted: {rule_reason or 'no cells'}")


@app.command()
def emergence(
    table: Annotated[Path, typer.Argument(help="CSV or Parquet table, or a run directory")],
    x: Annotated[str, typer.Option(help="x column")] = "dataset_size",
    y: Annotated[str, typer.Option(help="metric column")] = "test_exact_match",
    seed: Annotated[int, typer.Option(help="seed of the seed resamples (as `scaling report --seed`)")] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Is there a sudden jump in a metric? On a run: per series, on the configs chosen on validation
    (mean over their seeds), with the report's check (analysis.findings.emergence.series_check):
    [0, 1] bounds for exact match and token accuracy, binomial errors from the spec's evaluation
    size, the continuous-metric check and, where some size has several seeds, the verdict across
    seed resamples. On a plain table: its rows (mean over repeated x), with [0, 1] bounds for a
    known bounded metric and binomial errors from an n_problems column when it has one."""
    import pandas as pd

    from analysis.findings.emergence import eval_size, measured, metric_bounds, series_check
    from analysis.jumps import binomial_se, detect_jumps
    from analysis.selection import higher_is_better, series, series_points
    from scaling.records import read_run
    from scaling.records_io import RecordsError

    df = _read_any(table)
    for col in (x, y):
        if col not in df.columns:
            _fail(f"{table}: column {col!r} not found (has {list(df.columns)})")
    out: dict[str, Any] = {"x": x, "y": y, "series": []}
    if _is_run_table(df):
        try:
            spec = read_run(table).spec  # the evaluation size is the spec's
        except RecordsError as err:
            _fail(str(err))
        sel = _selection_or_fail(df, table)
        split, metric = y.split("_", 1) if y.startswith(("val_", "test_")) else ("test", y)
        disc, cont = measured(sel.points, split)
        is_disc = metric in disc  # a discontinuous metric gets the mirage check, as in the report
        n_problems = eval_size(spec, split)
        for s in series(sel.points, sel.series_cols):
            pts = series_points(sel.points, s["key"])
            g = pts.groupby(x)[y].mean().dropna()
            try:
                res, seeded = series_check(pts, x, metric=metric, continuous=cont if is_disc else (), split=split,
                                           n_problems=n_problems, seed=seed, across_seeds=is_disc)  # fmt: skip
            except ValueError as err:
                _fail(f"{table}: {s['label']}: {err}")
            entry: dict[str, Any] = {"label": s["label"], "points": {"x": g.index.tolist(), "y": g.tolist()},
                                     "jump": res.results[metric].to_dict(), "n_problems": n_problems,
                                     "seeds": seeded}  # fmt: skip
            if is_disc:
                entry["mirage"] = res.to_dict()
            out["series"].append(entry)
    else:  # a plain table: its rows are the points (mean over repeated x)
        g = df.groupby(x)[y].mean().dropna()
        bounds = metric_bounds(y)
        se = None
        if bounds == (0.0, 1.0) and "n_problems" in df.columns:
            n = pd.to_numeric(df["n_problems"], errors="coerce").groupby(df[x]).median().reindex(g.index)
            if n.notna().all() and (n >= 1).all() and g.between(0.0, 1.0).all():
                se = binomial_se(g.to_numpy(float), n.to_numpy(float))
        try:
            res = detect_jumps(g.index.to_numpy(float), g.to_numpy(float), higher_is_better=higher_is_better(y),
                               bounds=bounds, se=se)  # fmt: skip
        except ValueError as err:
            _fail(f"{table}: all: {err}")
        out["series"].append({"label": "all", "points": {"x": g.index.tolist(), "y": g.tolist()},
                              "jump": res.to_dict(), "bounds": list(bounds) if bounds else None,
                              "binomial_se": se is not None})  # fmt: skip
    if as_json:
        typer.echo(json.dumps(out, default=float))
        return
    for e in out["series"]:
        console.print(f"{e['label']}: [bold]{e['jump']['verdict']}[/]: {e['jump']['reason']}")
        if "mirage" in e:
            console.print(f"{e['label']}: [bold]{e['mirage']['verdict']}[/]: {e['mirage']['reason']}")


# -- report and plan ---------------------------------------------------------------
@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="run directory (results.parquet + spec.yaml)")],
    out: Annotated[Path | None, typer.Option(help="output directory (default RUN_DIR/report)")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the laws' intervals")] = 200,
    seed: int = 0,
) -> None:
    """Write report.html (self-contained), report.md (+ PNGs) and report.json for a run."""
    from analysis.report import write_report
    from scaling.records import read_run
    from scaling.records_io import RecordsError

    if not run_dir.exists():
        _fail(f"{run_dir}: no such run directory")
    if bootstrap < 0:
        _fail(f"--bootstrap must be >= 0, got {bootstrap}")
    import warnings

    with console.status(f"analysing {run_dir} ..."), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every warning worth reading is in the report itself
        try:
            paths = write_report(read_run(run_dir), out=out, bootstrap=bootstrap, seed=seed)
        except RecordsError as err:
            _fail(str(err))
        except OSError as err:  # an --out that is a file, or not writable
            _fail(f"cannot write the report to {out or run_dir / 'report'}: {err}")
    doc = json.loads(paths.json.read_text())
    for s in doc.get("data", {}).get("series", []):
        ex = s.get("exponent")
        if ex:
            console.print(f"{s['label']}: test loss ∝ D^-{_fmt(ex['alpha'])} (90% CI [{_fmt(ex['ci'][0])}, {_fmt(ex['ci'][1])}])")
    for e in doc.get("emergence", {}).get("series", []):
        console.print(f"{e['label']}: {e['metric']}: {e['mirage']}")
    for err in doc.get("errors", []):
        console.print(f"[yellow]could not compute[/] {err['section']}: {err['error']}")
    console.print("[bold]wrote[/]")
    console.print(f"  HTML      {paths.html}")
    console.print(f"  Markdown  {paths.markdown}  (+ {len(paths.figures)} PNG figures beside it)")
    console.print(f"  JSON      {paths.json}")


@app.command()
def plan(
    run_dir: Annotated[Path, typer.Argument(help="run directory (results.parquet + spec.yaml)")],
    budget: Annotated[float | None, typer.Option("--budget", help="compute budget in training FLOPs")] = None,
    budget_hours: Annotated[float | None, typer.Option("--budget-hours", help="budget in hours of one trial's resources (uses the study's measured FLOPs/s)")] = None,
    max_data: Annotated[int | None, typer.Option("--max-data", help="most unique training examples available")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the intervals")] = 200,
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """Dataset size, epochs and learning rate predicted best for a compute budget."""
    import warnings

    from analysis.plan import PlanError, plan_budget
    from scaling.records import read_run
    from scaling.records_io import RecordsError

    if not run_dir.exists():
        _fail(f"{run_dir}: no such run directory")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = plan_budget(read_run(run_dir), budget_flops=budget, budget_hours=budget_hours, max_dataset_size=max_data,
                            bootstrap=bootstrap, seed=seed)  # fmt: skip
    except (PlanError, RecordsError) as err:
        _fail(f"{run_dir}: {err}")
    if as_json:
        typer.echo(json.dumps(p))
        return
    t = Table(title=f"plan for {_fmt(p['budget_flops'])} FLOPs ({_fmt(p['examples'])} training examples seen) — {run_dir}")
    for col in ("epochs", "dataset size", "examples seen", "predicted test loss", "90% interval", "note"):
        t.add_column(col, justify="right")
    for c in p["candidates"]:
        note = ", ".join(n for n, on in (("capped", c["capped"]), ("extrapolated", c["extrapolation"])) if on)
        t.add_row(str(c["epochs"]), f"{c['dataset_size']:.0f}", f"{c['examples_seen']:.0f}", _fmt(c["predicted_loss"]),
                  f"[{_fmt(c['lo'])}, {_fmt(c['hi'])}]", note)  # fmt: skip
    console.print(t)
    c = p["choice"]
    console.print(f"[bold]plan:[/] {p['headline']}")
    console.print(
        f"[bold]best:[/] D={c['dataset_size']:.0f}, epochs={c['epochs']}, learning rate {_fmt(c['learning_rate'])} "
        f"[{_fmt(c['lr_lo'])}, {_fmt(c['lr_hi'])}] ({c['lr_source']}); predicted test loss {_fmt(c['predicted_loss'])} "
        f"[{_fmt(c['lo'])}, {_fmt(c['hi'])}]"
    )
    dc = p.get("data_constrained")
    if dc:
        console.print(f"data-constrained law: best at epochs={dc['epochs']}, D={dc['dataset_size']:.0f}, "
                      f"loss {_fmt(dc['predicted_loss'])} ({'agrees' if dc['agrees'] else 'differs'})")  # fmt: skip
    for n in p["notes"]:
        console.print(f"[yellow]note:[/] {n}")


import scaling.cli_models  # noqa: E402,F401  (registers `scaling models ...` and `scaling export`)
import scaling.cli_status  # noqa: E402,F401  (registers `scaling status` on the shared app)
