"""Fine-tune tasks: prompt -> completion examples (or chats) with fixed eval sets and nested training pools.

Every task is one seeded permutation of its problems:

    [ validation (validation_size) | test (test_size) | training pool ... ]

so validation and test are fixed whatever dataset size a trial asks for, disjoint
from each other and from every training set, and a smaller training set is a
prefix of a larger one (train_pool(1000) == train_pool(4000)[:1000]): the only
thing that changes along the D axis of a scaling study is how much data is seen.

Read top to bottom:
  1. Example, ChatExample, TaskError and the Task base class (with the duplicate check)
  2. addition: "37+45=" -> "82"; a+b and b+a fall in one split
  3. jsonl: a user's {"prompt": ..., "completion": ...} file
  4. chat: a user's {"messages": [{"role": ..., "content": ...}, ...]} file
  5. make_task
  6. token ids for a model's tokenizer (and the check that every character is in its
     vocabulary); the tokenizer is handed in, so no torch here. Chats are rendered with
     the tokenizer's chat template, or role-prefixed plain text where it has none
  7. what a study should hear before it starts: duplicates across splits, truncation
"""

from __future__ import annotations

import abc
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "ChatExample", "Example", "PromptIds", "Task", "TaskError", "Tokenized", "TokenizedSplit",
    "data_warnings", "make_task", "render_plain", "tokenize_split",
]  # fmt: skip

# -----------------------------------------------------------------------------
# 1. Records and the base class


@dataclass(frozen=True)
class Example:
    prompt: str  # "37+45="
    completion: str  # "82"; the trial appends the tokenizer's eos
    source: str | None = field(default=None, compare=False)  # "data.jsonl:12" for a file's line


ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatExample:
    """One conversation: ((role, content), ...), the last turn the assistant's reply that is scored."""

    messages: tuple[tuple[str, str], ...]
    source: str | None = field(default=None, compare=False)


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
    def _example(self, i: int) -> Example | ChatExample: ...

    def _content_key(self, ex: Example | ChatExample) -> object:
        """What makes two examples the same problem (the duplicate check): their content."""
        return ex

    @property
    def max_train_size(self) -> int | None:
        """How many training examples exist (None: unbounded)."""
        return self._size - self.validation_size - self.test_size

    def train_pool(self, n: int) -> list:
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

    def validation(self, n: int | None = None) -> list:
        """The first n (default: all validation_size) validation examples."""
        return self._eval_slice(0, self.validation_size, n, "validation")

    def test(self, n: int | None = None) -> list:
        """The first n (default: all test_size) test examples."""
        return self._eval_slice(self.validation_size, self.test_size, n, "test")

    def _eval_slice(self, start: int, size: int, n: int | None, what: str) -> list:
        n = size if n is None else n
        if not 0 <= n <= size:
            raise ValueError(f"{what} size must be in [0, {size}] for task {self.name!r}, got {n}")
        return [self._example(start + i) for i in range(n)]

    def cross_split_duplicates(self, dataset_size: int | None = None) -> list[list[tuple[str, str]]]:
        """Problems that sit in more than one split, by content (not by index): one list per
        problem of (split, where) pairs, split in "validation" | "test" | "training" (the first
        dataset_size training examples; default all), where the file:line (else the prompt)."""
        n_train = self.max_train_size if dataset_size is None else dataset_size
        seen: dict[object, list[tuple[str, str]]] = {}
        splits = {"validation": self.validation(), "test": self.test(), "training": self.train_pool(n_train)}
        for split, examples in splits.items():
            for ex in examples:
                where = ex.source or (ex.prompt if isinstance(ex, Example) else repr(ex.messages[-2:]))
                seen.setdefault(self._content_key(ex), []).append((split, where))
        return [group for group in seen.values() if len({s for s, _ in group}) > 1]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, validation_size={self.validation_size}, "
            f"test_size={self.test_size}, max_train_size={self.max_train_size})"
        )


def _check_eval_sizes(*, size: int, validation_size: int, test_size: int, what: str) -> None:
    for field_, value in (("validation_size", validation_size), ("test_size", test_size)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{field_} must be a non-negative int, got {value!r}")
    if validation_size + test_size >= size:
        raise TaskError(
            f"{what} has {size} examples: not enough for validation_size={validation_size} + "
            f"test_size={test_size} and at least one training example"
        )


# -----------------------------------------------------------------------------
# 2. Addition: all ordered pairs (a, b) with 0 <= a, b < 10**digits, written without
# padding or spaces ("7+45=" -> "52"). 2 digits: 10,000 problems, so 10,000 - 500 - 500 =
# 9,000 training examples.
#
# split "pairs" (the default): (a, b) and (b, a) are one problem for the split. Both orders
# are examples (the model sees the digits in a different order), but they always fall in the
# same split, so no validation or test sum has its mirror in training. The seeded stream of
# ordered pairs decides: a pair goes, both orders at once, to validation while it has room
# for it, then to test; every other ordered pair is training data, in the stream's order. The
# sizes are the ordered split's exactly (an odd room is filled by an a+a problem).
# The price: 500 test examples are 251 distinct sums, not 489 (2 digits, seed 0).
# split "ordered": every ordered pair is split on its own, as the prototype did and as studies
# from before task.split ran; with 2 digits, 500 + 500 eval problems and seed 0, 454 of the 500
# test sums then had their mirror in the 9,000-example training pool (8 in D=300, 62 in
# D=1,200, 108 in D=2,400, 238 in D=4,800), and 21 validation sums theirs in test. Measured
# (one trial each, D=2,400, 4 epochs, lr 4e-3): test exact match 0.496 / 0.442 (adapter seeds
# 0 / 1) with the ordered split, 0.344 / 0.178 with pairs: the leak flattered the demo.

_MAX_PERMUTED = 1 << 22  # up to 3 digits (10^6 pairs): one explicit permutation, 8 MB


class _AdditionTask(Task):
    def __init__(self, *, digits: int, seed: int, validation_size: int, test_size: int,
                 split: str = "pairs"):  # fmt: skip
        if not isinstance(digits, int) or not 1 <= digits <= 9:
            raise ValueError(f"addition digits must be an int in [1, 9], got {digits!r}")
        if split not in ("pairs", "ordered"):
            raise ValueError(f"addition split must be 'pairs' or 'ordered', got {split!r}")
        self.digits, self.seed, self.split = digits, seed, split
        self.name = f"addition-{digits}d"
        self.validation_size, self.test_size = validation_size, test_size
        self._base = 10**digits
        _check_eval_sizes(
            size=self._size, validation_size=validation_size, test_size=test_size, what=self.name
        )
        self._permuted = self._size <= _MAX_PERMUTED
        if self._permuted:
            self._order = np.random.default_rng(seed).permutation(self._size)
        else:
            # too many pairs to permute: a seeded stream of distinct random pairs, grown on
            # demand. Still nested and deterministic; differs from a permutation only in
            # how it is computed.
            self._order_list: list[int] = []
            self._seen: set[int] = set()
            self._rng = random.Random(seed)
        if split == "pairs":
            self._split_pairs()

    @property
    def _size(self) -> int:
        return self._base**2

    def _pair(self, k: int) -> int:
        """The problem's key: (a, b) and (b, a) share min(a, b) * base + max(a, b)."""
        a, b = divmod(k, self._base)
        return min(a, b) * self._base + max(a, b)

    def _content_key(self, ex: Example) -> object:
        a, b = (int(x) for x in ex.prompt[:-1].split("+"))
        return (min(a, b), max(a, b))

    def _stream(self, i: int) -> int:
        """The i-th ordered pair of the seeded order (permutation, or the distinct random stream)."""
        if self._permuted:
            return int(self._order[i])
        while len(self._order_list) <= i:
            k = self._rng.randrange(self._size)
            if k not in self._seen:
                self._seen.add(k)
                self._order_list.append(k)
        return self._order_list[i]

    def _split_pairs(self) -> None:
        base = self._base
        room = {"validation": self.validation_size, "test": self.test_size}
        members: dict[str, list[int]] = {"validation": [], "test": []}
        held: set[int] = set()  # pair keys in validation or test
        visited: set[int] = set()
        i = 0
        while room["validation"] or room["test"]:
            if self._permuted and i >= self._size:
                raise TaskError(
                    f"{self.name}: cannot fill validation_size={self.validation_size} and "
                    f"test_size={self.test_size} with whole a+b / b+a pairs; use task.split: ordered"
                )
            if not self._permuted and 1 in room.values() and i > 64 * (self.validation_size + self.test_size):
                # a huge space has few a+a problems: draw one for the odd room directly
                a = self._rng.randrange(base)
                k = a * base + a
            else:
                k = self._stream(i)
                i += 1
            key = self._pair(k)
            if key in visited:
                continue
            visited.add(key)
            a, b = divmod(k, base)
            group = [k] if a == b else [k, b * base + a]
            for split in ("validation", "test"):
                if room[split] >= len(group):
                    members[split] += group
                    room[split] -= len(group)
                    held.add(key)
                    break
        self._eval = members["validation"] + members["test"]
        if self._permuted:
            order = self._order
            a, b = order // base, order % base
            keys = np.minimum(a, b) * base + np.maximum(a, b)
            self._train = order[~np.isin(keys, np.fromiter(held, dtype=np.int64, count=len(held)))]
        else:
            self._held = held
            self._seen.update(self._eval)
            self._train_list: list[int] = []
            self._next = i  # the stream's next position to read for training pairs

    def _index(self, i: int) -> int:
        if self.split == "ordered":
            return self._stream(i)
        n_eval = len(self._eval)
        if i < n_eval:
            return self._eval[i]
        j = i - n_eval
        if self._permuted:
            return int(self._train[j])
        while len(self._train_list) <= j:
            k = self._stream(self._next)
            self._next += 1
            if self._pair(k) not in self._held:
                self._train_list.append(k)
        return self._train_list[j]

    def _example(self, i: int) -> Example:
        a, b = divmod(self._index(i), self._base)
        return Example(prompt=f"{a}+{b}=", completion=str(a + b))


# -----------------------------------------------------------------------------
# 3. JSONL: one {"prompt": str, "completion": str} object per line; blank lines skipped
# (4. chat files are read the same way, by _read_chat)


class _FileTask(Task):
    def __init__(self, *, kind: str, path: str, seed: int, validation_size: int, test_size: int):
        self.path, self.seed = path, seed
        self.name = f"{kind}:{Path(path).name}"
        self.validation_size, self.test_size = validation_size, test_size
        examples = (_read_chat if kind == "chat" else _read_jsonl)(path)
        _check_eval_sizes(
            size=len(examples), validation_size=validation_size, test_size=test_size, what=path
        )
        order = np.random.default_rng(seed).permutation(len(examples))
        self._examples = [examples[int(k)] for k in order]

    @property
    def _size(self) -> int:
        return len(self._examples)

    def _example(self, i: int) -> Example | ChatExample:
        return self._examples[i]


def _lines(path: str):
    """(lineno, "file line N", obj) per non-blank line; TaskError for an unreadable file or bad JSON."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskError(f"task file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise TaskError(f"task file {path} is not UTF-8 text: {e}") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{where}: invalid JSON ({e.msg}): {line[:80]!r}") from None
        yield lineno, where, obj


def _read_jsonl(path: str) -> list[Example]:
    examples = []
    name = Path(path).name
    for lineno, where, obj in _lines(path):
        if not isinstance(obj, dict):
            raise TaskError(f"{where}: expected an object with 'prompt' and 'completion', got {obj!r:.80}")
        for field_ in ("prompt", "completion"):
            if field_ not in obj:
                raise TaskError(f"{where}: missing field {field_!r} (has {sorted(obj)})")
            if not isinstance(obj[field_], str):
                raise TaskError(f"{where}: field {field_!r} must be a string, got {obj[field_]!r:.80}")
        if not obj["completion"]:
            raise TaskError(f"{where}: field 'completion' must not be empty, got ''")
        examples.append(Example(prompt=obj["prompt"], completion=obj["completion"], source=f"{name}:{lineno}"))
    if not examples:
        raise TaskError(f"task file {path} has no examples")
    return examples


# -----------------------------------------------------------------------------
# 4. Chat: one {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}
# per line, the last message the assistant's (the reply exact match scores). Other keys, in
# the line's object or a message, are ignored.


def _read_chat(path: str) -> list[ChatExample]:
    examples = []
    name = Path(path).name
    for lineno, where, obj in _lines(path):
        if not isinstance(obj, dict):
            raise TaskError(f"{where}: expected an object with 'messages', got {obj!r:.80}")
        if "messages" not in obj:
            raise TaskError(f"{where}: missing field 'messages' (has {sorted(obj)})")
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise TaskError(f"{where}: field 'messages' must be a non-empty list of "
                            f"{{'role', 'content'}} objects, got {msgs!r:.80}")  # fmt: skip
        turns = []
        for j, m in enumerate(msgs):
            f = f"messages[{j}]"
            if not isinstance(m, dict):
                raise TaskError(f"{where}: field {f!r} must be an object with 'role' and 'content', got {m!r:.80}")
            for key in ("role", "content"):
                if key not in m:
                    raise TaskError(f"{where}: field {f!r}: missing field {key!r} (has {sorted(m)})")
            role, content = m["role"], m["content"]
            if role not in ROLES:
                raise TaskError(f"{where}: field '{f}.role' must be one of "
                                f"{', '.join(map(repr, ROLES))}, got {role!r:.80}")  # fmt: skip
            if not isinstance(content, str):
                raise TaskError(f"{where}: field '{f}.content' must be a string, got {content!r:.80}")
            if not content.strip():
                raise TaskError(f"{where}: field '{f}.content' must not be empty, got {content!r}")
            turns.append((role, content))
        roles = [r for r, _ in turns]
        if "assistant" not in roles:
            raise TaskError(f"{where}: field 'messages' must hold an assistant turn, got roles {roles}")
        if roles[-1] != "assistant":
            raise TaskError(f"{where}: field 'messages[{len(roles) - 1}].role' must be 'assistant' "
                            f"(the last message is the reply that is scored), got {roles[-1]!r}")  # fmt: skip
        examples.append(ChatExample(messages=tuple(turns), source=f"{name}:{lineno}"))
    if not examples:
        raise TaskError(f"task file {path} has no examples")
    return examples


# -----------------------------------------------------------------------------
# 5. Factory


def make_task(
    *,
    kind: str = "addition",
    digits: int = 2,
    path: str | None = None,
    seed: int = 0,
    validation_size: int = 500,
    test_size: int = 500,
    split: str | None = None,
) -> Task:
    """A task by kind: "addition" (uses digits, split: "pairs" (default) | "ordered"), "jsonl" or
    "chat" (use path). seed fixes the split."""
    if kind == "addition":
        return _AdditionTask(digits=digits, seed=seed, validation_size=validation_size,
                             test_size=test_size, split=split or "pairs")  # fmt: skip
    if kind in ("jsonl", "chat"):
        if not path:
            raise ValueError(f"task kind {kind!r} needs a path, got {path!r}")
        return _FileTask(kind=kind, path=path, seed=seed, validation_size=validation_size, test_size=test_size)
    raise ValueError(f"task kind must be 'addition', 'jsonl' or 'chat', got {kind!r}")


# -----------------------------------------------------------------------------
# 6. Token ids for a tokenizer: prompt ids (with the tokenizer's own bos, if it adds one) and answer
# ids = completion ids + eos. Loss, accuracy and log-prob are over answer ids only.
#
# A chat is rendered with the tokenizer's chat template (apply_chat_template). Its answer is the
# last assistant turn; the prompt is everything before it, with the generation prompt, and the
# earlier assistant turns are targets too (PromptIds.targets): loss and metrics cover assistant
# tokens only. An assistant turn's targets are what the template writes for the message after
# the generation prompt, up to and including its end token (eos or the chat end token, e.g.
# <|im_end|>); a template that writes no end token gets the tokenizer's eos after the message,
# so a reply can stop. A tokenizer without a chat template gets render_plain's text.
#
# train.max_length: an example longer than max_length tokens keeps its first max_length (the
# answer loses its tail, end token included); one whose prompt alone fills max_length is an
# error (nothing of its answer would be left).

Tokenized = list[tuple[list[int], list[int]]]  # [(prompt_ids, answer_ids)]


class PromptIds(list):
    """A chat's prompt ids; `targets` are its positions that are assistant tokens (earlier turns),
    trained on and scored like the answer's."""

    def __init__(self, ids, targets=()):
        super().__init__(ids)
        self.targets = tuple(targets)


def prompt_targets(prompt: list[int]) -> tuple[int, ...]:
    return getattr(prompt, "targets", ())


@dataclass
class TokenizedSplit:
    items: Tokenized
    truncated: list[int]  # indices into items cut to max_length
    longest: int  # tokens of the longest example before truncation


def render_plain(messages, *, sep: str = "\n", generation_prompt: bool = False) -> str:
    """A chat as plain role-prefixed text, for a tokenizer without a chat template:
    "user: 2+2?\\nassistant: 4\\n" (sep "\\n"; " " for a tokenizer without a newline, the
    embedded model's). As token ids, every assistant message is followed by eos."""
    text = "".join(f"{role}: {content}{sep}" for role, content in messages)
    return text + ("assistant: " if generation_prompt else "")


def _plain_sep(tokenizer) -> str:
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    return "\n" if ids and (unk is None or unk not in ids) else " "


def _chat_segments(ex: ChatExample, tokenizer) -> list[tuple[str, bool]]:
    """The chat's text as (text, is_assistant) segments that concatenate to its rendering."""
    template = bool(getattr(tokenizer, "chat_template", None))
    sep = None if template else _plain_sep(tokenizer)

    def render(msgs, gen: bool) -> str:
        if not template:
            return render_plain(msgs, sep=sep, generation_prompt=gen)
        chat = [{"role": r, "content": c} for r, c in msgs]
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)

    segments: list[tuple[str, bool]] = []
    done = ""  # the rendering through the last assistant turn handled
    for k, (role, _) in enumerate(ex.messages):
        if role != "assistant":
            continue
        try:
            before, through = render(ex.messages[:k], True), render(ex.messages[: k + 1], False)
        except Exception as e:  # a template that refuses this conversation (e.g. no system role)
            raise TaskError(f"{ex.source}: the tokenizer's chat template cannot render messages[:{k + 1}]: "
                            f"{type(e).__name__}: {e}") from None  # fmt: skip
        if not (before.startswith(done) and through.startswith(before)):
            raise TaskError(
                f"{ex.source}: the tokenizer's chat template renders messages[{k}] differently once "
                f"other turns follow (or without the generation prompt), so its tokens cannot be "
                f"masked: {through[len(done):][:80]!r}"
            )
        segments += [(before[len(done):], False), (through[len(before):], True)]
        done = through
    return segments


def _tokenize_chat(ex: ChatExample, tokenizer, *, eos: int, stop_ids: tuple[int, ...]):
    """(prompt PromptIds, answer ids) of one chat."""
    template = bool(getattr(tokenizer, "chat_template", None))
    ids: list[int] = []
    targets: list[int] = []
    carry = ""  # whitespace after a reply the template ends with no end token: the next segment's
    reply_at = (0, 0)  # [start, end) of the last reply in ids
    for n, (text, is_assistant) in enumerate(_chat_segments(ex, tokenizer)):
        if not is_assistant:
            # the fallback's first segment gets the tokenizer's bos; a template writes its own
            ids += tokenizer(carry + text, add_special_tokens=(n == 0 and not template))["input_ids"]
            carry = ""
            continue
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        end = next((j for j, t in enumerate(toks) if t in stop_ids), None)
        if end is not None:
            reply, rest = toks[: end + 1], toks[end + 1 :]
        else:
            body = text.rstrip()
            reply, rest = tokenizer(body, add_special_tokens=False)["input_ids"] + [eos], []
            carry = text[len(body) :]
        reply_at = (len(ids), len(ids) + len(reply))
        targets += range(*reply_at)
        ids += reply + rest
    start, stop = reply_at  # the answer: the last reply (what follows its end token: nothing to learn)
    return PromptIds(ids[:start], [t for t in targets if 0 < t < start]), ids[start:stop]


def _unknown_chars(ex, tokenizer, unk: int) -> str:
    text = ex.prompt + ex.completion if isinstance(ex, Example) else "".join(c for _, c in ex.messages)
    return "".join(sorted({ch for ch in text if unk in tokenizer(ch, add_special_tokens=False)["input_ids"]}))


def _describe(ex) -> str:
    if isinstance(ex, Example):
        return f"({ex.prompt!r} -> {ex.completion!r})"
    return f"({ex.source})"


def tokenize_split(examples: list, tokenizer, *, split: str, max_len: int, max_length: int | None = None,
                   stop_ids: tuple[int, ...] | None = None) -> TokenizedSplit:  # fmt: skip
    """(prompt_ids, answer_ids) per example, each at most max_length tokens (None: no limit;
    the indices of those cut are in .truncated). max_len: the model's positions; an example
    longer than them (after truncation) is an error. stop_ids: the ids that end a reply (default
    models.end_of_answer_ids: eos and the chat end token); only chats need them."""
    if not examples:
        return TokenizedSplit([], [], 0)
    unk, eos = tokenizer.unk_token_id, tokenizer.eos_token_id
    if eos is None:
        raise TaskError(f"the model's tokenizer has no eos token: answers could not end ({tokenizer!r:.80})")
    if isinstance(examples[0], ChatExample):
        if stop_ids is None:
            from scaling.models import end_of_answer_ids  # torch: only where a tokenizer is in use

            stop_ids = end_of_answer_ids(tokenizer)
        pairs = [_tokenize_chat(ex, tokenizer, eos=eos, stop_ids=stop_ids) for ex in examples]
    else:
        prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
        completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
        pairs = [(p, c + [eos]) for p, c in zip(prompts, completions, strict=True)]
    out, truncated, longest = [], [], 0
    for i, (p, a) in enumerate(pairs):
        ex = examples[i]
        where = f"{split} example {i}" + (f" ({ex.source})" if ex.source else "")
        if unk is not None and (unk in p or unk in a):
            raise TaskError(
                f"{where} {_describe(ex)} has characters the model's tokenizer does not know: "
                f"{_unknown_chars(ex, tokenizer, unk)!r}"
            )
        if not p:  # nothing to predict the first answer token from
            raise TaskError(f"{where} has an empty prompt and the tokenizer adds no bos token")
        n = len(p) + len(a)
        longest = max(longest, n)
        if max_length is not None and n > max_length:
            if len(p) >= max_length:
                raise TaskError(
                    f"{where}: train.max_length {max_length} leaves no token of its answer (its prompt "
                    f"is {len(p)} tokens); raise train.max_length or shorten the example"
                )
            a = a[: max_length - len(p)]
            truncated.append(i)
            n = max_length
        if n > max_len:
            what = ex.prompt if isinstance(ex, Example) else ex.source
            raise TaskError(
                f"{where} is {n} tokens, longer than the model's {max_len} positions: {what!r:.60}"
                + ("" if max_length is not None else "; set train.max_length to truncate")
            )
        out.append((p, a))
    return TokenizedSplit(out, truncated, longest)


def _tokenize(examples: list, tokenizer, *, split: str, max_len: int, max_length: int | None = None) -> Tokenized:
    return tokenize_split(examples, tokenizer, split=split, max_len=max_len, max_length=max_length).items


# -----------------------------------------------------------------------------
# 7. Before a study starts: the warnings its data deserves (scaling/task_check.py calls this in
# the driver, with the model's tokenizer when train.max_length is set)


def data_warnings(task: Task, *, dataset_size: int | None = None, tokenizer=None, max_length: int | None = None,
                  max_len: int = 10**9, show: int = 5) -> list[str]:  # fmt: skip
    """Duplicates across splits (by content: a+b and b+a are one addition problem) among the
    first dataset_size training examples, validation and test, naming where each sits; and,
    with a tokenizer and max_length, how many examples of each split train.max_length cuts."""
    out = []
    dups = task.cross_split_duplicates(dataset_size)
    if dups:
        shown = "; ".join(" = ".join(f"{split} {where}" for split, where in g) for g in dups[:show])
        more = f"; and {len(dups) - show} more" if len(dups) > show else ""
        out.append(f"task {task.name}: {len(dups)} problem(s) appear in more than one split (same content): "
                   f"{shown}{more}")  # fmt: skip
    if tokenizer is not None and max_length is not None:
        n_train = task.max_train_size if dataset_size is None else dataset_size
        splits = {"training": task.train_pool(n_train), "validation": task.validation(), "test": task.test()}
        counts = []
        for split, examples in splits.items():
            tok = tokenize_split(examples, tokenizer, split=split, max_len=max_len, max_length=max_length)
            if tok.truncated:
                first = examples[tok.truncated[0]]
                where = first.source or f"{split} example {tok.truncated[0]}"
                counts.append(f"{len(tok.truncated)} of {len(examples)} {split} examples (first: {where}; "
                              f"longest {tok.longest} tokens)")  # fmt: skip
        if counts:
            out.append(f"train.max_length {max_length} truncates " + ", ".join(counts))
    return out
