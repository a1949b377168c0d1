"""Base models: the embedded tiny Llama (tiny.py) by name, real ones by path or hub id.

Read top to bottom:
  1. the cache and resolving a name (ensure_base_model; the tiny model is built by tiny.py)
  2. loading (load_base_model)
  3. tokenizer roles: the pad token, the ids that end an answer, exact match
  4. LoRA targets for any architecture (resolve_target_modules, peft's own all-linear)

A GGUF file becomes a checkpoint directory with gguf_import.import_gguf.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as _hf_logging

from scaling.family import BUILTIN_TINY, is_tiny, tiny_width
from scaling.param_count import non_embedding_count
from scaling.tiny import _ensure_tiny, tiny_build_config, tiny_config_of_width, tiny_llama_config

# Per-load "Loading weights" bars would interleave with the sweep's own progress display.
_hf_logging.disable_progress_bar()

__all__ = [
    "ALL_LINEAR",
    "ModelUnavailableError",
    "TargetModulesError",
    "check_model_available",
    "check_target_modules",
    "default_cache_dir",
    "ensure_base_model",
    "load_base_model",
    "ensure_pad_token",
    "end_of_answer_ids",
    "answer_matches",
    "linear_module_names",
    "model_params_n",
    "resolve_target_modules",
]

# -----------------------------------------------------------------------------
# 1. The cache: $SCALING_CACHE or ~/.cache/scaling/ (the tiny model: tiny-llama-<config hash>/)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2", "org/name"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SCALING_CACHE") or Path.home() / ".cache" / "scaling")


def ensure_base_model(
    name_or_path: str = BUILTIN_TINY,
    *,
    cache_dir: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> str:
    """Return something from_pretrained can load: a local directory or a hub id.

    BUILTIN_TINY is built once per config and cached; two processes building at
    once wait on a file lock, and the folder appears only when complete (rename).
    A local directory must hold a config.json; any other string shaped like a hub
    id is returned unchanged and loaded lazily by from_pretrained. progress(fraction)
    is called only while the tiny model is being built.
    """
    width = tiny_width(name_or_path)  # tiny-llama, tiny-llama-w64, ... (scaling/family.py): built once each
    if width is not None:
        return _ensure_tiny(tiny_config_of_width(width), Path(cache_dir) if cache_dir else default_cache_dir(),
                            progress=progress)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {name_or_path!r} has no config.json")
        return str(path)
    looks_local = (
        path.exists()
        or name_or_path.startswith(("/", ".", "~"))
        or ("/" in name_or_path and Path(name_or_path.split("/")[0]).is_dir())  # "runs/x"
    )
    if looks_local or not _HUB_ID.match(name_or_path):
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither an embedded model ({BUILTIN_TINY!r}, {BUILTIN_TINY + '-w64'!r}, ...), "
            "a model directory, nor a hub id"
        )
    return name_or_path


class ModelUnavailableError(ValueError):
    """A hub id that is not in the local Hugging Face cache and that the hub cannot serve; the
    message names the spec file, the field, the id and the ways to fix it."""


_HUB_TIMEOUT_S = 5.0  # the one online check before a sweep; from_pretrained would retry for ~25 s per file


def _hub_offline() -> bool:
    from huggingface_hub import constants

    on = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or on.strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_model_available(name_or_path: str, *, source: str | None = None, field: str = "model",
                          timeout: float = _HUB_TIMEOUT_S) -> None:  # fmt: skip
    """Refuse, before any trial, a base model that no worker could load.

    An embedded name or a local checkpoint directory passes (a malformed one raises
    FileNotFoundError, as ensure_base_model does). A hub id passes when its config.json is in the
    local Hugging Face cache, else after one request to the hub (``timeout`` seconds, no retries)
    that finds the repository. HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) skips that request. A
    missing local path or a directory without config.json is refused the same way.
    Raises ModelUnavailableError naming source, field, the id, why, and the fixes."""
    where = f"{source}: " if source else ""
    try:
        path = ensure_base_model(name_or_path)
    except FileNotFoundError as err:  # a directory without config.json, a path that is not there
        raise ModelUnavailableError(f"{where}{field}: {err}") from None
    if Path(path).is_dir():  # an embedded model (built into the cache) or a checkpoint directory
        return
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    if isinstance(try_to_load_from_cache(name_or_path, "config.json", cache_dir=cache), str):
        return
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    if _hub_offline():
        why = "HF_HUB_OFFLINE is set"
    else:
        try:
            HfApi(endpoint=endpoint).model_info(name_or_path, timeout=timeout)
            return  # the hub has it: each worker downloads it into the cache
        except GatedRepoError:
            why = f"it is gated on {endpoint}: accept its terms there and log in (`hf auth login`)"
        except RepositoryNotFoundError:
            why = f"{endpoint} has no such model (or it is private: log in with `hf auth login`)"
        except Exception as err:  # no network, DNS, proxy, timeout: any failure to get an answer
            first = (str(err).strip().splitlines() or [""])[0][:200]
            why = f"{endpoint} cannot be reached ({type(err).__name__}: {first})"
    raise ModelUnavailableError(
        f"{where}{field}: hub model {name_or_path!r} is not in the local Hugging Face cache ({cache}) and "
        f"{why}; download it into the cache where the hub is reachable (`hf download {name_or_path}`), "
        f"give a local checkpoint directory instead, or convert a GGUF file with `scaling models import-gguf`"
    )


# -----------------------------------------------------------------------------
# 2. Loading


def load_base_model(
    name_or_path: str, *, device: str = "cpu", dtype: torch.dtype | None = None,
    quantization_config: object | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) in eval mode on device; the tokenizer always has a pad token.

    dtype None: float32 on CPU and for the tiny model; bfloat16 for hub models on a GPU that
    supports it (train.precision auto, trial/base.py). quantization_config (a transformers
    BitsAndBytesConfig, CUDA only) loads the weights quantized straight onto device.
    """
    path = ensure_base_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)  # most causal LMs ship without one; padding is masked anyway
    if dtype is None:
        dtype = torch.float32
        if (
            not (Path(path) / "build.json").is_file()  # an embedded build (tiny.py writes build.json)
            and device.startswith("cuda")
            and torch.cuda.is_available()
            and torch.cuda.is_bf16_supported()
        ):
            dtype = torch.bfloat16
    if quantization_config is not None:  # bitsandbytes places the quantized weights itself
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quantization_config,
                                                     device_map={"": device})  # fmt: skip
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    return model, tokenizer


@functools.lru_cache(maxsize=64)
def model_params_n(name_or_path: str) -> int | None:
    """A base model's non-embedding parameter count N, from its config on torch's meta device (no
    weights read or allocated; an embedded model need not be built yet). None when the config is
    not on this machine (a hub model not downloaded): the rows then carry no N."""
    try:
        if is_tiny(name_or_path):
            config = tiny_llama_config(tiny_build_config(name_or_path))
        else:
            config = AutoConfig.from_pretrained(ensure_base_model(name_or_path), local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError):
        return None
    return non_embedding_count(model)


# -----------------------------------------------------------------------------
# 3. Tokenizer roles. A real tokenizer may lack a pad token (GPT-2, Llama) and may end an
# assistant turn with a chat token (<|im_end|>) other than its eos. Padding positions are
# always masked (labels -100, attention 0), so any existing id may serve as pad: reuse
# eos, else unk. Never add a token by default: that would resize the embeddings, and a
# LoRA trial must leave the base model exactly as it was.

# chat end tokens of common templates, used when the template itself does not tell
_CHAT_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endofturn|>")
_ANSWER_MARKER = "Zq7xAnswerMarker"  # a string no template adds around a message


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, setting pad_token to eos (else unk) when it has none."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    for role in ("eos_token", "unk_token"):
        token = getattr(tokenizer, role)
        if token is not None:
            tokenizer.pad_token = token
            return tokenizer.pad_token_id
    raise ValueError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no pad, "
        f"eos or unk token to pad with; set one (tokenizer.pad_token = ...) before training"
    )


def _template_end_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template writes right after an assistant message, if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _ANSWER_MARKER}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # a template that needs other roles or arguments: fall back to names
        return None
    after = text.split(_ANSWER_MARKER, 1)[-1] if _ANSWER_MARKER in text else ""
    ids = tokenizer(after.lstrip(" "), add_special_tokens=False)["input_ids"] if after.strip() else []
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
    }
    return ids[0] if ids and ids[0] in special else None


def end_of_answer_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Ids that end a generated answer: eos first, then the chat end token where there is one.

    The chat end token is read from the chat template (the special token written after an
    assistant message), else looked up by the common names in _CHAT_END_TOKENS. Raises
    ValueError when the tokenizer has no eos and no chat end token: answers could not stop.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    chat_end = _template_end_id(tokenizer)
    if chat_end is None:
        vocab = tokenizer.get_vocab()
        chat_end = next((vocab[t] for t in _CHAT_END_TOKENS if t in vocab), None)
    if chat_end is not None and chat_end not in ids:
        ids.append(chat_end)
    if not ids:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no eos "
            f"token and no chat end token ({', '.join(_CHAT_END_TOKENS)}): generated answers could not stop"
        )
    return tuple(ids)


def answer_matches(generated: list[int], answer: list[int], *, stop_ids: tuple[int, ...]) -> bool:
    """Exact match of a greedy generation: the answer's tokens, then any stop id.

    `answer` is the completion's ids, with or without a trailing stop id; `generated` must
    hold at least len(completion) + 1 tokens. [5, 6, <|im_end|>] matches answer [5, 6, <eos>]
    when both ids are in stop_ids; [5, 6, 7] does not (the model did not stop)."""
    stops = set(stop_ids)
    body = answer[:-1] if answer and answer[-1] in stops else answer
    n = len(body)
    return len(generated) > n and list(generated[:n]) == list(body) and generated[n] in stops


# -----------------------------------------------------------------------------
# 4. LoRA targets. "all-linear" is resolved by peft's own rule (every nn.Linear and GPT-2
# Conv1D but the output head); a list of names must each match a module (peft's rule: the
# module's full name equals the name or ends with "." + name). Resolved to the shortest
# form: leaf names when they pick exactly peft's set, else full module names.

ALL_LINEAR = "all-linear"


class TargetModulesError(ValueError):
    """lora.target_modules does not fit the model; the message names the model's modules."""


def _peft_all_linear(model: torch.nn.Module) -> set[str]:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers  # peft's own rule

    cfg = _maybe_include_all_linear_layers(
        LoraConfig(target_modules=ALL_LINEAR, task_type="CAUSAL_LM"), model
    )
    return set(cfg.target_modules)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Full names of the modules peft's "all-linear" targets, sorted."""
    return sorted(_peft_all_linear(model))


def _matches(full_name: str, target: str) -> bool:
    return full_name == target or full_name.endswith("." + target)


def _leaf_names(names) -> list[str]:
    """Distinct last components, layer indices dropped: ['c_attn', 'c_proj', ...]."""
    return sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})


def resolve_target_modules(
    model: torch.nn.Module,
    target_modules: str | list[str] | tuple[str, ...],
    *,
    model_name: str | None = None,
    source: str | None = None,
) -> list[str]:
    """What LoraConfig(target_modules=...) should get for this model, checked.

    target_modules is "all-linear" or a list of module names (spec.lora.target_modules).
    "all-linear" -> peft's linear layers as sorted leaf names (["c_attn", "c_fc", "c_proj"]
    for GPT-2), or full names when leaf names would also hit a module peft excludes. A list
    -> itself (order kept, duplicates dropped) once every name matches a module. Raises
    TargetModulesError naming source, the field, the name and the model's module names.
    """
    where = f"{source}: " if source else ""
    what = f"model {model_name!r}" if model_name else f"the model ({type(model).__name__})"
    linear = _peft_all_linear(model)
    if isinstance(target_modules, str):
        if target_modules.lower() != ALL_LINEAR:
            raise TargetModulesError(
                f"{where}lora.target_modules: must be {ALL_LINEAR!r} or a list of module names "
                f"(got {target_modules!r})"
            )
        if not linear:
            raise TargetModulesError(f"{where}lora.target_modules: {what} has no linear layers for "
                                     f"{ALL_LINEAR!r} to target")  # fmt: skip
        leaves = _leaf_names(linear)
        picked = {n for n, _ in model.named_modules() if any(_matches(n, leaf) for leaf in leaves)}
        return leaves if picked == linear else sorted(linear)
    names = list(dict.fromkeys(target_modules))
    if not names or not all(isinstance(n, str) and n for n in names):
        raise TargetModulesError(f"{where}lora.target_modules: must be {ALL_LINEAR!r} or a non-empty "
                                 f"list of module names (got {target_modules!r})")  # fmt: skip
    all_names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in names if not any(_matches(n, t) for n in all_names)]
    if missing:
        others = [n for n in _leaf_names(all_names) if n not in set(_leaf_names(linear))]
        raise TargetModulesError(
            f"{where}lora.target_modules: {', '.join(map(repr, missing))} "
            f"{'matches' if len(missing) == 1 else 'match'} no module of {what}; its linear layers "
            f"are {_leaf_names(linear)} (or use {ALL_LINEAR!r}), its other modules {others} "
            f"(got {list(target_modules)!r})"
        )
    return names


def check_target_modules(name_or_path: str, target_modules: str | list[str] | tuple[str, ...], *,
                         source: str | None = None) -> list[str] | None:  # fmt: skip
    """Check spec.lora.target_modules against the model's modules before any trial runs.

    The model is built from its config on torch's meta device (no weights are read or
    allocated), so this costs a second even for a large base. Returns the resolved names, or
    None when the model's config is not on this machine (a hub id not downloaded yet: the
    trials then check it). Raises TargetModulesError naming source, field, the names that
    match nothing and the model's module names."""
    try:
        path = ensure_base_model(name_or_path)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return resolve_target_modules(model, target_modules, model_name=name_or_path, source=source)


def prepare_base_models(models: tuple[str, ...] | list[str], target_modules: object, *, source: str,
                        field: str = "model") -> None:  # fmt: skip
    """Before a sweep: every base model loadable (check_model_available: a hub id must be cached
    or served by the hub; ModelUnavailableError), lora.target_modules checked against its modules
    (built on the meta device: no weights; TargetModulesError naming them), and each base model
    built once here (the embedded ones, cached), not in every worker at once. A hub model the hub
    serves but this machine has not downloaded is left to its trials."""
    for model in models:
        check_model_available(model, source=source, field=field)
        check_target_modules(model, target_modules, source=source)  # builds it first (ensure_base_model)
