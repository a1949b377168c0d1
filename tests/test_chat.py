"""Real data (issue 18, section 2): task.kind chat, train.max_length, duplicates across splits,
and the addition split that keeps a+b and b+a together.

Tokenizers are real and local: the embedded model's character tokenizer (no newline, no chat
template), one built here that knows a newline, and the embedded one given a chat template.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from scaling.spec import SpecError, parse_spec
from scaling.tasks import (
    ChatExample,
    TaskError,
    data_warnings,
    make_task,
    prompt_targets,
    render_plain,
    tokenize_split,
)
from scaling.tiny import tiny_tokenizer

DATA = Path(__file__).parent / "data" / "chat_small.jsonl"  # 64 "rev <letters>" chats, 1-2 turns


def _write(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def _tokens(tok, ids) -> list[str]:
    return tok.convert_ids_to_tokens(list(ids))


TWO_TURNS = ChatExample((("user", "rev ab"), ("assistant", "ba"), ("user", "rev abc"), ("assistant", "cba")),
                        source="hand:1")  # fmt: skip


# 1. bad lines: file, line, field, rule and value ------------------------------------------------

GOOD = json.dumps(_chat(("user", "rev ab"), ("assistant", "ba")))


@pytest.mark.parametrize(("line", "message"), [
    ('{"messages": [', r"line 2: invalid JSON"),
    ("[1, 2]", r"line 2: expected an object with 'messages', got \[1, 2\]"),
    ('{"msgs": []}', r"line 2: missing field 'messages' \(has \['msgs'\]\)"),
    ('{"messages": []}', r"line 2: field 'messages' must be a non-empty list .*, got \[\]"),
    ('{"messages": ["hi"]}', r"line 2: field 'messages\[0\]' must be an object with 'role' and 'content', got 'hi'"),
    ('{"messages": [{"role": "user"}]}', r"line 2: field 'messages\[0\]': missing field 'content' \(has \['role'\]\)"),
    (json.dumps(_chat(("bot", "x"), ("assistant", "y"))),
     r"line 2: field 'messages\[0\].role' must be one of 'system', 'user', 'assistant', got 'bot'"),
    ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}',
     r"line 2: field 'messages\[0\].content' must be a string, got 5"),
    (json.dumps(_chat(("user", "x"), ("assistant", " "))), r"line 2: field 'messages\[1\].content' must not be empty, got ' '"),
    (json.dumps(_chat(("system", "s"), ("user", "x"))),
     r"line 2: field 'messages' must hold an assistant turn, got roles \['system', 'user'\]"),
    (json.dumps(_chat(("user", "x"), ("assistant", "y"), ("user", "z"))),
     r"line 2: field 'messages\[2\].role' must be 'assistant' \(the last message is the reply that is scored\), got 'user'"),
])  # fmt: skip
def test_bad_chat_lines_name_file_line_field_rule_and_value(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", [GOOD, line, GOOD, GOOD])
    with pytest.raises(TaskError, match=message) as info:
        make_task(kind="chat", path=path, validation_size=1, test_size=1)
    assert str(info.value).startswith(f"{path} line 2:")


def test_a_good_chat_file_splits_like_jsonl():
    task = make_task(kind="chat", path=str(DATA), seed=0, validation_size=8, test_size=8)
    assert task.name == "chat:chat_small.jsonl" and task.max_train_size == 48
    everything = task.validation() + task.test() + task.train_pool(48)
    assert sorted(int(e.source.split(":")[1]) for e in everything) == list(range(1, 65))
    assert task.train_pool(10) == task.train_pool(48)[:10]
    assert all(e.messages[-1][0] == "assistant" for e in everything)


# 2. rendering and label masks ---------------------------------------------------------------------


def _newline_tokenizer() -> PreTrainedTokenizerFast:
    """A character tokenizer like the embedded one that also knows a newline."""
    chars = "\n abcdefghijklmnopqrstuvwxyz:?+=0123456789"
    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *chars])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")  # fmt: skip


def test_without_a_chat_template_chats_are_role_prefixed_text():
    chat = [("system", "be brief"), ("user", "2+2?"), ("assistant", "4")]
    assert render_plain(chat) == "system: be brief\nuser: 2+2?\nassistant: 4\n"
    assert render_plain(chat[:2], generation_prompt=True) == "system: be brief\nuser: 2+2?\nassistant: "
    # as tokens: bos first, every reply ends in eos; a newline where the tokenizer has one...
    tok = _newline_tokenizer()
    ((p, a),) = tokenize_split([TWO_TURNS], tok, split="test", max_len=99).items
    assert "".join(_tokens(tok, p + a)) == "<bos>user: rev ab\nassistant: ba<eos>\nuser: rev abc\nassistant: cba<eos>"
    assert "".join(_tokens(tok, a)) == "cba<eos>"  # the answer: the last reply
    # ... and a space for the embedded model's tokenizer, which has none
    tiny = tiny_tokenizer()
    ((p, a),) = tokenize_split([TWO_TURNS], tiny, split="test", max_len=99).items
    assert "".join(_tokens(tiny, p + a)) == "<bos>user: rev ab assistant: ba<eos> user: rev abc assistant: cba<eos>"


def test_label_masks_cover_exactly_the_assistant_tokens():
    from scaling.trial.base import n_targets, right_padded

    tok = tiny_tokenizer()
    items = tokenize_split([TWO_TURNS], tok, split="training", max_len=99).items
    x, y = right_padded(items, tok.pad_token_id, "cpu")
    # "<bos>" + "user: rev ab assistant: " (24) -> "ba<eos>" at 25..27; " user: rev abc assistant: "
    # (26) at 28..53 -> "cba<eos>" at 54..57. Position t predicts token t + 1.
    assert (y[0] != -100).nonzero().flatten().tolist() == [24, 25, 26, 53, 54, 55, 56]
    assert _tokens(tok, y[0][y[0] != -100].tolist()) == ["b", "a", "<eos>", "c", "b", "a", "<eos>"]
    assert prompt_targets(items[0][0]) == (25, 26, 27) and n_targets(items) == 7
    seq = x[0].tolist() + [items[0][1][-1]]
    assert all(seq[t + 1] == y[0, t] for t in (y[0] != -100).nonzero().flatten().tolist())


CHATML_ISH = ("{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|> {% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}")  # fmt: skip


def test_a_chat_template_is_used_and_its_end_token_ends_every_reply():
    from scaling.models import end_of_answer_ids

    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML_ISH
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_answer_ids(tok) == (tok.eos_token_id, im_end)
    ((p, a),) = tokenize_split([TWO_TURNS], tok, split="test", max_len=99).items
    # the template's text, no bos of the tokenizer's own (the template writes what it wants)
    assert "".join(_tokens(tok, p + a)) == ("<|im_start|>user: rev ab<|im_end|> <|im_start|>assistant: ba<|im_end|> "
                                            "<|im_start|>user: rev abc<|im_end|> <|im_start|>assistant: cba<|im_end|>")
    # targets: each reply through its end token; the space the template writes after it is not one
    assert _tokens(tok, a) == ["c", "b", "a", "<|im_end|>"]
    assert _tokens(tok, [p[t] for t in prompt_targets(p)]) == ["b", "a", "<|im_end|>"]
    # a template that writes no end token after a reply: the tokenizer's eos follows it
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}assistant> {% endif %}")  # fmt: skip
    ((p, a),) = tokenize_split([TWO_TURNS], tok, split="test", max_len=99).items
    assert "".join(_tokens(tok, p + a)) == "user> rev ab assistant> ba<eos> user> rev abc assistant> cba<eos>"


def test_a_template_that_renders_earlier_turns_differently_is_refused():
    tok = tiny_tokenizer()
    tok.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}:{% endif %}"  # last turn only
    with pytest.raises(TaskError, match=r"hand:1: the tokenizer's chat template renders messages\[1\] differently"):
        tokenize_split([TWO_TURNS], tok, split="test", max_len=99)


def test_characters_the_tokenizer_does_not_know_name_the_line(tmp_path):
    path = _write(tmp_path / "c.jsonl", [GOOD, json.dumps(_chat(("user", "Rev ab"), ("assistant", "ba")))])
    task = make_task(kind="chat", path=path, validation_size=0, test_size=1)
    examples = task.test() + task.train_pool(1)
    with pytest.raises(TaskError, match=r"\(c.jsonl:2\).*does not know: 'R'"):
        tokenize_split(examples, tiny_tokenizer(), split="test", max_len=99)


# 3. train.max_length ------------------------------------------------------------------------------


def _planted(tmp_path) -> str:
    """20 chats of 26 tokens (embedded tokenizer), and lines 3, 8 and 15 of 45 tokens."""
    letters = "abcdefghijklmnopqrst"
    rows = [_chat(("user", f"rev {c}"), ("assistant", c)) for c in letters]
    for line in (3, 8, 15):
        rows[line - 1] = _chat(("user", f"rev {letters[line]}"), ("assistant", letters[line:] + letters[:line]))
    return _write(tmp_path / "long.jsonl", rows)


def test_max_length_truncates_and_counts_exactly(tmp_path):
    task = make_task(kind="chat", path=_planted(tmp_path), seed=0, validation_size=4, test_size=4)
    tok = tiny_tokenizer()
    long = {"long.jsonl:3", "long.jsonl:8", "long.jsonl:15"}
    total = 0
    for split, examples in (("training", task.train_pool(12)), ("validation", task.validation()), ("test", task.test())):
        out = tokenize_split(examples, tok, split=split, max_len=64, max_length=30)
        assert [examples[i].source for i in out.truncated] == [e.source for e in examples if e.source in long]
        for i, (p, a) in enumerate(out.items):
            assert len(p) + len(a) == (30 if i in out.truncated else 26)
            assert (a[-1] == tok.eos_token_id) == (i not in out.truncated)  # a cut answer loses its eos
        assert tokenize_split(examples, tok, split=split, max_len=64).truncated == []  # no max_length: none
        total += len(out.truncated)
    assert total == 3
    (warning,) = data_warnings(task, tokenizer=tok, max_length=30)
    shown = {s: sum(e.source in long for e in ex) for s, ex in
             (("training", task.train_pool(12)), ("validation", task.validation()), ("test", task.test()))}  # fmt: skip
    assert warning.startswith("train.max_length 30 truncates ")
    for split, n in shown.items():
        if n:
            assert f"{n} of {12 if split == 'training' else 4} {split} examples" in warning
        else:
            assert f" {split} examples" not in warning
    assert "longest 45 tokens" in warning


def test_a_prompt_that_fills_max_length_is_an_error_naming_the_line(tmp_path):
    task = make_task(kind="chat", path=_planted(tmp_path), seed=0, validation_size=4, test_size=4)
    with pytest.raises(TaskError, match=r"\(long.jsonl:\d+\): train.max_length 24 leaves no token of its "
                                        r"answer \(its prompt is 24 tokens\)"):  # fmt: skip
        tokenize_split(task.train_pool(12), tiny_tokenizer(), split="training", max_len=64, max_length=24)


def test_a_cut_reference_matches_on_its_kept_tokens():
    from scaling.trial.evaluate import _matches

    eos = 2
    assert _matches([5, 6, 9], [5, 6], (eos,))  # cut: no stop expected
    assert not _matches([5, 7, 9], [5, 6], (eos,))
    assert _matches([5, 6, eos], [5, 6, eos], (eos,)) and not _matches([5, 6, 9], [5, 6, eos], (eos,))


def test_a_trial_reports_how_many_of_its_examples_were_cut(tmp_path, tiny_model_dir):
    from scaling.trial import TrialConfig, run_trial

    path = _planted(tmp_path)
    task = make_task(kind="chat", path=path, seed=0, validation_size=4, test_size=4)
    cfg = TrialConfig(model="tiny-llama", task_kind="chat", task_digits=2, task_path=path, task_seed=0,
                      dataset_size=10, epochs=1, learning_rate=1e-2, validation_size=4, test_size=4,
                      batch_size=8, max_length=30)  # fmt: skip
    (m,) = run_trial(cfg, cache={})
    long = {"long.jsonl:3", "long.jsonl:8", "long.jsonl:15"}
    assert m["train_truncated"] == sum(e.source in long for e in task.train_pool(10))
    assert m["val_truncated"] == sum(e.source in long for e in task.validation())
    assert m["test_truncated"] == sum(e.source in long for e in task.test())
    assert m["train_truncated"] + m["val_truncated"] + m["test_truncated"] == 3  # all 3 in these 18
    # tokens counted as trained on: 26 per whole example, 30 per cut one
    assert m["train_tokens"] == 26 * 10 + 4 * m["train_truncated"]
    (plain,) = run_trial(TrialConfig(**{**cfg.as_dict(), "max_length": None}), cache={})
    assert "train_truncated" not in plain and plain["train_tokens"] == 26 * 10 + 19 * m["train_truncated"]


def test_a_pack_trains_chats_as_each_would_alone(tiny_model_dir):
    """Earlier assistant turns are targets in a pack's shared step as in a solo trial."""
    from scaling.trial import TrialConfig, run_packed, run_trial

    base = dict(model="tiny-llama", task_kind="chat", task_digits=2, task_path=str(DATA), task_seed=0,
                epochs=2, validation_size=4, test_size=4, batch_size=8, max_length=58)  # fmt: skip
    cfgs = [TrialConfig(**base, dataset_size=16, learning_rate=1e-2, seed=0),
            TrialConfig(**base, dataset_size=8, learning_rate=3e-3, seed=1)]  # fmt: skip
    cache: dict = {}
    alone = [run_trial(c, cache=cache) for c in cfgs]
    packed = run_packed(cfgs, cache=cache, threads=1)
    for p_hist, a_hist in zip(packed, alone, strict=True):
        for p, a in zip(p_hist, a_hist, strict=True):
            assert p.keys() == a.keys()
            for k in p:
                if k != "wall_seconds":
                    assert abs(p[k] - a[k]) <= 1e-4, (k, p[k], a[k])
    assert alone[0][-1]["val_eval_loss"] < alone[0][0]["val_eval_loss"]


# 4. duplicates across splits, by content -----------------------------------------------------------


def _dup_jsonl(tmp_path) -> str:
    rows = [{"prompt": f"q{i}:", "completion": f"a{i}"} for i in range(1, 31)]
    rows[20], rows[9], rows[26] = rows[3], rows[8], rows[1]  # line 21 = 4, 10 = 9, 27 = 2
    return _write(tmp_path / "dup.jsonl", rows)


def test_duplicates_across_splits_name_both_lines(tmp_path):
    path = _dup_jsonl(tmp_path)
    # seed 1: lines 2 / 27 and 4 / 21 sit in two splits; 9 / 10 both in training (not a leak)
    task = make_task(kind="jsonl", path=path, seed=1, validation_size=5, test_size=5)
    assert task.cross_split_duplicates() == [[("validation", "dup.jsonl:2"), ("training", "dup.jsonl:27")],
                                             [("validation", "dup.jsonl:4"), ("test", "dup.jsonl:21")]]
    assert data_warnings(task) == [
        "task jsonl:dup.jsonl: 2 problem(s) appear in more than one split (same content): "
        "validation dup.jsonl:2 = training dup.jsonl:27; validation dup.jsonl:4 = test dup.jsonl:21"]
    # seed 0: only 27 / 2, and line 2 is not among the first 5 training examples
    task = make_task(kind="jsonl", path=path, seed=0, validation_size=5, test_size=5)
    assert task.cross_split_duplicates() == [[("validation", "dup.jsonl:27"), ("training", "dup.jsonl:2")]]
    assert task.cross_split_duplicates(5) == [] and data_warnings(task, dataset_size=5) == []


def test_chat_duplicates_are_found_by_content(tmp_path):
    rows = [_chat(("user", f"rev q{i}"), ("assistant", f"a{i}")) for i in range(1, 21)]
    rows[14] = rows[2]  # line 15 = line 3
    path = _write(tmp_path / "dup_chat.jsonl", rows)
    task = make_task(kind="chat", path=path, seed=0, validation_size=4, test_size=4)
    assert task.cross_split_duplicates() == [[("validation", "dup_chat.jsonl:3"), ("training", "dup_chat.jsonl:15")]]
    assert make_task(kind="chat", path=path, seed=1, validation_size=4, test_size=4).cross_split_duplicates() == []


def _pair(e) -> tuple[int, int]:
    a, b = map(int, e.prompt[:-1].split("+"))
    return min(a, b), max(a, b)


def test_addition_keeps_a_plus_b_and_b_plus_a_in_one_split_at_the_same_sizes():
    task = make_task(seed=0)
    val, test, train = task.validation(), task.test(), task.train_pool(9000)
    assert (len(val), len(test), len(train), task.max_train_size) == (500, 500, 9000, 9000)
    assert len(set(val) | set(test) | set(train)) == 10_000  # every ordered pair once
    keys = [{_pair(e) for e in split} for split in (val, test, train)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert len(keys[1]) == 251  # 500 test examples: 251 sums (both orders of each, a+a once)
    assert task.cross_split_duplicates() == [] and data_warnings(task) == []
    assert make_task(seed=0).train_pool(1200) == train[:1200]  # deterministic and nested
    # the old split leaked: 454 test sums' mirrors in training (62 of them within D=1,200)
    old = make_task(seed=0, split="ordered")
    leaked = [g for g in old.cross_split_duplicates() if {"test", "training"} <= {s for s, _ in g}]
    assert len(leaked) == 454
    assert sum(_pair(e) in {_pair(t) for t in old.train_pool(1200)} for e in old.test()) == 62
    (warning,) = data_warnings(old, dataset_size=1200)
    assert warning.startswith("task addition-2d: 125 problem(s) appear in more than one split")
    assert "validation 4+85= = training 85+4=" in warning


@pytest.mark.parametrize(("digits", "val", "test"), [(1, 5, 7), (3, 51, 49), (5, 51, 49)])
def test_odd_sizes_and_large_spaces_keep_pairs_together(digits, val, test):
    task = make_task(digits=digits, seed=2, validation_size=val, test_size=test)
    pool = task.train_pool(80 if digits == 1 else 300)
    assert (len(task.validation()), len(task.test())) == (val, test)
    assert len(set(task.validation() + task.test() + pool)) == val + test + len(pool)
    assert task.cross_split_duplicates(len(pool)) == []
    assert make_task(digits=digits, seed=2, validation_size=val, test_size=test).train_pool(50) == pool[:50]


# 5. the spec, and resuming ----------------------------------------------------------------------------

BASE = {"name": "c", "axes": {"dataset_size": [16]}, "learning_rate": {"low": 1e-3, "high": 1e-2}}


def test_spec_fields_for_chat_split_and_max_length(tmp_path):
    s = parse_spec({**BASE, "task": {"kind": "chat", "path": str(DATA)}, "train": {"max_length": 48}})
    assert (s.task.kind, s.task.split, s.train.max_length) == ("chat", None, 48)
    assert parse_spec(BASE).task.split == "pairs" and parse_spec(BASE).train.max_length is None
    for task, train, expected in [
        ({"kind": "chat"}, {}, "task.path is required when task.kind is 'chat'"),
        ({"kind": "chat", "path": "nope.jsonl"}, {}, "task.path: file must exist (got 'nope.jsonl')"),
        ({"kind": "jsonl", "path": str(DATA), "split": "pairs"}, {},
         "task.split: applies to task.kind 'addition' only (task.kind is 'jsonl') (got 'pairs')"),
        ({"split": "sorted"}, {}, "task.split"),
        ({}, {"max_length": 0}, "train.max_length: Input should be greater than 0 (got 0)"),
    ]:
        with pytest.raises(SpecError) as err:
            parse_spec({**BASE, "task": task, "train": train}, source="s.yaml")
        assert expected in str(err.value) and str(err.value).startswith("s.yaml: ")


def test_a_resume_with_an_edited_chat_file_is_refused_with_both_hashes(tmp_path):
    from scaling.run_record import _check_same_study, start_sweep

    path = tmp_path / "chat.jsonl"
    path.write_bytes(DATA.read_bytes())
    spec = parse_spec({**BASE, "task": {"kind": "chat", "path": str(path)}}, source="s.yaml")
    start_sweep(spec, tmp_path, {}, uid="u", optuna="sqlite://", max_trials=None, trials_recorded=0)
    old = hashlib.sha256(path.read_bytes()).hexdigest()
    assert yaml.safe_load((tmp_path / "spec.yaml").read_text())["run"]["task_sha256"] == old
    assert _check_same_study(spec, tmp_path)["task_sha256"] == old  # unchanged: resumes
    path.write_text(DATA.read_text().replace("rev", "rev ", 1))
    new = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(SpecError, match=rf"task.path: the task file {path} must not change.*{old[:12]}.*{new[:12]}"):
        _check_same_study(spec, tmp_path)


def test_an_older_spec_copy_resumes_unless_the_addition_split_changed(tmp_path):
    from scaling.run_record import _check_same_study

    spec = parse_spec(BASE)
    saved = spec.to_record(exclude={"packing", "tracking"})
    del saved["task"]["split"], saved["train"]["max_length"]  # written before the fields existed
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(saved))
    # it split ordered pairs: resuming it with the pair split would change its data
    with pytest.raises(SpecError, match=r"task.split: the run has 'ordered', got 'pairs'"):
        _check_same_study(spec, tmp_path)
    assert _check_same_study(parse_spec({**BASE, "task": {"split": "ordered"}}), tmp_path) == {}
    with pytest.raises(SpecError, match=r"train.max_length: the run has None, got 32"):
        _check_same_study(parse_spec({**BASE, "task": {"split": "ordered"}, "train": {"max_length": 32}}), tmp_path)
    # a JSONL study from before: task.split means nothing there, it resumes as it is
    jsonl = parse_spec({**BASE, "task": {"kind": "chat", "path": str(DATA)}})
    saved = jsonl.to_record(exclude={"packing", "tracking"})
    del saved["task"]["split"], saved["train"]["max_length"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(saved))
    assert _check_same_study(jsonl, tmp_path) == {}


# 6. a real sweep -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_one_trial_chat_sweep_trains_on_the_embedded_model_and_warns(tmp_path, tiny_model_dir):
    import ray

    from scaling import Study

    study = Study({"name": "chat", "task": {"kind": "chat", "path": str(DATA)},
                   "axes": {"dataset_size": [48], "epochs": [3]},
                   "learning_rate": {"low": 5e-3, "high": 2e-2}, "trials_per_cell": 1,
                   "eval": {"validation_size": 8, "test_size": 8}, "train": {"batch_size": 8, "max_length": 58},
                   "resources": {"cpus": 1, "max_failures": 0}, "sampler": {"extra_trials": 0}},
                  out=tmp_path / "run")  # fmt: skip
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with pytest.warns(UserWarning, match=r"train.max_length 58 truncates 9 of 48 training examples .*"
                                             r"1 of 8 validation examples"):  # fmt: skip
            res = study.run(max_trials=1)
    finally:
        ray.shutdown()
    assert res.counts["ok"] == 1
    rows = res.results().sort_values("epoch")
    assert rows["epoch"].tolist() == [1, 2, 3] and (rows["status"] == "ok").all()
    val = rows["val_eval_loss"].tolist()
    assert val[0] > val[1] > val[2] and val[2] < 0.8 * val[0]  # the loss falls
    assert rows["train_loss"].iloc[-1] < rows["train_loss"].iloc[0]
    run = yaml.safe_load((tmp_path / "run" / "spec.yaml").read_text())
    assert run["run"]["task_sha256"] == hashlib.sha256(DATA.read_bytes()).hexdigest()


def test_validate_prints_the_data_warnings_and_refuses_data_no_trial_could_use(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from scaling.cli import app

    rows = [_chat(("user", f"rev q{i}"), ("assistant", f"a{i}")) for i in range(1, 21)]
    rows[14] = rows[2]  # line 15 = line 3: validation and training (seed 0)
    _write(tmp_path / "dup_chat.jsonl", rows)
    spec = {**BASE, "task": {"kind": "chat", "path": "dup_chat.jsonl"}, "axes": {"dataset_size": [12]},
            "eval": {"validation_size": 4, "test_size": 4}, "train": {"max_length": 29}}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "s.yaml")])
    out = " ".join(result.output.split())
    assert result.exit_code == 0, out
    assert ("warning: task chat:dup_chat.jsonl: 1 problem(s) appear in more than one split (same content): "
            "validation dup_chat.jsonl:3 = training dup_chat.jsonl:15") in out
    # "<bos>user: rev q10 assistant: a10<eos>" is 30 tokens, q1..q9 28: lines 10-20 but 15 (= line 3) are cut
    task = make_task(kind="chat", path=str(tmp_path / "dup_chat.jsonl"), validation_size=4, test_size=4)
    cut = [f"{sum(int(e.source.split(':')[1]) in {*range(10, 15), *range(16, 21)} for e in ex)} of {len(ex)} {split} "
           f"examples" for split, ex in (("training", task.train_pool(12)), ("validation", task.validation()),
                                         ("test", task.test()))]  # fmt: skip
    assert sum(int(c.split()[0]) for c in cut) == 10
    assert "warning: train.max_length 29 truncates " in out and "longest 30 tokens" in out
    assert all(c in out for c in cut if not c.startswith("0 ")), (cut, out)
    spec["train"] = {"max_length": 20}  # shorter than every prompt
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "s.yaml")])
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{tmp_path / 's.yaml'}: task: " in out
    assert "train.max_length 20 leaves no token of its answer" in out
