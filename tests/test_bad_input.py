"""Bad input through the CLI: every malformed spec, task file, storage URL or results table
gets ONE clear message naming the file, the field, the rule and the value, exit code 2,
no traceback - and an existing run directory is left exactly as it was.

(tests/test_spec.py checks the spec rules at library level; here the same mistakes and the
ones only the CLI meets - task files, storage, tables, options - go through `scaling`.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from scaling.cli import app
from scaling.records import append_rows, empty_table
from scaling.spec import parse_spec

GOOD = {
    "name": "bad",
    "axes": {"dataset_size": [64, 128], "epochs": [1]},
    "learning_rate": {"low": 1e-3, "high": 3e-2},
    "trials_per_cell": 2,
    "eval": {"validation_size": 64, "test_size": 64},
}


def changed(path: str, value) -> dict:
    """GOOD with one nested key set (value=KeyError deletes it)."""
    d = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return d


def jsonl(tmp: Path, lines: list[str], name: str = "task.jsonl") -> str:
    f = tmp / name
    f.write_text("".join(line + "\n" for line in lines))
    return str(f)


def sums(n: int) -> list[str]:
    return [json.dumps({"prompt": f"{i % 97}+{i // 97}=", "completion": str(i % 97 + i // 97)}) for i in range(n)]


# Each case: (id, build(tmp) -> spec file contents as a dict or raw text, fragments the one
# message must contain; "{spec}" stands for the spec file's path).
SPEC_CASES: list[tuple[str, Callable[[Path], dict | str], list[str]]] = [
    ("wrong type", lambda t: changed("trials_per_cell", "three"), ["{spec}", "trials_per_cell", "integer", "'three'"]),
    ("negative lr", lambda t: changed("learning_rate.low", -1e-3), ["{spec}", "learning_rate.low", "> 0", "-0.001"]),
    ("inverted lr range", lambda t: changed("learning_rate", {"low": 0.1, "high": 0.01}),
     ["{spec}", "learning_rate.low must be < learning_rate.high", "low=0.1", "high=0.01"]),
    ("inverted size ladder", lambda t: changed("axes.dataset_size", {"low": 4000, "high": 500, "num": 4}),
     ["{spec}", "axes.dataset_size.low must be < high", "low=4000", "high=500"]),
    ("negative size", lambda t: changed("axes.dataset_size", [-64, 128]), ["{spec}", "axes.dataset_size", "greater than 0", "-64"]),
    ("zero trials", lambda t: changed("trials_per_cell", 0), ["{spec}", "trials_per_cell", "greater than 0", "0"]),
    ("duplicate epochs", lambda t: changed("axes.epochs", [1, 1]), ["{spec}", "axes.epochs", "unique", "[1, 1]"]),
    ("negative gpus", lambda t: changed("resources.gpus", -1), ["{spec}", "resources.gpus", "greater than or equal to 0", "-1"]),
    ("dropout out of range", lambda t: changed("lora.dropout", 1.5), ["{spec}", "lora.dropout", "less than 1", "1.5"]),
    ("bad study name", lambda t: changed("name", "my study"), ["{spec}", "name", "pattern", "'my study'"]),
    ("unknown key", lambda t: {**GOOD, "learning_rat": {"low": 1e-3}}, ["{spec}", "learning_rat", "unknown key"]),
    # checked against the base model's own modules (built on the meta device) before any trial
    ("lora target matches no module", lambda t: changed("lora.target_modules", ["q_proj", "query_key_value"]),
     ["{spec}", "lora.target_modules", "'query_key_value'", "matches no module", "'q_proj'", "'v_proj'"]),
    ("unknown nested key", lambda t: changed("lora.rank", 8), ["{spec}", "lora.rank", "unknown key", "8"]),
    ("unknown task", lambda t: changed("task", {"kind": "subtraction"}), ["{spec}", "task.kind", "'addition', 'jsonl' or 'chat'", "'subtraction'"]),
    ("missing field", lambda t: changed("learning_rate", KeyError), ["{spec}", "learning_rate", "required field is missing"]),
    ("storage URL scheme", lambda t: changed("storage.optuna", "http://db:5432/x"), ["{spec}", "storage.optuna", "postgresql://", "'http://db:5432/x'"]),
    ("not YAML", lambda t: "name: bad\naxes: {dataset_size: [64, 128\n", ["{spec}", "not valid YAML"]),
    ("not a mapping", lambda t: "- name\n- axes\n", ["{spec}", "(top level)", "mapping", "list"]),
    ("missing task file", lambda t: changed("task", {"kind": "jsonl", "path": str(t / "nowhere.jsonl")}),
     ["{spec}", "task.path", "must exist", "nowhere.jsonl"]),
    ("jsonl: invalid JSON line", lambda t: changed("task", {"kind": "jsonl", "path": jsonl(t, sums(2) + ["{not json"] + sums(300))}),
     ["{spec}", "task", "task.jsonl line 3", "invalid JSON", "'{not json'"]),
    ("jsonl: missing completion", lambda t: changed("task", {"kind": "jsonl", "path": jsonl(t, sums(5) + ['{"prompt": "1+1="}'])}),
     ["{spec}", "task", "task.jsonl line 6", "missing field 'completion'"]),
    ("jsonl: completion not text", lambda t: changed("task", {"kind": "jsonl", "path": jsonl(t, ['{"prompt": "1+1=", "completion": 2}'])}),
     ["{spec}", "task", "task.jsonl line 1", "must be a string", "2"]),
    ("jsonl: not an object", lambda t: changed("task", {"kind": "jsonl", "path": jsonl(t, sums(1) + ["[1, 2]"])}),
     ["{spec}", "task", "task.jsonl line 2", "expected an object", "[1, 2]"]),
    ("jsonl: too few examples", lambda t: changed("task", {"kind": "jsonl", "path": jsonl(t, sums(100))}),
     ["{spec}", "task", "task.jsonl", "100 examples", "validation_size=64", "test_size=64"]),
    ("jsonl: dataset larger than the file", lambda t: changed("task", {"kind": "jsonl", "path": jsonl(t, sums(200))}),
     ["{spec}", "axes.dataset_size", "must be <= the 72 training examples", "got 128"]),
    ("addition: dataset larger than the task", lambda t: changed("axes.dataset_size", [64, 20000]),
     ["{spec}", "axes.dataset_size", "must be <= the 9872 training examples", "got 20000"]),
]


# -- an existing run directory that no bad input may touch ------------------------------
@pytest.fixture(scope="module")
def existing_run(tmp_path_factory) -> Path:
    """A run directory as a sweep leaves it: spec, results table, Optuna storage."""
    import optuna

    run = tmp_path_factory.mktemp("existing") / "run"
    spec = parse_spec(GOOD)
    run.mkdir()
    (run / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude={"source"}), sort_keys=False))
    rows = []
    storage = optuna.storages.RDBStorage(f"sqlite:///{run / 'optuna.db'}")
    for cell in spec.cells():
        study = optuna.create_study(study_name=f"bad/{cell.key}", storage=storage)
        for i, lr in enumerate((3e-3, 1e-2)):
            t = study.ask()
            t.suggest_float("learning_rate", 1e-3, 3e-2, log=True)
            loss = 2.0 - 0.1 * i - cell.dataset_size / 1000
            study.tell(t, loss)
            rows.append({"study": "bad", "trial_id": f"bad/{cell.key}#{t.number}", "cell": cell.key, "phase": "search",
                         "dataset_size": cell.dataset_size, "epochs": 1, "epoch": 1, "learning_rate": lr,
                         "val_eval_loss": loss, "test_eval_loss": loss + 0.01, "status": "ok", "train_flops": 1e9})  # fmt: skip
    storage.engine.dispose()
    append_rows(run, rows)
    (run / ".sweep.lock").write_text("pid 1")
    return run


def fingerprint(run: Path) -> dict[str, str]:
    # the lock file's *content* names the last process that held it; a refused sweep may
    # rewrite it. Every other byte of the directory must stay as it was.
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".sweep.lock"
    }


def one_clear_error(result, fragments: list[str]) -> str:
    """Exit 2, exactly one `error:` message with every fragment, and no traceback."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, (result.exit_code, result.output,
                                                                                result.exception)  # fmt: skip
    err = result.stderr
    assert err.count("error:") == 1, err
    assert "Traceback" not in result.output, result.output
    flat = " ".join(err.split())  # rich may wrap; compare without line breaks
    for frag in fragments:
        assert " ".join(frag.split()) in flat, f"{frag!r} not in {err!r}"
    return err.strip()


runner = CliRunner()
MESSAGES: list[str] = []  # every message seen (handy with -s when reading what users get)


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_is_refused_by_validate_and_sweep(case, existing_run, tmp_path):
    _, build, fragments = case
    content = build(tmp_path)
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    frags = [f.replace("{spec}", str(spec_file)) for f in fragments]
    before = fingerprint(existing_run)

    msg = one_clear_error(runner.invoke(app, ["validate", str(spec_file)]), frags)
    one_clear_error(runner.invoke(app, ["sweep", str(spec_file), "--out", str(existing_run)]), frags)

    assert fingerprint(existing_run) == before
    MESSAGES.append(msg)


def test_missing_spec_file(existing_run, tmp_path):
    before = fingerprint(existing_run)
    for cmd in ("validate", "sweep"):
        args = [cmd, str(tmp_path / "nope.yaml")] + (["--out", str(existing_run)] if cmd == "sweep" else [])
        MESSAGES.append(one_clear_error(runner.invoke(app, args), [str(tmp_path / "nope.yaml"), "does not exist"]))
    assert fingerprint(existing_run) == before


def test_unreachable_storage_is_refused_before_anything_runs(existing_run, tmp_path):
    pytest.importorskip("psycopg", reason="psycopg (pip install -e .[dev]) is the PostgreSQL driver of postgresql:// URLs")
    spec_file = tmp_path / "study.yaml"
    url = "postgresql://nobody@127.0.0.1:1/x"  # port 1: nothing listens there
    spec_file.write_text(yaml.safe_dump(changed("storage.optuna", url)))
    assert runner.invoke(app, ["validate", str(spec_file)]).exit_code == 0  # the spec itself is fine
    before = fingerprint(existing_run)
    result = runner.invoke(app, ["sweep", str(spec_file), "--out", str(existing_run)])
    MESSAGES.append(one_clear_error(result, [str(spec_file), "storage.optuna", "cannot open", repr(url), "127.0.0.1", "port 1"]))
    assert fingerprint(existing_run) == before


NOT_CACHED = "scaling-test/not-a-cached-model"  # a hub id no Hugging Face cache here holds


@pytest.mark.parametrize("how", ["hub unreachable", "HF_HUB_OFFLINE"])
def test_a_hub_model_that_cannot_be_loaded_is_refused_at_once(how, existing_run, tmp_path, monkeypatch):
    # not in the cache (an empty HF_HUB_CACHE) and no hub: before, validate said ok and the sweep
    # spent ~25 s of retries per file in every trial, then recorded failed rows and exited 0
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        spec, field, why = changed("axes.model", [NOT_CACHED]), "axes.model", "HF_HUB_OFFLINE is set"
    else:
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # port 1: nothing listens there
        spec, field, why = {**GOOD, "model": NOT_CACHED}, "model", "http://127.0.0.1:1 cannot be reached"
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    frags = [f"{spec_file}: {field}: hub model {NOT_CACHED!r} is not in the local Hugging Face cache "
             f"({tmp_path / 'hf-cache'}) and {why}", f"`hf download {NOT_CACHED}`",
             "give a local checkpoint directory", "`scaling models import-gguf`"]  # fmt: skip
    before = fingerprint(existing_run)
    MESSAGES.append(one_clear_error(runner.invoke(app, ["validate", str(spec_file)]), frags))
    MESSAGES.append(one_clear_error(runner.invoke(app, ["sweep", str(spec_file), "--out", str(existing_run),
                                                        "--max-trials", "1"]), frags))  # fmt: skip
    assert fingerprint(existing_run) == before


def test_a_hub_model_in_the_local_cache_needs_no_hub(tmp_path, monkeypatch):
    from transformers import GPT2Config

    # the Hugging Face cache's own layout: models--org--name/{refs/main, snapshots/<commit>/}
    commit = "0" * 40
    repo = tmp_path / "hf-cache" / ("models--" + NOT_CACHED.replace("/", "--"))
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump({**GOOD, "model": NOT_CACHED}))
    result = runner.invoke(app, ["validate", str(spec_file)])
    assert result.exit_code == 0 and result.output.startswith(f"ok {spec_file}"), result.output


def test_a_model_directory_without_config_is_refused(existing_run, tmp_path):
    (tmp_path / "empty-model").mkdir()
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump({**GOOD, "model": str(tmp_path / "empty-model")}))
    frags = [f"{spec_file}: model: model directory {str(tmp_path / 'empty-model')!r} has no config.json"]
    before = fingerprint(existing_run)
    MESSAGES.append(one_clear_error(runner.invoke(app, ["validate", str(spec_file)]), frags))
    MESSAGES.append(one_clear_error(runner.invoke(app, ["sweep", str(spec_file), "--out", str(existing_run)]), frags))
    assert fingerprint(existing_run) == before


def test_a_different_study_in_the_run_dir_is_refused(existing_run, tmp_path):
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(changed("learning_rate", {"low": 1e-5, "high": 1e-4})))
    before = fingerprint(existing_run)
    result = runner.invoke(app, ["sweep", str(spec_file), "--out", str(existing_run)])
    MESSAGES.append(one_clear_error(result, [str(spec_file), "learning_rate", "must match the study already in", str(existing_run)]))
    assert fingerprint(existing_run) == before


def test_bad_options(existing_run, tmp_path):
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(GOOD))
    before = fingerprint(existing_run)
    cases = [
        (["sweep", str(spec_file), "--out", str(existing_run), "--max-trials", "0"], ["--max-trials", ">= 1", "0"]),
        (["report", str(existing_run), "--bootstrap", "-1"], ["--bootstrap", ">= 0", "-1"]),
        (["fit", str(existing_run), "--y", "no_such_metric"], [str(existing_run), "no_such_metric"]),
        (["fit", str(existing_run), "--law", "no_such_law"], [str(existing_run), "unknown law", "no_such_law"]),
        (["emergence", str(existing_run), "--x", "no_such_axis"], [str(existing_run), "no_such_axis", "not found"]),
    ]
    for args, frags in cases:
        MESSAGES.append(one_clear_error(runner.invoke(app, args), frags))
    assert fingerprint(existing_run) == before


# -- results tables: missing, empty, corrupt, the wrong shape --------------------------------
def _bad_table(kind: str, where: Path) -> Path:
    where.mkdir()
    path = where / "results.parquet"
    if kind == "zero bytes":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(b"PAR1" + b"\x00garbage" * 50)
    elif kind == "no rows":
        empty_table().to_parquet(path)
    elif kind == "wrong columns":
        pd.DataFrame({"loss": [1.0, 0.5]}).to_parquet(path)
    elif kind == "truncated":
        append_rows(where, [{"trial_id": "t#0", "epoch": 1, "status": "ok", "val_eval_loss": 1.0}])
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # a copy cut off halfway
    return where


TABLE_RULES = {
    "missing": ["no results table here"],
    "zero bytes": ["results.parquet", "cannot read the results table", "0 bytes"],
    "corrupt": ["results.parquet", "cannot read the results table", "magic bytes"],
    "truncated": ["results.parquet", "cannot read the results table"],
    "no rows": ["results.parquet", "the results table is empty", "0 rows"],
    "wrong columns": ["results.parquet", "['trial_id', 'status'] are required but missing", "['loss']"],
}
TABLE_COMMANDS = {
    "show": [],
    "best-lr": [],
    "report": ["--bootstrap", "0"],
    "fit": [],
    "emergence": [],
}


@pytest.mark.parametrize("kind", list(TABLE_RULES))
@pytest.mark.parametrize("command", list(TABLE_COMMANDS))
def test_bad_results_table(command, kind, tmp_path):
    run = tmp_path / "run"
    if kind != "missing":
        _bad_table(kind, run)
    else:
        run.mkdir()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    result = runner.invoke(app, [command, str(run), *TABLE_COMMANDS[command]])
    MESSAGES.append(one_clear_error(result, [str(run), *TABLE_RULES[kind]]))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # no report/ left behind


def test_fit_on_bad_table_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header = tmp_path / "header.csv"
    header.write_text("dataset_size,test_eval_loss\n")
    missing = tmp_path / "missing.csv"
    for args, frags in [
        (["fit", str(empty)], [str(empty), "cannot read the table", "No columns"]),
        (["fit", str(header)], [str(header), "only 0 rows", "at least 3"]),
        (["fit", str(missing)], [str(missing), "does not exist"]),
    ]:
        MESSAGES.append(one_clear_error(runner.invoke(app, args), frags))


# -- a damaged run directory: a garbage part file, a garbage spec copy, a file given as the run ------
def _damaged_run(kind: str, tmp: Path) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "spec.yaml").write_text(yaml.safe_dump(parse_spec(GOOD).model_dump(mode="json", exclude={"source"})))
    for i, (lr, v) in enumerate(((3e-3, 0.9), (1e-2, 0.5), (3e-2, 0.7))):  # results.parquet + 2 part files
        append_rows(run, [{"study": "bad", "trial_id": f"bad#{i}", "cell": "D=64,E=1", "phase": "search",
                           "dataset_size": 64, "epochs": 1, "learning_rate": lr, "epoch": 1, "status": "ok",
                           "val_eval_loss": v, "test_eval_loss": v, "train_flops": 1e9}])  # fmt: skip
    if kind == "part file":
        (run / "results" / "000000002-000000002.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 50)
        return run
    if kind == "spec copy":
        (run / "spec.yaml").write_bytes(b"name: [unclosed\n\x00")
        return run
    out = tmp / "out"  # kind == "run is a file": the --out a sweep was given is a regular file
    out.write_bytes(b"\x00\xff\xfe not a run directory \xff")
    return out


DAMAGE = {
    "part file": ["results/000000002-000000002.parquet", "cannot read the results table", "magic bytes"],
    "spec copy": ["spec.yaml", "the run's spec copy is not valid YAML"],
    "run is a file": ["cannot read"],
}
DAMAGE_COMMANDS = {**TABLE_COMMANDS, "plan": ["--budget", "1e12", "--bootstrap", "0"]}


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("command", [*DAMAGE_COMMANDS, "sweep"])
def test_damaged_run_directory(command, kind, tmp_path):
    where = _damaged_run(kind, tmp_path)
    before = {str(p): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    frags = [str(where), *DAMAGE[kind]]
    if command == "sweep":
        spec_file = tmp_path / "study.yaml"
        spec_file.write_text(yaml.safe_dump(GOOD))
        args = ["sweep", str(spec_file), "--out", str(where)]
        if kind == "run is a file":
            frags = [str(where), "the run directory is a file, not a directory"]
    else:
        args = [command, str(where), *DAMAGE_COMMANDS[command]]
    MESSAGES.append(one_clear_error(runner.invoke(app, args), frags))
    after = {str(p): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert {k: v for k, v in after.items() if not k.endswith("study.yaml")} == before  # nothing written


def _kind(message: str) -> str:
    """A message with its paths and numbers blanked: two runs of one rule are one kind."""
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "<n>", re.sub(r"(/[^\s'\",:)]+)+", "<path>", message))


def test_at_least_twenty_kinds_of_bad_input():
    # counts what the CLI actually said above (each test appends the one message it got), not the
    # tables of cases: distinct messages once paths and numbers are blanked out
    if len(MESSAGES) < len(SPEC_CASES):
        pytest.skip("counts the messages of this module's other tests: run the whole module")
    kinds = {_kind(m) for m in MESSAGES}
    assert len(kinds) >= 20, sorted(kinds)
