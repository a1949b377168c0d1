"""What every `scaling` command module shares: the Typer app, the consoles and the error exit.

scaling/cli.py defines most commands on `app`; scaling/cli_status.py adds `scaling status`;
both import from here, so neither imports the other's module back.
"""

from __future__ import annotations

import math
from typing import Any

import typer
from rich.console import Console

__all__ = ["_fail", "_fmt", "app", "console", "err_console"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Scaling studies for LoRA fine-tunes.")
# a path or a summary line is never broken mid-way (copyable, greppable); tables still fit the width
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _fail(msg: str, code: int = 2) -> None:
    """Print one ``error:`` line (no traceback) and exit with ``code`` (2: bad input)."""
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fmt(v: Any) -> str:
    """A number for a table cell: 4 significant digits, "-" for a missing one."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
