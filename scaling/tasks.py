"""Fine-tune tasks: prompt -> completion examples with fixed eval sets and nested training pools.

Every task is one seeded permutation of its problems:

    [ validation (validation_size) | test (test_size) | training pool ... ]

so validation and test are fixed whatever dataset size a trial asks for, disjoint
from each other and from every training set, and a smaller training set is a
prefix of a larger one (train_pool(1000) == train_pool(4000)[:1000]): the only
thing that changes along the D axis of a scaling study is how much data is seen.

Read top to bottom:
  1. Example, TaskError and the Task base class
  2. addition: "37+45=" -> "82"
  3. jsonl: a user's {"prompt": ..., "completion": ...} file
  4. make_task
  5. token ids for a model's tokenizer (and the check that every character is in its
     vocabulary); the tokenizer is handed in, so no torch here
"""

from __future__ import annotations

import abc
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Example", "Task", "TaskError", "Tokenized", "make_task"]

# -----------------------------------------------------------------------------
# 1. Records and the base class


@dataclass(frozen=True)
class Example:
    prompt: str  # "37+45="
    completion: str  # "82"; the trial appends the tokenizer's eos


class TaskError(ValueError):
    """A task's data is unusable (bad JSONL line, too few examples, unknown characters)."""


class Task(abc.ABC):
    """Subclasses supply _example(i) for i in [0, _size) in the seeded order."""

    name: str
    validation_size: int
    test_size: int

    @property
    @abc.abstractmethod
    def _size(self) -> int: ...

    @abc.abstractmethod
    def _example(self, i: int) -> Example: ...

    @property
    def max_train_size(self) -> int | None:
        """How many training examples exist (None: unbounded)."""
        return self._size - self.validation_size - self.test_size

    def train_pool(self, n: int) -> list[Example]:
        """The first n training examples; nested: train_pool(k) == train_pool(n)[:k] for k <= n."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"training set size must be a non-negative int, got {n!r}")
        if self.max_train_size is not None and n > self.max_train_size:
            raise ValueError(
                f"dataset_size {n} is larger than the {self.max_train_size} training examples "
                f"task {self.name!r} has (after {self.validation_size} validation and "
                f"{self.test_size} test examples)"
            )
        start = self.validation_size + self.test_size
        return [self._example(start + i) for i in range(n)]

    def validation(self, n: int | None = None) -> list[Example]:
        """The first n (default: all validation_size) validation examples."""
        return self._eval_slice(0, self.validation_size, n, "validation")

    def test(self, n: int | None = None) -> list[Example]:
        """The first n (default: all test_size) test examples."""
        return self._eval_slice(self.validation_size, self.test_size, n, "test")

    def _eval_slice(self, start: int, size: int, n: int | None, what: str) -> list[Example]:
        n = size if n is None else n
        if not 0 <= n <= size:
            raise ValueError(f"{what} size must be in [0, {size}] for task {self.name!r}, got {n}")
        return [self._example(start + i) for i in range(n)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, validation_size={self.validation_size}, "
            f"test_size={self.test_size}, max_train_size={self.max_train_size})"
        )


def _check_eval_sizes(*, size: int, validation_size: int, test_size: int, what: str) -> None:
    for field, value in (("validation_size", validation_size), ("test_size", test_size)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{field} must be a non-negative int, got {value!r}")
    if validation_size + test_size >= size:
        raise TaskError(
            f"{what} has {size} examples: not enough for validation_size={validation_size} + "
            f"test_size={test_size} and at least one training example"
        )


# -----------------------------------------------------------------------------
# 2. Addition: all ordered pairs (a, b) with 0 <= a, b < 10**digits, written without
# padding or spaces ("7+45=" -> "52"). (a, b) and (b, a) are distinct problems: the
# model sees the digits in a different order, and this is how the prototype counted.
# 2 digits: 10,000 problems, so 10,000 - 500 - 500 = 9,000 training examples.

_MAX_PERMUTED = 1 << 22  # up to 3 digits (10^6 pairs): one explicit permutation, 8 MB


class _AdditionTask(Task):
    def __init__(self, *, digits: int, seed: int, validation_size: int, test_size: int):
        if not isinstance(digits, int) or not 1 <= digits <= 9:
            raise ValueError(f"addition digits must be an int in [1, 9], got {digits!r}")
        self.digits, self.seed = digits, seed
        self.name = f"addition-{digits}d"
        self.validation_size, self.test_size = validation_size, test_size
        self._base = 10**digits
        _check_eval_sizes(
            size=self._size, validation_size=validation_size, test_size=test_size, what=self.name
        )
        if self._size <= _MAX_PERMUTED:
            self._order = np.random.default_rng(seed).permutation(self._size)
        else:
            # too many pairs to permute: a seeded stream of distinct random pairs, grown on
            # demand. Still nested and deterministic; differs from a permutation only in
            # how it is computed.
            self._order_list: list[int] = []
            self._seen: set[int] = set()
            self._rng = random.Random(seed)

    @property
    def _size(self) -> int:
        return self._base**2

    def _index(self, i: int) -> int:
        if self._size <= _MAX_PERMUTED:
            return int(self._order[i])
        while len(self._order_list) <= i:
            k = self._rng.randrange(self._size)
            if k not in self._seen:
                self._seen.add(k)
                self._order_list.append(k)
        return self._order_list[i]

    def _example(self, i: int) -> Example:
        a, b = divmod(self._index(i), self._base)
        return Example(prompt=f"{a}+{b}=", completion=str(a + b))


# -----------------------------------------------------------------------------
# 3. JSONL: one {"prompt": str, "completion": str} object per line; blank lines skipped


class _JsonlTask(Task):
    def __init__(self, *, path: str, seed: int, validation_size: int, test_size: int):
        self.path, self.seed = path, seed
        self.name = f"jsonl:{Path(path).name}"
        self.validation_size, self.test_size = validation_size, test_size
        examples = _read_jsonl(path)
        _check_eval_sizes(
            size=len(examples), validation_size=validation_size, test_size=test_size, what=path
        )
        order = np.random.default_rng(seed).permutation(len(examples))
        self._examples = [examples[int(k)] for k in order]

    @property
    def _size(self) -> int:
        return len(self._examples)

    def _example(self, i: int) -> Example:
        return self._examples[i]


def _read_jsonl(path: str) -> list[Example]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"task file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise TaskError(f"task file {path} is not UTF-8 text: {e}") from None
    examples = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{where}: invalid JSON ({e.msg}): {line[:80]!r}") from None
        if not isinstance(obj, dict):
            raise TaskError(f"{where}: expected an object with 'prompt' and 'completion', got {obj!r:.80}")
        for field in ("prompt", "completion"):
            if field not in obj:
                raise TaskError(f"{where}: missing field {field!r} (has {sorted(obj)})")
            if not isinstance(obj[field], str):
                raise TaskError(f"{where}: field {field!r} must be a string, got {obj[field]!r:.80}")
        if not obj["completion"]:
            raise TaskError(f"{where}: field 'completion' must not be empty, got ''")
        examples.append(Example(prompt=obj["prompt"], completion=obj["completion"]))
    if not examples:
        raise TaskError(f"task file {path} has no examples")
    return examples


# -----------------------------------------------------------------------------
# 4. Factory


def make_task(
    *,
    kind: str = "addition",
    digits: int = 2,
    path: str | None = None,
    seed: int = 0,
    validation_size: int = 500,
    test_size: int = 500,
) -> Task:
    """A task by kind: "addition" (uses digits) or "jsonl" (uses path). seed fixes the split."""
    if kind == "addition":
        return _AdditionTask(
            digits=digits, seed=seed, validation_size=validation_size, test_size=test_size
        )
    if kind == "jsonl":
        if not path:
            raise ValueError(f"task kind 'jsonl' needs a path, got {path!r}")
        return _JsonlTask(path=path, seed=seed, validation_size=validation_size, test_size=test_size)
    raise ValueError(f"task kind must be 'addition' or 'jsonl', got {kind!r}")


# -----------------------------------------------------------------------------
# 5. Token ids for a tokenizer: prompt ids (with the tokenizer's own bos, if it adds one) and answer
# ids = completion ids + eos. Loss, accuracy and log-prob are over answer ids only.

Tokenized = list[tuple[list[int], list[int]]]  # [(prompt_ids, answer_ids)]


def _tokenize(examples: list[Example], tokenizer, *, split: str, max_len: int) -> Tokenized:
    if not examples:
        return []
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    unk, eos = tokenizer.unk_token_id, tokenizer.eos_token_id
    if eos is None:
        raise TaskError(f"the model's tokenizer has no eos token: answers could not end ({tokenizer!r:.80})")
    out = []
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        if unk is not None and (unk in p or unk in c):
            ex = examples[i]
            bad = sorted({ch for ch in ex.prompt + ex.completion
                          if unk in tokenizer(ch, add_special_tokens=False)["input_ids"]})
            raise TaskError(
                f"{split} example {i} ({ex.prompt!r} -> {ex.completion!r}) has characters the "
                f"model's tokenizer does not know: {''.join(bad)!r}"
            )
        if not p:  # nothing to predict the first answer token from
            raise TaskError(f"{split} example {i} has an empty prompt and the tokenizer adds no bos token")
        a = c + [eos]
        if len(p) + len(a) > max_len:
            raise TaskError(
                f"{split} example {i} is {len(p) + len(a)} tokens, longer than the model's "
                f"{max_len} positions: {examples[i].prompt!r:.60}"
            )
        out.append((p, a))
    return out
