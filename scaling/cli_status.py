"""`scaling status RUN_DIR [--json]` (scaling/status.py does the reading); registered on the
`scaling` app by scaling/cli.py, kept apart to hold cli.py's size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from scaling.cli_common import _fail, _fmt, app, console

__all__: list[str] = []


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="run directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    optuna: Annotated[str | None, typer.Option(
        help="Optuna storage URL (default: what the run's spec.yaml says)")] = None,
) -> None:
    """Where a study stands; safe while its sweep runs (reads only, takes no lock)."""
    from scaling.status import StatusError, run_status

    try:
        st = run_status(run_dir, optuna_url=optuna)
    except StatusError as err:
        _fail(str(err))
    if as_json:
        console.print_json(json.dumps(st))
        return
    c, t = st["cells"], st["trials"]
    console.print(f"study '{st['study']}' in {st['run_dir']} (Optuna {st['optuna'] or 'not created yet'})")
    console.print(f"cells: {c['done']} done, {c['running']} running, {c['waiting']} waiting; trials: {t['ok']} ok, "
                  f"{t['failed']} failed, {t['pruned']} pruned; {_fmt(st['trials_left'])} left")  # fmt: skip
    if st["spooled_rows"]:
        console.print(f"[yellow]{st['spooled_rows']} rows of finished trials wait in {st['spool']}[/] (a stopped sweep "
                      "could not append them; the next `scaling sweep` on this run directory appends them first)")
    if st.get("budget"):  # sampler.mode optimize
        b = st["budget"]
        console.print(f"budget: {_fmt(b['spent'])} of {_fmt(b['total'])} {b['unit']} spent (measured)")
    table = Table("cell", "state", "trials", "best val loss", "at lr")
    for cell in st["per_cell"]:
        best = cell["best"] or {}
        table.add_row(cell["cell"], cell["state"], f"{cell['finished']}/{_fmt(cell['planned'])}",
                      _fmt(best.get("val_eval_loss")), _fmt(best.get("learning_rate")))  # fmt: skip
    console.print(table)
    if st["running"]:
        live = Table("running trial", "lr", "epoch", "val loss", "started")
        for r in st["running"]:
            live.add_row(r["trial_id"], _fmt(r["learning_rate"]), f"{r['epoch']}/{r['epochs']}",
                         _fmt(r["val_eval_loss"]), r["started"] or "-")  # fmt: skip
        console.print(live)
    if st["eta_seconds"] is not None:
        console.print(f"ETA ~{_duration(st['eta_seconds'])} ({st['eta_note']})")
