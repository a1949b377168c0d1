"""Nothing lost (issue 17, sections 1 and 3): a study's identity, and the resumes it refuses.

Real Ray, real Optuna SQLite storages, real trials. Optuna numbers trials from 0 in every new
study, so a run directory resumed against a storage that is not its own (optuna.db deleted,
storage.optuna changed) used to hand out trial ids the table already held: the new evaluations
were dropped as replays while Optuna marked them COMPLETE. Each such resume is refused now,
before anything is written, and so is a resume of a changed study.
"""

from __future__ import annotations

import shutil

import optuna
import pytest
import yaml
from test_sweep import ray_local, small_spec  # noqa: F401  (fixture)

from scaling.records import read_results, read_run
from scaling.records_io import RecordsError
from scaling.spec import SpecError

pytestmark = pytest.mark.slow

ONE_CELL = {"axes": {"dataset_size": [64], "epochs": [1]}, "eval": {"validation_size": 32, "test_size": 32}}


def _spec(name: str, **over):
    return small_spec(name, **{**ONE_CELL, "trials_per_cell": 1, **over})


def _files(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".sweep.lock" and "ray" not in p.relative_to(run).parts}  # fmt: skip


def _uid(run) -> str:
    return yaml.safe_load((run / "spec.yaml").read_text())["run"]["study_uid"]


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):  # noqa: F811
    """A finished one-trial study (name ident), kept pristine: tests copy it."""
    from scaling.sweep import run_sweep

    run = tmp_path_factory.mktemp("ident") / "run"
    res = run_sweep(_spec("ident"), out=run)
    assert res.counts["ok"] == 1
    return run


def _copy(src, tmp_path, name="run"):
    dst = tmp_path / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".sweep.lock"))
    return dst


def test_the_study_uid_is_in_spec_yaml_in_every_cell_study_and_in_every_row(finished):
    uid = _uid(finished)
    assert len(uid) == 32
    storage = optuna.storages.RDBStorage(f"sqlite:///{finished / 'optuna.db'}")
    (study,) = optuna.get_all_study_summaries(storage)
    assert study.user_attrs["scaling.study_uid"] == uid
    assert set(read_results(finished)["study_uid"]) == {uid}


def test_a_deleted_optuna_db_is_refused_and_the_table_is_unchanged(finished, tmp_path):
    """Before: the sweep ran trial #0 again in a new optuna.db, its rows were dropped as a replay
    of the old #0 (same anchor LR, same seed), and it exited 0 with Optuna saying COMPLETE."""
    from scaling.sweep import run_sweep

    run = _copy(finished, tmp_path)
    (run / "optuna.db").unlink()
    before = _files(run)
    with pytest.raises(RecordsError) as err:
        run_sweep(_spec("ident", trials_per_cell=2), out=run)
    msg = str(err.value)
    assert _uid(run) in msg and "does not exist" in msg and str(run / "optuna.db") in msg and "1 rows" in msg
    assert _files(run) == before and not (run / "optuna.db").exists()  # no empty storage made either


def test_storage_pointed_at_another_runs_sqlite_file_is_refused_naming_both_uids(finished, tmp_path):
    from scaling.sweep import run_sweep

    other = tmp_path / "other"
    run_sweep(_spec("ident"), out=other)  # the same study name, another run: its own uid
    run = _copy(finished, tmp_path)
    before = _files(run)
    url = f"sqlite:///{other / 'optuna.db'}"
    theirs_before = _files(other)
    with pytest.raises(RecordsError) as err:
        run_sweep(_spec("ident", trials_per_cell=2, storage={"optuna": url}), out=run)
    msg = str(err.value)
    assert _uid(run) in msg and _uid(other) in msg and _uid(run) != _uid(other)
    assert url in msg and "another run's study" in msg and "ident/D=64,E=1,r=8" in msg
    assert _files(run) == before and _files(other) == theirs_before


def test_storage_pointed_at_an_sqlite_file_without_the_runs_studies_is_refused(finished, tmp_path):
    from scaling.sweep import run_sweep

    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    optuna.create_study(study_name="unrelated", storage=url)  # an Optuna storage, not this run's
    run = _copy(finished, tmp_path)
    before = _files(run)
    with pytest.raises(RecordsError, match=rf"{_uid(run)}.*holds none of the run's 1 cell studies.*has 1 rows"):
        run_sweep(_spec("ident", trials_per_cell=2, storage={"optuna": url}), out=run)
    assert _files(run) == before
    assert optuna.get_all_study_names(url) == ["unrelated"]


@pytest.mark.parametrize("over, field, shown", [
    ({"seeds": {"base": 1}}, "seeds.base", "the run has 0, got 1"),
    ({"seeds": {"repeat_best": 2}}, "seeds.repeat_best", "the run has 0, got 2"),
    ({"early_stopping": {"method": "asha"}}, "early_stopping.method", "the run has 'none', got 'asha'"),
    ({"early_stopping": {"grace_epochs": 2}}, "early_stopping.grace_epochs", "the run has 1, got 2"),
    ({"early_stopping": {"reduction_factor": 2}}, "early_stopping.reduction_factor", "the run has 3.0, got 2.0"),
])  # fmt: skip
def test_a_resume_with_other_seeds_or_early_stopping_is_refused_naming_the_field(finished, tmp_path, over, field,
                                                                                 shown):  # fmt: skip
    from scaling.sweep import run_sweep

    run = _copy(finished, tmp_path)
    before = _files(run)
    with pytest.raises(SpecError, match=rf"{field}: must match the study already in {run}.*{shown}"):
        run_sweep(_spec("ident", **over), out=run)
    assert _files(run) == before


def test_a_resume_with_an_edited_jsonl_task_file_is_refused_with_both_hashes(ray_local, tmp_path):  # noqa: F811
    import hashlib
    import json

    from scaling.sweep import run_sweep

    path = tmp_path / "task.jsonl"
    lines = [json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) for a in range(20) for b in range(10)]
    path.write_text("\n".join(lines) + "\n")
    spec = _spec("jsonl", task={"kind": "jsonl", "path": str(path)}, trials_per_cell=2)
    run = tmp_path / "run"
    run_sweep(spec, out=run, max_trials=1)
    old = hashlib.sha256(path.read_bytes()).hexdigest()
    assert yaml.safe_load((run / "spec.yaml").read_text())["run"]["task_sha256"] == old
    path.write_text("\n".join(lines[:-1] + [json.dumps({"prompt": "9+9=", "completion": "19"})]) + "\n")
    new = hashlib.sha256(path.read_bytes()).hexdigest()
    before = _files(run)
    with pytest.raises(SpecError) as err:
        run_sweep(spec, out=run)
    msg = str(err.value)
    assert "task.path" in msg and str(path) in msg and old[:12] in msg and new[:12] in msg
    assert _files(run) == before


def test_a_resume_may_change_adapters_per_worker_and_spec_yaml_lists_every_sweep(ray_local, tmp_path):  # noqa: F811
    from scaling.sweep import run_sweep

    spec = _spec("resumes", trials_per_cell=3)
    run = tmp_path / "run"
    first = run_sweep(spec, out=run, max_trials=1)
    packed = _spec("resumes", trials_per_cell=3, packing={"adapters_per_worker": 2})
    second = run_sweep(packed, out=run)  # same results, faster: allowed
    assert (first.trials_run, second.trials_run) == (1, 2)
    saved = yaml.safe_load((run / "spec.yaml").read_text())
    sweeps = saved["run"]["sweeps"]
    assert [s["trials_recorded"] for s in sweeps] == [0, 1]
    assert [s["trials_to_run"] for s in sweeps] == [1, 2]
    assert [s["trials_run"] for s in sweeps] == [1, 2]
    assert [s["adapters_per_worker"] for s in sweeps] == [1, 2]
    assert [s["max_trials"] for s in sweeps] == [1, None]
    assert all(s["started_at"] <= s["finished_at"] for s in sweeps)
    assert sweeps[0]["optuna"] == f"sqlite:///{run / 'optuna.db'}"
    assert "packing" not in saved  # the spec copy is the first sweep's
    assert read_run(run).facts["planned_trials"] == 3  # the last sweep's trials_per_cell (unchanged here)
    df = read_results(run)
    assert df["optuna_trial"].nunique() == 3 and set(df["study_uid"]) == {saved["run"]["study_uid"]}
    assert run_sweep(packed, out=run).trials_run == 0  # a third sweep: listed too
    assert len(yaml.safe_load((run / "spec.yaml").read_text())["run"]["sweeps"]) == 3


def test_a_run_from_before_study_uids_resumes_and_adopts_its_storage(finished, tmp_path):
    """spec.yaml without a run section, cell studies without a uid, rows without one: the resume
    goes on, gives the run a uid and stamps it on the storage's cell studies."""
    import sqlite3

    import pandas as pd

    from scaling.sweep import run_sweep

    run = _copy(finished, tmp_path)
    saved = yaml.safe_load((run / "spec.yaml").read_text())
    old_uid = saved.pop("run")["study_uid"]
    (run / "spec.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with sqlite3.connect(run / "optuna.db") as con:
        con.execute("DELETE FROM study_user_attributes WHERE key = 'scaling.study_uid'")
    df = pd.read_parquet(run / "results.parquet").drop(columns=["study_uid"])
    df.to_parquet(run / "results.parquet", index=False)  # as written before the column existed
    res = run_sweep(_spec("ident", trials_per_cell=2), out=run)
    assert res.trials_run == 1
    uid = _uid(run)
    assert uid != old_uid and len(uid) == 32
    (study,) = optuna.get_all_study_summaries(f"sqlite:///{run / 'optuna.db'}")
    assert study.user_attrs["scaling.study_uid"] == uid
    table = read_results(run).sort_values("optuna_trial")
    assert table["optuna_trial"].tolist() == [0, 1]
    assert table["study_uid"].isna().tolist() == [True, False] and table["study_uid"].iloc[1] == uid


def test_an_older_spec_copy_without_a_newer_sampler_field_resumes_and_a_changed_sampler_is_refused(tmp_path):
    import yaml

    from scaling.run_record import _check_same_study
    from scaling.spec import SpecError, parse_spec

    data = {"name": "old", "axes": {"dataset_size": [64]}, "learning_rate": {"low": 1e-3, "high": 1e-2}}
    spec = parse_spec(data)
    saved = spec.to_record(exclude={"packing", "tracking"})
    del saved["sampler"]["extra_trials"]  # a run directory written before the field existed
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(saved))
    assert _check_same_study(spec, tmp_path) == {}
    assert _check_same_study(parse_spec({**data, "sampler": {"extra_trials": 0}}), tmp_path) == {}  # budget
    with pytest.raises(SpecError, match=r"sampler.kind: the run has 'bracket', got 'tpe'"):
        _check_same_study(parse_spec({**data, "sampler": {"kind": "tpe"}}), tmp_path)
