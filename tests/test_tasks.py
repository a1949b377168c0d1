"""Tasks: nested seeded pools, fixed disjoint eval sets, readable errors for bad data."""

import json

import pytest

from scaling.tasks import Example, Task, TaskError, make_task

# 1. addition ------------------------------------------------------------------


def test_addition_examples_are_correct_sums_without_spaces():
    task = make_task(kind="addition", digits=2, seed=0)
    examples = task.train_pool(2000) + task.validation() + task.test()
    for ex in examples:
        a, b = ex.prompt[:-1].split("+")
        assert ex.prompt == f"{int(a)}+{int(b)}="  # no padding, no spaces
        assert ex.completion == str(int(a) + int(b))
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99
    assert task.name == "addition-2d"


def test_addition_covers_all_ordered_pairs_once():
    task = make_task(kind="addition", digits=1, seed=3, validation_size=10, test_size=10)
    assert task.max_train_size == 100 - 20
    everything = task.validation() + task.test() + task.train_pool(80)
    assert len(set(everything)) == 100  # (a, b) and (b, a) are distinct problems
    assert Example("3+4=", "7") in everything and Example("4+3=", "7") in everything


def test_train_pools_are_nested_prefixes():
    task = make_task(seed=1)
    big = task.train_pool(4000)
    assert task.train_pool(1000) == big[:1000]
    assert make_task(seed=1).train_pool(1000) == big[:1000]  # and across task objects


def test_seed_fixes_everything_and_different_seeds_differ():
    a, b, c = make_task(seed=0), make_task(seed=0), make_task(seed=1)
    assert a.train_pool(500) == b.train_pool(500)
    assert a.validation() == b.validation() and a.test() == b.test()
    assert a.train_pool(500) != c.train_pool(500)
    assert a.validation() != c.validation()


def test_validation_test_and_training_are_disjoint_and_fixed():
    task = make_task(validation_size=500, test_size=500)
    val, test, train = set(task.validation()), set(task.test()), set(task.train_pool(9000))
    assert len(val) == 500 and len(test) == 500 and len(train) == 9000
    assert not (val & test) and not (val & train) and not (test & train)
    assert len(val | test | train) == 10_000
    assert task.validation(100) == task.validation()[:100]


def test_too_large_dataset_names_size_and_maximum():
    task = make_task(digits=2)
    assert task.max_train_size == 9000
    with pytest.raises(ValueError, match=r"dataset_size 9001 .* 9000 training examples"):
        task.train_pool(9001)
    with pytest.raises(ValueError, match="validation size must be in"):
        task.validation(501)


def test_three_digit_and_large_spaces():
    t3 = make_task(digits=3, validation_size=5, test_size=5)
    assert t3.max_train_size == 1_000_000 - 10
    ex = t3.train_pool(3)
    assert all(int(e.completion) == sum(map(int, e.prompt[:-1].split("+"))) for e in ex)
    t5 = make_task(digits=5, seed=2, validation_size=50, test_size=50)  # streamed, not permuted
    pool = t5.train_pool(300)
    assert len(set(pool)) == 300 and not set(pool) & set(t5.validation() + t5.test())
    assert make_task(digits=5, seed=2, validation_size=50, test_size=50).train_pool(100) == pool[:100]


def test_bad_arguments_quote_the_value():
    with pytest.raises(ValueError, match="'subtraction'"):
        make_task(kind="subtraction")
    with pytest.raises(ValueError, match="got 0"):
        make_task(digits=0)
    with pytest.raises(TaskError, match="validation_size=60"):
        make_task(digits=1, validation_size=60, test_size=40)
    with pytest.raises(ValueError, match="path"):
        make_task(kind="jsonl")


def test_task_is_an_abc():
    assert isinstance(make_task(), Task)
    with pytest.raises(TypeError):
        Task()


# 2. jsonl ---------------------------------------------------------------------


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_good_file_splits_like_addition(tmp_path):
    rows = [json.dumps({"prompt": f"q{i}:", "completion": f"a{i}"}) for i in range(50)]
    path = _write(tmp_path / "good.jsonl", rows[:25] + [""] + rows[25:])  # blank lines skipped
    task = make_task(kind="jsonl", path=path, seed=0, validation_size=5, test_size=5)
    assert task.max_train_size == 40
    everything = task.validation() + task.test() + task.train_pool(40)
    assert sorted(e.prompt for e in everything) == sorted(f"q{i}:" for i in range(50))
    assert all(e.completion == "a" + e.prompt[1:-1] for e in everything)
    assert task.train_pool(10) == task.train_pool(40)[:10]
    other = make_task(kind="jsonl", path=path, seed=1, validation_size=5, test_size=5)
    assert other.validation() != task.validation()
    with pytest.raises(ValueError, match="dataset_size 41"):
        task.train_pool(41)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "1+1=", "completion": 2', r"line 3: invalid JSON"),
        ('{"prompt": "1+1="}', r"line 3: missing field 'completion'"),
        ('{"prompt": "1+1=", "completion": 3}', r"line 3: field 'completion' must be a string, got 3"),
        ('{"prompt": null, "completion": "2"}', r"line 3: field 'prompt' must be a string, got None"),
        ('["1+1=", "2"]', r"line 3: expected an object"),
        ('{"prompt": "1+1=", "completion": ""}', r"line 3: field 'completion' must not be empty"),
    ],
)
def test_jsonl_bad_lines_name_file_line_field_and_value(tmp_path, line, message):
    good = json.dumps({"prompt": "2+2=", "completion": "4"})
    path = _write(tmp_path / "bad.jsonl", [good, good, line, good])
    with pytest.raises(TaskError, match=message) as info:
        make_task(kind="jsonl", path=path, validation_size=1, test_size=1)
    assert str(info.value).startswith(f"{path} line 3:")
    assert isinstance(info.value, ValueError)


def test_jsonl_missing_empty_and_too_small_files(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        make_task(kind="jsonl", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(TaskError, match="no examples"):
        make_task(kind="jsonl", path=_write(tmp_path / "empty.jsonl", [""]))
    small = _write(tmp_path / "small.jsonl", [json.dumps({"prompt": "a", "completion": "b"})] * 10)
    with pytest.raises(TaskError, match="has 10 examples"):
        make_task(kind="jsonl", path=small, validation_size=5, test_size=5)
