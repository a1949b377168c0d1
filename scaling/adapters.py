"""The adapters a sweep keeps, on disk under ``<run dir>/adapters/``, and `export`.

Layout (peft's own format in every adapter folder: adapter_config.json +
adapter_model.safetensors, so ``PeftModel.from_pretrained(base, folder)`` loads it):

    adapters/<cell key>/         the adapter of the trial the cell's selection picks
                                 (analysis/selection.py: validation picks), plus
                                 scaling.json: its trial_id, config and metrics
    adapters/trials/<trial>/     every trial's adapter (storage.keep_adapters: all)
    adapters/.incoming/<trial>/  where workers' adapters land during a sweep

Workers send each finished trial's adapter to the driver (scaling/sweep/run.py's sink
actor, on the driver's node), so no filesystem is shared between nodes. When the sweep
ends, `keep_selected` reads the results table, picks each cell's trial the way the report
does, and keeps its adapter; with keep_adapters: best the others are deleted.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["ADAPTERS_DIR", "INCOMING", "AdapterWarning", "cell_dir_name", "export", "keep_selected",
           "selected_adapters", "store_files"]  # fmt: skip

ADAPTERS_DIR = "adapters"
INCOMING = ".incoming"
TRIALS = "trials"
META = "scaling.json"


class AdapterWarning(UserWarning):
    """A cell's selected trial has no adapter on disk (e.g. its worker died after its last row)."""


def _trial_dir_name(trial_id: str) -> str:
    """``<study>/<cell key>#<n>`` -> ``<cell key>#<n>`` (the study is the run directory's)."""
    return trial_id.rsplit("/", 1)[-1]


def cell_dir_name(trial_id: str) -> str:
    """``<study>/<cell key>#<n>`` -> ``<cell key>``."""
    return _trial_dir_name(trial_id).rsplit("#", 1)[0]


def store_files(run_dir: Path, trial_id: str, files: dict[str, bytes]) -> Path:
    """Write one trial's adapter files under adapters/.incoming/, atomically (a folder renamed
    into place: a reader never sees half an adapter). Returns the folder."""
    root = Path(run_dir) / ADAPTERS_DIR / INCOMING
    root.mkdir(parents=True, exist_ok=True)
    dest = root / _trial_dir_name(trial_id)
    tmp = root / f".tmp-{dest.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, data in files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"adapter file name {name!r}: must be a plain file name")
        (tmp / name).write_bytes(data)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _meta(row: pd.Series, metrics: dict[str, Any]) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if hasattr(v, "item"):
            v = v.item()
        return None if isinstance(v, float) and v != v else v

    keys = ("trial_id", "model", "dataset_size", "epochs", "lora_r", "learning_rate", "seed", "phase")
    return {**{k: plain(row[k]) for k in keys if k in row.index},
            "metrics": {k: plain(v) for k, v in metrics.items()}}  # fmt: skip


def keep_selected(run_dir: Path, table: pd.DataFrame, *, keep: str, model: str) -> list[Path]:
    """Keep each cell's selected adapter as adapters/<cell>/ (with scaling.json) and tidy the
    incoming folder: keep="best" deletes the other trials' adapters, "all" moves them to
    adapters/trials/. Returns the cell folders. A selected trial without an adapter on disk
    (its worker died after its last row was written) keeps the cell's older folder if it holds
    that trial, else the cell has none and an `AdapterWarning` says so."""
    from analysis.selection import select  # the same choice as the report's

    root = Path(run_dir) / ADAPTERS_DIR
    incoming = root / INCOMING
    if keep == "none" or table.empty or not root.exists():
        return []
    final = table.sort_values("epoch").groupby("trial_id", sort=False).tail(1).set_index("trial_id")
    sel = select(table, bootstrap=0)  # only complete trials can be picked: they are the ones saved
    kept: list[Path] = []
    missing: list[str] = []
    for tid in sel.best["trial_id_best"].dropna().astype(str):
        cell = root / cell_dir_name(tid)
        src = incoming / _trial_dir_name(tid)
        if not src.exists() and keep == "all":
            src = root / TRIALS / _trial_dir_name(tid)
        row = final.loc[tid].copy()
        row["trial_id"] = tid
        row["model"] = row.get("model") if isinstance(row.get("model"), str) else model
        metrics = {c: row[c] for c in row.index if str(c).startswith(("val_", "test_"))}
        if src.exists():
            tmp = root / f".tmp-{cell.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            (tmp / META).write_text(json.dumps(_meta(row, metrics), indent=2) + "\n")
            shutil.rmtree(cell, ignore_errors=True)
            tmp.rename(cell)
            kept.append(cell)
        elif (cell / META).exists() and json.loads((cell / META).read_text()).get("trial_id") == tid:
            kept.append(cell)  # kept by an earlier run of this study
        else:
            missing.append(tid)
    if incoming.exists():
        if keep == "all":
            (root / TRIALS).mkdir(exist_ok=True)
            for d in incoming.iterdir():
                if d.is_dir() and not d.name.startswith(".tmp-"):
                    shutil.rmtree(root / TRIALS / d.name, ignore_errors=True)
                    d.rename(root / TRIALS / d.name)
        shutil.rmtree(incoming, ignore_errors=True)
    if missing:
        warnings.warn(f"{root}: no adapter kept for {len(missing)} selected trial(s) {missing}: their "
                      "worker ended before sending it; rerun those configs to get them", AdapterWarning,
                      stacklevel=2)  # fmt: skip
    return sorted(kept)


def selected_adapters(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{cell key: its scaling.json} for every kept cell adapter of a run directory."""
    root = Path(run_dir) / ADAPTERS_DIR
    out = {}
    for meta in sorted(root.glob(f"*/{META}")):
        if meta.parent.name not in (TRIALS, INCOMING):
            out[meta.parent.name] = json.loads(meta.read_text())
    return out


def export(run_dir: Path, out: Path, *, cell: str | None = None, merge: bool = False) -> tuple[str, Path]:
    """Write a kept adapter (or, merge=True, the base model with it merged in, tokenizer included)
    to ``out`` with a README.md naming its config and metrics. cell=None: the cell whose selected
    trial has the lowest validation loss. Returns (cell key, out). ValueError when there is
    nothing to export or ``out`` is not empty."""
    run_dir, out = Path(run_dir), Path(out)
    kept = selected_adapters(run_dir)
    if not kept:
        raise ValueError(f"{run_dir / ADAPTERS_DIR}: no kept adapter (storage.keep_adapters: none, or a "
                         "study run before adapters were kept)")  # fmt: skip
    if cell is None:
        def val_loss(k: str) -> float:
            v = kept[k]["metrics"].get("val_eval_loss")
            return float("inf") if v is None else float(v)

        cell = min(kept, key=val_loss)
    elif cell not in kept:
        raise ValueError(f"--cell: no kept adapter for cell {cell!r}; kept: {sorted(kept)}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out: {out} exists and is not empty; choose a new folder")
    src = run_dir / ADAPTERS_DIR / cell
    meta = kept[cell]
    out.mkdir(parents=True, exist_ok=True)
    if merge:
        from peft import PeftModel  # torch only here: the rest of the CLI stays light

        from scaling.models import load_base_model

        model, tokenizer = load_base_model(meta["model"], device="cpu")
        merged = PeftModel.from_pretrained(model, str(src)).merge_and_unload()
        merged.save_pretrained(out)
        tokenizer.save_pretrained(out)
    else:
        for f in src.iterdir():
            if f.is_file() and f.name != "README.md":  # peft's stub card: ours replaces it
                shutil.copy2(f, out / f.name)
    (out / "README.md").write_text(_card(meta, cell=cell, merged=merge, run_dir=run_dir))
    return cell, out


def _card(meta: dict[str, Any], *, cell: str, merged: bool, run_dir: Path) -> str:
    m = meta.get("metrics", {})
    what = "the base model with the LoRA adapter merged in" if merged else "a LoRA adapter (peft format)"
    lines = [
        f"# {cell}: {what}",
        "",
        f"From the scaling study in `{run_dir}`: the trial its validation loss picked in cell {cell}",
        f"(trial `{meta.get('trial_id')}`). Each metric is one trial's value; the study's report",
        "gives its seed-to-seed spread where the study ran repeat seeds.",
        "",
        "| field | value |",
        "|---|---|",
        *(f"| {k} | {meta.get(k)} |" for k in ("model", "dataset_size", "epochs", "lora_r", "learning_rate", "seed")),
        *(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(m.items())),
        "",
    ]
    if not merged:
        lines += ["Load it with:", "", "```python", "from peft import PeftModel",
                  "model = PeftModel.from_pretrained(base_model, '<this folder>')", "```", ""]  # fmt: skip
    return "\n".join(lines)
