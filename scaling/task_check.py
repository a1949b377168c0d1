"""What a study's data deserves to be warned about before its sweep starts (in the driver).

`task_warnings(spec)`: duplicates across the splits, by content (tasks.data_warnings: a JSONL or
chat file's line pairs, an addition sum and its mirror), and, with train.max_length, how many
examples of each split it truncates, counted with the model's own tokenizer. `scaling sweep`,
`scaling validate` and `Study.run` show them; trials still report their own counts
(train_truncated / val_truncated / test_truncated in every metrics dict).
"""

from __future__ import annotations

from scaling.spec import StudySpec
from scaling.tasks import TaskError, data_warnings, make_task

__all__ = ["task_warnings"]


def task_warnings(spec: StudySpec) -> list[str]:
    """The warnings, one line each; TaskError for data no trial could use (an example whose prompt
    fills train.max_length, characters the tokenizer does not know, one longer than the model)."""
    task = make_task(kind=spec.task.kind, digits=spec.task.digits, path=spec.task.path, seed=spec.task.seed,
                     validation_size=spec.eval.validation_size, test_size=spec.eval.test_size,
                     split=spec.task.split)  # fmt: skip
    most = max(spec.axes.dataset_sizes())
    if task.max_train_size is not None:
        most = min(most, task.max_train_size)
    tokenizer, max_len, out = None, 10**9, []
    if spec.train.max_length is not None:
        try:
            tokenizer, max_len = _tokenizer(spec.model)
        except (OSError, ValueError) as err:  # a hub model not reachable from here: its trials will tell
            out.append(f"train.max_length {spec.train.max_length}: truncated examples not counted before the "
                       f"sweep, the tokenizer of {spec.model!r} did not load here ({type(err).__name__}: {err})")
    try:
        return out + data_warnings(task, dataset_size=most, tokenizer=tokenizer,
                                   max_length=spec.train.max_length, max_len=max_len)  # fmt: skip
    except TaskError as err:
        raise TaskError(f"{spec.source}: task: {err}") from None


def _tokenizer(model: str):
    """The model's tokenizer (as trials load it) and its positions; the tiny model is built once here."""
    from transformers import AutoConfig, AutoTokenizer

    from scaling.models import ensure_base_model, ensure_pad_token

    path = ensure_base_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)
    positions = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None) or 10**9
    return tokenizer, positions
