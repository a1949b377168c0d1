"""Evaluation of G adapters at once on one eval set (G = 1: a solo trial).

Every chunk is repeated G times (group g = rows [g*n, (g+1)*n)), so each adapter sees
exactly the chunks, shapes and reductions it would see alone; the base runs once per
chunk for all of them. The caller binds the adapters to the layers' layout first.

Read top to bottom:
  1. teacher-forced scoring: eval_loss, token_accuracy, answer_logprob
  2. greedy decoding with the KV cache: exact_match
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scaling.models import answer_matches
from scaling.tasks import Tokenized
from scaling.trial.base import left_padded, n_targets, right_padded

__all__ = ["EVAL_KEYS", "evaluate"]

EVAL_KEYS = ("eval_loss", "token_accuracy", "exact_match", "answer_logprob")


@torch.no_grad()
def evaluate(model, items: Tokenized, *, groups: int = 1, pad_id: int, cache_kw: str, batch_size: int,
             device: str, stop_ids: tuple[int, ...]) -> list[dict[str, float]]:  # fmt: skip
    """Per group: eval_loss = mean cross-entropy per answer token; token_accuracy =
    teacher-forced argmax over answer tokens; answer_logprob = mean over examples of the
    summed log-prob of the answer; exact_match = greedy decoding gives the completion and
    then a stop (``stop_ids``: eos, and the chat end token where the tokenizer has one). A chat's
    earlier assistant turns count as answer tokens for all but exact_match, which scores the
    last reply."""
    G = groups
    if not items:  # validation_size or test_size 0
        return [dict.fromkeys(EVAL_KEYS, math.nan) for _ in range(G)]
    loss_sum, correct, logprob_sum, exact = [0.0] * G, [0] * G, [0.0] * G, [0] * G
    n_tokens = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        n = len(chunk)
        # 1. teacher-forced scoring: per group, sums over its own copy of the chunk, all G
        # from one cross-entropy and one host sync
        x, y = right_padded(chunk, pad_id, device)  # (n, T), (n, T)
        logits = model(input_ids=x.repeat(G, 1)).logits.float()  # (G*n, T, V)
        Y = y.repeat(G, 1)  # (G*n, T)
        mask = Y != -100  # (G*n, T)
        n_tokens += n_targets(chunk)
        nll = F.cross_entropy(logits.transpose(1, 2), Y, ignore_index=-100, reduction="none")  # (G*n, T)
        sums = torch.stack([
            nll.view(G, -1).sum(1),  # ignored positions are 0
            ((logits.argmax(-1) == Y) & mask).view(G, -1).sum(1).to(nll.dtype),
        ]).tolist()  # fmt: skip
        for g in range(G):
            loss_sum[g] += sums[0][g]
            logprob_sum[g] -= sums[0][g]
            correct[g] += int(sums[1][g])
        # 2. greedy decoding, batched with left padding and the KV cache
        answers = [a for _, a in chunk]
        steps = max(len(a) for a in answers)  # longest completion + eos
        ids, attn, pos = (t.repeat(G, 1) for t in left_padded([p for p, _ in chunk], pad_id, device))
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        generated = []
        for k in range(steps):
            nxt = out.logits[:, -1].argmax(-1)  # (G*n,)
            generated.append(nxt)
            if k == steps - 1:
                break
            attn = torch.cat([attn, attn.new_ones(G * n, 1)], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                        use_cache=True, **{cache_kw: getattr(out, cache_kw)})  # fmt: skip
        gen = torch.stack(generated, 1).tolist()  # (G*n, steps)
        for g in range(G):
            # a ends in eos: the completion, then any stop id (eos or the chat end token)
            exact[g] += sum(_matches(gen[g * n + i], a, stop_ids) for i, a in enumerate(answers))
    m = len(items)
    return [
        {"eval_loss": loss_sum[g] / n_tokens, "token_accuracy": correct[g] / n_tokens,
         "exact_match": exact[g] / m, "answer_logprob": logprob_sum[g] / m}
        for g in range(G)
    ]  # fmt: skip


def _matches(generated: list[int], answer: list[int], stop_ids: tuple[int, ...]) -> bool:
    """answer_matches; an answer cut by train.max_length (no stop id at its end) matches when
    its kept tokens are generated (where the reply would have stopped is unknown)."""
    if answer and answer[-1] not in stop_ids:
        return list(generated[: len(answer)]) == list(answer)
    return answer_matches(generated, answer, stop_ids=stop_ids)
