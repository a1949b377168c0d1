"""Token ids for a model's tokenizer, and what a study should hear about its data before it starts.

The tokenizer is handed in, so no torch here. A prompt's ids carry the tokenizer's own bos
(if it adds one); an answer's ids are the completion's plus eos. Chats are rendered with the
tokenizer's chat template, or role-prefixed plain text where it has none (render_plain).

Read top to bottom:
  1. token ids (and the check that every character is in the tokenizer's vocabulary)
  2. data_warnings: duplicates across splits, truncation by train.max_length
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling.tasks import ChatExample, Example, Task, TaskError

__all__ = [
    "PromptIds", "Tokenized", "TokenizedSplit", "data_warnings", "prompt_targets", "render_plain", "tokenize_split",
]  # fmt: skip


# -----------------------------------------------------------------------------
# 1. Token ids for a tokenizer: prompt ids (with the tokenizer's own bos, if it adds one) and answer
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


def _unknown_in_content(examples: list, tokenizer, stop_ids: tuple[int, ...] | None) -> list[bool] | None:
    """Per example, whether its text holds characters the tokenizer maps to unk, checked on the text
    alone, where the unk id is also the tokenizer's bos, eos or a stop id: GPT-2's one
    <|endoftext|> is all three, so the eos every answer ends with would read as unknown. None where
    the unk id is unk only (then the example's own ids are checked)."""
    unk = tokenizer.unk_token_id
    if unk is None or unk not in {tokenizer.eos_token_id, tokenizer.bos_token_id, *(stop_ids or ())}:
        return None
    texts = [[e.prompt, e.completion] if isinstance(e, Example) else [c for _, c in e.messages] for e in examples]
    ids = iter(tokenizer([t for ts in texts for t in ts], add_special_tokens=False)["input_ids"])
    return [any(unk in next(ids) for _ in ts) for ts in texts]


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
    unknown = _unknown_in_content(examples, tokenizer, stop_ids)  # None: an unk id is only ever unk
    out, truncated, longest = [], [], 0
    for i, (p, a) in enumerate(pairs):
        ex = examples[i]
        where = f"{split} example {i}" + (f" ({ex.source})" if ex.source else "")
        if unk is not None and (unknown[i] if unknown is not None else (unk in p or unk in a)):
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
# 2. Before a study starts: the warnings its data deserves (scaling/task_check.py calls this in
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
