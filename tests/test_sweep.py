"""A real sweep: Ray Tune runs real LoRA trials, Optuna storage in SQLite, results in Parquet."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from analysis.table import METRIC_KEYS
from scaling.records import read_results
from scaling.spec import parse_spec

pytestmark = pytest.mark.slow


def small_spec(name: str = "tiny", **over):
    data = {
        "name": name,
        "task": {"kind": "addition", "digits": 2},
        "axes": {"dataset_size": [64, 256], "epochs": [1, 2]},
        "learning_rate": {"low": 1e-3, "high": 3e-2},
        "trials_per_cell": 2,
        "eval": {"validation_size": 64, "test_size": 64},
        "train": {"batch_size": 32},
        "resources": {"cpus": 1, "max_failures": 0},
        # a fixed budget (no extra LR trials for unbracketed cells): each test knows its trial count
        "sampler": {"extra_trials": 0},
    }
    for k, v in over.items():
        data[k] = v if not isinstance(v, dict) else {**data.get(k, {}), **v}
    return parse_spec(data)


@pytest.fixture(scope="module")
def ray_local(tiny_model_dir):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _storage_trials(url: str, study_prefix: str):
    storage = optuna.storages.RDBStorage(url)
    out = {}
    for s in optuna.get_all_study_summaries(storage):
        if s.study_name.startswith(study_prefix):
            out[s.study_name] = optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
    return out


def test_sweep_end_to_end_then_resume_adds_nothing(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    spec = small_spec()
    res = run_sweep(spec, out=tmp_path / "run")
    assert res.counts == {"ok": 8, "failed": 0, "pruned": 0}

    df = read_results(res.run_dir)
    # one row per evaluation: 2 sizes x (1 + 2 epochs) x 2 trials
    assert len(df) == 2 * (1 + 2) * 2
    assert df["trial_id"].nunique() == 8
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert set(df["status"]) == {"ok"} and set(df["pack_size"]) == {1}
    for col in ("val_eval_loss", "test_eval_loss", "val_exact_match", "train_flops", "wall_seconds", "node"):
        assert df[col].notna().all(), col
    lrs = df.drop_duplicates("trial_id")["learning_rate"]
    assert lrs.between(1e-3, 3e-2).all()
    # train tokens grow with D x epochs
    final = df.sort_values("epoch").groupby("trial_id").tail(1)
    by_cell = final.groupby(["dataset_size", "epochs"])["train_tokens"].mean()
    assert by_cell[(256, 2)] > by_cell[(256, 1)] > by_cell[(64, 1)]

    # Optuna storage: one study per cell, every trial COMPLETE with the validation loss as value
    studies = _storage_trials(res.optuna_url, "tiny/")
    assert len(studies) == 4
    for name, trials in studies.items():
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2, name
        for t in trials:
            rows = final[final["trial_id"] == f"{name}#{t.number}"]
            assert rows["val_eval_loss"].item() == pytest.approx(t.value)

    # running it again resumes: nothing left to do, nothing duplicated
    again = run_sweep(spec, out=tmp_path / "run")
    assert again.trials_run == 0
    assert len(read_results(res.run_dir)) == len(df)


def test_max_trials_then_resume_completes_exactly_the_plan(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    spec = small_spec("partial", axes={"dataset_size": [64], "epochs": [1, 2]}, trials_per_cell=3)
    first = run_sweep(spec, out=tmp_path / "run", max_trials=2)
    assert first.trials_run == 2
    second = run_sweep(spec, out=tmp_path / "run")
    assert second.trials_run == 4
    df = read_results(tmp_path / "run")
    assert df["trial_id"].nunique() == 6 and not df.duplicated(["trial_id", "epoch"]).any()
    studies = _storage_trials(first.optuna_url, "partial/")
    assert sum(len(t) for t in studies.values()) == 6


def test_a_diverging_trial_is_a_failed_row_and_the_sweep_goes_on(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    # one cell, LR range so high that training blows up: each trial must be a failed row,
    # Optuna must be told FAIL (not given a fake value), and the sweep must finish.
    spec = small_spec(
        "diverge", axes={"dataset_size": [64], "epochs": [1]}, learning_rate={"low": 1e29, "high": 1e30}
    )
    res = run_sweep(spec, out=tmp_path / "run")
    assert res.counts["failed"] == 2
    df = read_results(res.run_dir)
    assert (df["status"] == "failed").all()
    assert df["error"].str.contains("Diverged|nan|inf", case=False).all()
    trials = next(iter(_storage_trials(res.optuna_url, "diverge/").values()))
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2


def test_a_sweep_whose_every_trial_failed_exits_1_and_keeps_the_rows(ray_local, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from scaling.cli import app

    # every trial diverges: the command must not report success (exit 1: the work failed), must
    # say in one line what the first trial died of, and the failed rows must stay in the table
    spec = small_spec("allfail", axes={"dataset_size": [64], "epochs": [1]}, learning_rate={"low": 1e29, "high": 1e30})
    spec_file = tmp_path / "allfail.yaml"
    spec_file.write_text(yaml.safe_dump(spec.to_record()))
    result = CliRunner().invoke(app, ["sweep", str(spec_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, (result.output, result.exception)
    assert "ran 2 trials" in result.stdout and "0 ok, 2 failed, 0 pruned" in result.stdout
    err = " ".join(result.stderr.split())
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.output, result.output
    head = f"error: {spec_file}: all 2 trials of this sweep failed; the first: "
    tail = f" (every failed row: `scaling show {tmp_path / 'run'}`)"
    assert err.startswith(head) and err.endswith(tail), err
    first = err[len(head):-len(tail)]
    assert first.startswith("TrialDiverged: training diverged at epoch 1"), first
    df = read_results(tmp_path / "run")
    assert df["trial_id"].nunique() == 2 and (df["status"] == "failed").all()
    assert first in {" ".join(e.split()) for e in df["error"]}  # the recorded error of one of the rows


def test_an_unbracketed_cell_gets_its_extra_trial_through_ray_and_a_resume_adds_none(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    # 1 planned trial can never bracket: the cell takes its one extra, and Ray runs it (its
    # num_samples counts the extras a cell may take, the searcher says when it is done)
    spec = small_spec("extra", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=1,
                      sampler={"extra_trials": 1})  # fmt: skip
    res = run_sweep(spec, out=tmp_path / "run")
    assert res.counts == {"ok": 2, "failed": 0, "pruned": 0}
    df = read_results(res.run_dir)
    assert df["trial_id"].nunique() == 2 and df.drop_duplicates("trial_id")["learning_rate"].nunique() == 2
    assert run_sweep(spec, out=tmp_path / "run").trials_run == 0


def test_changed_study_in_same_run_dir_is_refused(ray_local, tmp_path):
    from scaling.spec import SpecError
    from scaling.sweep import run_sweep

    spec = small_spec("same", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=1)
    run_sweep(spec, out=tmp_path / "run")
    before = (tmp_path / "run" / "results.parquet").read_bytes()
    other = small_spec("same", axes={"dataset_size": [64], "epochs": [1]}, learning_rate={"low": 1e-5, "high": 1e-4})
    with pytest.raises(SpecError, match="learning_rate: must match the study already in"):
        run_sweep(other, out=tmp_path / "run")
    assert (tmp_path / "run" / "results.parquet").read_bytes() == before


def test_asha_per_cell_prunes_bad_lrs_and_tells_optuna(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    # one cell, 3 epochs, a wide LR range, trials one at a time: the anchor trial (mid-range LR)
    # sets rung values, worse LRs are stopped after their grace epoch.
    spec = small_spec(
        "asha", axes={"dataset_size": [128], "epochs": [3]}, trials_per_cell=5,
        learning_rate={"low": 1e-5, "high": 1e-1},
        early_stopping={"method": "asha", "grace_epochs": 1, "reduction_factor": 2},
        resources={"max_concurrent": 1},
    )  # fmt: skip
    res = run_sweep(spec, out=tmp_path / "run")
    assert res.counts["ok"] + res.counts["pruned"] == 5 and res.counts["pruned"] >= 1
    df = read_results(res.run_dir)
    # the stopped trials are exactly the ones the rule stops: replay ASHA (rungs at epochs 1, 2;
    # stop a trial whose val loss at a rung is worse than the 50th percentile of the earlier
    # trials' losses there) over the trials in the order they ran, with scaling/stopping.py's
    # rule, which tests/test_stopping.py holds to Ray's
    from scaling.stopping import RungTable

    by_trial = {tid: g.set_index("epoch")["val_eval_loss"] for tid, g in df.groupby("trial_id")}
    order = sorted(by_trial, key=lambda tid: int(tid.rsplit("#", 1)[1]))
    expected: dict[str, int] = {}
    for i, tid in enumerate(order):
        history: dict[int, list[float]] = {}
        for earlier in order[:i]:
            for epoch, v in by_trial[earlier].items():
                history.setdefault(int(epoch), []).append(float(v))
        rule = RungTable("asha", max_epochs=3, grace_epochs=1, reduction_factor=2, history=history)
        for epoch, v in by_trial[tid].items():
            if rule.should_stop(tid, int(epoch), float(v)):
                expected[tid] = int(epoch)
                break
    stopped = df[df.status == "pruned"].groupby("trial_id")["epoch"].max().to_dict()
    assert stopped == expected
    pruned = df[df["status"] == "pruned"]
    assert (pruned.groupby("trial_id")["epoch"].max() < 3).all()
    assert (df[df["status"] == "ok"].groupby("trial_id")["epoch"].max() == 3).all()
    trials = next(iter(_storage_trials(res.optuna_url, "asha/").values()))
    states = sorted(t.state.name for t in trials)
    assert states.count("PRUNED") == res.counts["pruned"] and states.count("COMPLETE") == res.counts["ok"]
    # the compute saved is real: pruned trials trained on fewer tokens
    final = df.sort_values("epoch").groupby("trial_id").tail(1)
    assert final[final.status == "pruned"]["train_tokens"].max() < final[final.status == "ok"]["train_tokens"].min()


def test_repeat_best_reruns_each_cells_best_lr_with_new_seeds(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    spec = small_spec(
        "seeds", axes={"dataset_size": [64], "epochs": [1, 2]}, trials_per_cell=2, seeds={"base": 0, "repeat_best": 2}
    )
    res = run_sweep(spec, out=tmp_path / "run")
    assert res.counts["ok"] == 2 * (2 + 2)
    final = read_results(res.run_dir).sort_values("epoch").groupby("trial_id").tail(1)
    for _, cell in final.groupby("cell"):
        search = cell[cell.phase == "search"]
        repeat = cell[cell.phase == "repeat"]
        best = search.loc[search["val_eval_loss"].idxmin()]
        assert sorted(repeat["seed"]) == [1, 2]
        assert (repeat["learning_rate"] == best["learning_rate"]).all()
        # a new seed is a new adapter init and data order: a different number, same ballpark
        assert not (repeat["val_eval_loss"] == best["val_eval_loss"]).all()


def test_cli_sweep_show_validate(ray_local, tmp_path):
    from typer.testing import CliRunner

    from scaling.cli import app

    spec_file = tmp_path / "s.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(small_spec("cli", axes={"dataset_size": [64], "epochs": [1]}).model_dump(mode="json", exclude={"source"})))
    runner = CliRunner()
    r = runner.invoke(app, ["validate", str(spec_file)])
    assert r.exit_code == 0 and "1 cells x 2 LR trials" in r.output
    r = runner.invoke(app, ["sweep", str(spec_file), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "ran 2 trials" in r.output and "results.parquet" in r.output and "optuna-dashboard" in r.output
    r = runner.invoke(app, ["show", str(tmp_path / "run")])
    assert r.exit_code == 0 and "2 trials" in r.output
    r = runner.invoke(app, ["best-lr", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0 and '"lr_best"' in r.output
    r = runner.invoke(app, ["show", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no results table" in r.output


def test_trial_finished_in_optuna_but_missing_from_table_is_rerun(ray_local, tmp_path):
    """The driver can die between telling Optuna and writing the rows: resume must redo it."""
    import pandas as pd

    from scaling.sweep import run_sweep

    spec = small_spec("gap", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=2)
    run_sweep(spec, out=tmp_path / "run")
    path = tmp_path / "run" / "results.parquet"
    df = pd.read_parquet(path)
    lost = df["trial_id"].iloc[-1]
    df[df["trial_id"] != lost].to_parquet(path, index=False)  # as if the last write never happened
    again = run_sweep(spec, out=tmp_path / "run")
    assert again.trials_run == 1 and again.orphans_resumed == 1
    df2 = read_results(tmp_path / "run")
    assert sorted(df2["trial_id"]) == sorted(df["trial_id"])
    trials = next(iter(_storage_trials(again.optuna_url, "gap/").values()))
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)


def test_packed_sweep_writes_the_rows_of_solo_trials(ray_local, tmp_path, monkeypatch):
    """packing.adapters_per_worker=3: one Ray trial trains a cell's 3 Optuna trials as one pack;
    the table and Optuna hold exactly what 3 solo trials would, with the same numbers."""
    from scaling import trial
    from scaling.sweep import CellSearcher, run_sweep

    ray_trials: list[int] = []  # members per Ray trial the searcher started
    start, start_pack = CellSearcher._start, CellSearcher._start_pack
    monkeypatch.setattr(CellSearcher, "_start", lambda self, *a: ray_trials.append(1) or start(self, *a))
    monkeypatch.setattr(
        CellSearcher, "_start_pack", lambda self, tid, st, m: ray_trials.append(len(m)) or start_pack(self, tid, st, m)
    )

    spec = small_spec(
        "packed", axes={"dataset_size": [64], "epochs": [2]}, trials_per_cell=3, packing={"adapters_per_worker": 3}
    )
    res = run_sweep(spec, out=tmp_path / "run")
    assert ray_trials == [3]  # one Ray trial, one pack of three
    assert set(read_results(res.run_dir)["pack_size"]) == {3}
    assert res.counts == {"ok": 3, "failed": 0, "pruned": 0}
    df = read_results(res.run_dir)
    assert len(df) == 3 * 2 and df["trial_id"].nunique() == 3
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert set(df["status"]) == {"ok"} and sorted(set(df["epoch"])) == [1, 2]
    assert df["learning_rate"].nunique() == 3  # constant liar: three distinct asks
    final = df.sort_values("epoch").groupby("trial_id").tail(1)
    (name, trials), = _storage_trials(res.optuna_url, "packed/").items()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for t in trials:
        row = final[final["trial_id"] == f"{name}#{t.number}"]
        assert row["val_eval_loss"].item() == pytest.approx(t.value)
        assert row["learning_rate"].item() == pytest.approx(t.params["learning_rate"])

    # each packed trial reports what trial.run_trial (a pack of one) reports for its config alone
    solo_cache: dict = {}
    for tid, rows in df.groupby("trial_id"):
        rows = rows.sort_values("epoch")
        cfg = trial.TrialConfig(
            model=spec.model, task_kind="addition", task_digits=2, task_path=None, task_seed=0,
            dataset_size=64, epochs=2, learning_rate=float(rows["learning_rate"].iloc[0]),
            lora_r=spec.lora.r, lora_alpha=spec.lora.alpha_for(spec.lora.r), lora_dropout=0.0,
            target_modules=tuple(spec.lora.target_modules), batch_size=32, seed=int(rows["seed"].iloc[0]),
            validation_size=64, test_size=64, warmup_fraction=spec.train.warmup_fraction,
            weight_decay=spec.train.weight_decay, threads=1,
        )  # fmt: skip
        alone = trial.run_trial(cfg, cache=solo_cache)
        assert list(rows["epoch"]) == [m["epoch"] for m in alone]
        for (_, got), want in zip(rows.iterrows(), alone, strict=True):
            for k in METRIC_KEYS:
                if k != "wall_seconds":
                    assert abs(float(got[k]) - float(want[k])) <= 1e-4, (tid, k, got[k], want[k])

    # resume: the plan is complete, nothing re-runs
    assert run_sweep(spec, out=tmp_path / "run").trials_run == 0


def _replay_packed_asha(df: pd.DataFrame, *, active: int, **rule: int) -> dict[str, int]:
    """{trial_id: epoch it was stopped at} for ONE pack whose members are the table's trials, as
    scaling/sweep/worker.py's _run_pack stops them: one RungTable (no earlier trials of the cell)
    that records every member's validation loss by epoch; ``active`` members train at once and a
    queued one (in Optuna-number order, as the searcher asked them) joins when one leaves.
    Members of one cell that joined together end each epoch at the same step: all of them are
    recorded, then each is judged against every other loss recorded at that epoch (pack.py)."""
    from scaling.stopping import RungTable

    losses = {tid: g.set_index("epoch")["val_eval_loss"].astype(float).to_dict() for tid, g in df.groupby("trial_id")}
    queue = sorted(losses, key=lambda tid: int(tid.rsplit("#", 1)[1]))  # member i = the i-th number asked
    table = RungTable("asha", max_epochs=rule["max_epochs"], grace_epochs=rule["grace_epochs"],
                      reduction_factor=rule["reduction_factor"], history={})  # fmt: skip
    # time in epochs of training; a member joins just after the step at which a slot freed
    live: dict[str, tuple[float, int]] = {}  # trial_id -> (join time, epochs done)
    stopped: dict[str, int] = {}
    now, joins = 0.0, 0
    while queue or live:
        while queue and len(live) < active:
            live[queue.pop(0)] = (now + 1e-6 * joins, 0)
        joins += 1
        now = min(j + e + 1 for j, e in live.values())
        ending = [tid for tid, (j, e) in live.items() if j + e + 1 == now]
        for tid in ending:  # every report first ...
            table.record(tid, live[tid][1] + 1, losses[tid][live[tid][1] + 1])
        for tid in ending:  # ... then every should_stop
            j, e = live[tid]
            epoch = e + 1
            if table.should_stop(tid, epoch, losses[tid][epoch]):
                stopped[tid] = epoch
                del live[tid]
            elif epoch == rule["max_epochs"]:
                del live[tid]
            else:
                live[tid] = (j, epoch)
    return stopped


def test_packed_asha_stops_members_alone_and_the_next_config_joins(ray_local, tmp_path, monkeypatch):
    from scaling.sweep import CellSearcher, run_sweep

    packs: list[int] = []
    start_pack = CellSearcher._start_pack
    monkeypatch.setattr(
        CellSearcher, "_start_pack", lambda self, tid, st, m: packs.append(len(m)) or start_pack(self, tid, st, m)
    )
    # one cell, 3 epochs, a wide LR range; packs of 3 adapters with ASHA (rungs at epochs 1, 2):
    # one Ray trial carries 6 configs, 3 train at once and a queued one joins when one is stopped
    spec = small_spec(
        "pasha", axes={"dataset_size": [128], "epochs": [3]}, trials_per_cell=6,
        learning_rate={"low": 1e-5, "high": 1e-1},
        early_stopping={"method": "asha", "grace_epochs": 1, "reduction_factor": 2},
        packing={"adapters_per_worker": 3}, resources={"max_concurrent": 1},
    )  # fmt: skip
    res = run_sweep(spec, out=tmp_path / "run")
    assert packs == [6]
    assert res.counts["ok"] + res.counts["pruned"] == 6 and res.counts["pruned"] >= 2
    df = read_results(res.run_dir)
    assert df["trial_id"].nunique() == 6 and set(df["pack_size"]) == {3}
    assert not df.duplicated(["trial_id", "epoch"]).any()
    last = df.sort_values("epoch").groupby("trial_id").tail(1)
    pruned, ok = last[last.status == "pruned"], last[last.status == "ok"]
    assert (pruned["epoch"] < 3).all() and (ok["epoch"] == 3).all()
    # the stopped members are exactly the ones the rule stops: replay the pack with
    # scaling/stopping.py's rule (which tests/test_stopping.py holds to Ray's ASHA), as the solo
    # test replays its trials
    stopped = pruned.set_index("trial_id")["epoch"].to_dict()
    assert _replay_packed_asha(df, active=3, max_epochs=3, grace_epochs=1, reduction_factor=2) == stopped
    print(f"\npacked ASHA: the replayed rule stops {stopped} (trial: epoch), as the pack did")
    trials = next(iter(_storage_trials(res.optuna_url, "pasha/").values()))
    states = sorted(t.state.name for t in trials)
    assert states.count("PRUNED") == len(pruned) and states.count("COMPLETE") == len(ok)
    assert pruned["train_tokens"].max() < ok["train_tokens"].min()  # the compute saved is real


def test_a_dead_drivers_leftovers_rerun_as_one_pack(ray_local, tmp_path, monkeypatch):
    from scaling.sweep import CellSearcher, cell_study_name, run_sweep

    packs: list[list[int]] = []
    start_pack = CellSearcher._start_pack
    monkeypatch.setattr(
        CellSearcher, "_start_pack",
        lambda self, tid, st, m: packs.append([x[0] for x in m]) or start_pack(self, tid, st, m),
    )  # fmt: skip
    spec = small_spec("porphan", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=3,
                      packing={"adapters_per_worker": 3})  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    # what a driver killed mid-pack leaves: two asked trials, RUNNING, no rows
    study = optuna.create_study(study_name=cell_study_name(spec, spec.cells()[0]),
                                storage=spec.optuna_url(run), direction="minimize")  # fmt: skip
    for lr in (2e-3, 5e-3):
        study.enqueue_trial({"learning_rate": lr}, user_attrs={"phase": "search", "seed": 0})
        study.ask().suggest_float("learning_rate", 1e-3, 3e-2, log=True)
    res = run_sweep(spec, out=run)
    assert res.orphans_resumed == 2 and res.counts == {"ok": 3, "failed": 0, "pruned": 0}
    assert packs == [[0, 1], [2]]  # the leftovers together under their own numbers, then the rest
    df = read_results(run)
    assert sorted(df["optuna_trial"]) == [0, 1, 2]
    assert sorted(df[df.optuna_trial < 2]["learning_rate"]) == pytest.approx([2e-3, 5e-3])
    (trials,) = _storage_trials(res.optuna_url, "porphan/").values()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3


def test_packed_members_fail_alone_and_max_trials_counts_members(ray_local, tmp_path):
    from scaling.sweep import run_sweep

    # diverging LRs: each member of the pack is its own failed row and its own Optuna FAIL
    spec = small_spec(
        "pdiverge", axes={"dataset_size": [64], "epochs": [1]}, learning_rate={"low": 1e29, "high": 1e30},
        packing={"adapters_per_worker": 2},
    )  # fmt: skip
    res = run_sweep(spec, out=tmp_path / "div")
    assert res.counts["failed"] == 2
    df = read_results(res.run_dir)
    assert df["trial_id"].nunique() == 2 and (df["status"] == "failed").all()
    assert df["error"].str.contains("Diverged|nan|inf", case=False).all()
    trials = next(iter(_storage_trials(res.optuna_url, "pdiverge/").values()))
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2

    # max_trials counts Optuna trials, not packs; resume plans exactly the rest
    spec = small_spec(
        "ppartial", axes={"dataset_size": [64], "epochs": [1]}, trials_per_cell=3, packing={"adapters_per_worker": 3}
    )
    first = run_sweep(spec, out=tmp_path / "run", max_trials=2)
    assert first.trials_run == 2
    assert run_sweep(spec, out=tmp_path / "run").trials_run == 1
    df = read_results(tmp_path / "run")
    assert df["trial_id"].nunique() == 3 and set(df["status"]) == {"ok"}
    trials = next(iter(_storage_trials(first.optuna_url, "ppartial/").values()))
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3


def test_the_same_spec_run_twice_gives_bit_identical_rows(ray_local, tmp_path):
    """Runs are reproducible on one machine: the same LRs (BracketSampler is deterministic
    given the storage) and the same metrics, bit for bit, in two fresh run directories."""
    from scaling.sweep import run_sweep

    spec = small_spec("twice", axes={"dataset_size": [64, 128], "epochs": [1]}, trials_per_cell=3)
    cols = ["cell", "optuna_trial", "learning_rate", "epoch", "train_loss", "val_eval_loss", "test_eval_loss",
            "test_exact_match"]  # fmt: skip
    runs = []
    for k in range(2):
        res = run_sweep(spec, out=tmp_path / f"run{k}")
        df = read_results(res.run_dir)
        runs.append(df[cols].sort_values(["cell", "optuna_trial", "epoch"]).reset_index(drop=True))
    assert len(runs[0]) == 6 and runs[0]["learning_rate"].nunique() >= 3
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)
