"""The one selection rule (analysis.selection) and the per-trial summary (analysis.table), through the
library and the CLI: each test recovers a known answer from a table built by hand."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.findings import analyse
from analysis.selection import higher_is_better, select
from analysis.table import trial_summary
from scaling.cli import app
from scaling.records import append_rows

runner = CliRunner()


def row(trial: str, *, d: int, e: int = 1, lr: float, epoch: int = 1, **metrics: float) -> dict:
    return {"study": "sel", "trial_id": trial, "cell": f"D={d},E={e},r=8", "phase": "search", "dataset_size": d,
            "epochs": e, "lora_r": 8, "learning_rate": lr, "epoch": epoch, "status": "ok", **metrics}  # fmt: skip


# ---- direction: exact match is maximised, loss minimised -------------------------------------


def direction_rows() -> list[dict]:
    # the cell: D=4,800 x 4 epochs; LR 1e-3 has the lower val loss but val exact match
    # 0.17, LR 4.8e-3 has exact match 0.72
    return [
        row("sel/a#0", d=4800, e=4, lr=1.0e-3, val_eval_loss=0.30, val_exact_match=0.17, test_exact_match=0.15),
        row("sel/a#1", d=4800, e=4, lr=4.8e-3, val_eval_loss=0.35, val_exact_match=0.72, test_exact_match=0.70),
    ]  # fmt: skip


def test_metric_directions():
    assert higher_is_better("exact_match") and higher_is_better("val_token_accuracy")
    assert higher_is_better("test_answer_logprob")
    assert not higher_is_better("eval_loss") and not higher_is_better("val_eval_loss")


def test_best_lr_on_exact_match_picks_the_highest(tmp_path):
    df = pd.DataFrame(direction_rows())
    em = select(df, metric="exact_match")
    assert em.mode == "max"
    b = em.best.iloc[0]
    assert (b["trial_id_best"], b["lr_best"], b["metric_best"]) == ("sel/a#1", 4.8e-3, 0.72)
    loss = select(df, metric="eval_loss")
    assert loss.mode == "min" and loss.best.iloc[0]["lr_best"] == 1.0e-3
    # the CLI says the same
    append_rows(tmp_path / "run", direction_rows())
    res = runner.invoke(app, ["best-lr", str(tmp_path / "run"), "--metric", "exact_match", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["mode"] == "max" and doc["cells"][0]["lr_best"] == 4.8e-3
    assert doc["cells"][0]["metric_best"] == 0.72


# ---- show x.parquet reads that file -----------------------------------------------------------


def test_show_reads_the_file_it_is_given(tmp_path):
    mine = [row(f"sel/m#{i}", d=1000, lr=lr, val_eval_loss=v, test_eval_loss=v + 0.01, test_exact_match=0.5)
            for i, (lr, v) in enumerate(((1e-3, 0.9), (3e-3, 0.4), (1e-2, 0.7)))]  # fmt: skip
    other = [row(f"sel/o#{i}", d=64, lr=lr, val_eval_loss=v) for i, (lr, v) in enumerate(((2e-4, 1.0), (5e-4, 2.0)))]
    append_rows(tmp_path / "mine", mine)
    folder = tmp_path / "folder"
    append_rows(folder, other)  # folder/results.parquet: a different study beside the file
    shutil.copy(tmp_path / "mine" / "results.parquet", folder / "x.parquet")
    res = runner.invoke(app, ["show", str(folder / "x.parquet")])
    assert res.exit_code == 0, res.output
    assert "3 trials ({'ok': 3}), 3 rows" in res.output and "2 trials" not in res.output
    # the file's cell (D=1000; chosen: val loss 0.4, its test loss 0.41), not the folder's (D=64)
    assert "│ 1000 │" in res.output and "0.41" in res.output and "│   64 │" not in res.output


# ---- emergence selects like the report ------------------------------------------------------


SIZES = (250, 500, 1000, 2000, 4000, 8000, 16000, 32000)


def emergence_rows() -> list[dict]:
    rows = []
    for i, d in enumerate(SIZES):
        smooth = 0.1 + 0.1 * np.log2(d / SIZES[0]) / 7  # the chosen config: exact match grows steadily
        jumpy = 0.0 if d < 3000 else 0.95  # a config validation rejects: it jumps on test
        for k, (lr, val, em) in enumerate(((3e-3, 0.5, smooth), (3e-2, 0.9, jumpy))):
            loss = 1.0 + 2.0 * d**-0.3 + 0.4 * k
            rows.append(row(f"sel/{i}#{k}", d=d, lr=lr, val_eval_loss=val - 0.01 * i, test_eval_loss=loss,
                            test_token_accuracy=0.5 + 0.3 * (1 - d**-0.2) - 0.1 * k, test_exact_match=em))  # fmt: skip
    return rows


def test_emergence_reads_the_chosen_configs_as_the_report_does(tmp_path):
    run = tmp_path / "run"
    append_rows(run, emergence_rows())
    res = runner.invoke(app, ["emergence", str(run), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    [s] = doc["series"]
    assert s["label"] == "epochs=1"
    # the chosen configs' exact match rises smoothly: no jump (the max over all rows would jump)
    assert s["jump"]["verdict"] != "jump"
    assert s["points"]["x"] == list(SIZES)
    assert s["points"]["y"] == pytest.approx([0.1 + 0.1 * j / 7 for j in range(8)])
    assert s["mirage"]["series"]["exact_match"]["y"] == pytest.approx(s["points"]["y"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        an = analyse(pd.read_parquet(run / "results.parquet"), bootstrap=0, sections=("emergence",))
    [rep] = an.numbers["emergence"]["series"]
    assert (rep["verdict"], rep["mirage"]) == (s["jump"]["verdict"], s["mirage"]["verdict"])


# ---- a pack's time counted once ----------------------------------------------------------------


def test_pack_time_is_counted_once():
    flops, wall = 2.0e12, 30.0  # each member's FLOPs; the pack's wall time (every member reports it)
    rows = []
    for p, d in enumerate((1000, 2000)):  # two packs of 3 adapters
        for k, lr in enumerate((1e-3, 3e-3, 1e-2)):
            r = row(f"sel/{p}#{k}", d=d, lr=lr, val_eval_loss=1.0 + k, test_eval_loss=1.0 + k)
            rows.append({**r, "train_flops": flops, "wall_seconds": wall, "pack_size": 3})
    table = pd.DataFrame(rows)
    t = trial_summary(table)
    assert list(t["wall_seconds"]) == [10.0] * 6 and list(t["pack_wall_seconds"]) == [30.0] * 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp = analyse(table, bootstrap=0, sections=("study",)).numbers["study"]["compute"]
    assert comp["trial_seconds_total"] == pytest.approx(2 * wall)  # two packs, each counted once
    assert comp["flops_per_second"] == pytest.approx(3 * flops / wall)  # 3 adapters trained at once
    # the same trials run alone (pack_size 1, a third of the time each) give the same throughput
    solo = table.assign(wall_seconds=wall / 3, pack_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = analyse(solo, bootstrap=0, sections=("study",)).numbers["study"]["compute"]
    assert alone["flops_per_second"] == pytest.approx(comp["flops_per_second"])
    assert alone["trial_seconds_total"] == pytest.approx(comp["trial_seconds_total"])


def test_fit_on_a_run_fits_the_chosen_configs(tmp_path):
    # the chosen configs' test loss is exactly 1 + 2 D^-0.3; the rejected ones sit 0.4 above it
    run = tmp_path / "run"
    append_rows(run, emergence_rows())
    res = runner.invoke(app, ["fit", str(run), "--json"])
    assert res.exit_code == 0, res.output
    p = json.loads(res.output)["params"]
    assert (p["E"], p["A"], p["alpha"]) == pytest.approx((1.0, 2.0, 0.3), rel=1e-3)


def test_rendering_only_reads_the_analysis():
    from analysis.report import build_report
    from analysis.table import clean

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        an = analyse(pd.DataFrame(emergence_rows()), bootstrap=0)
        before = json.dumps(clean(an.numbers), sort_keys=True)
        rep = build_report(an)
        build_report(an)
    assert json.dumps(clean(an.numbers), sort_keys=True) == before
    assert rep.numbers["figures"] and "figures" not in an.numbers


def test_plan_budget_hours_under_packing():
    from analysis.plan import plan_budget

    rate = 1.0e9  # FLOPs/s of one worker, whether it trains one adapter or a pack of 2
    rows = []
    for r in emergence_rows():  # 2 LRs per cell, trained as one pack of 2
        flops = 6.0e5 * r["dataset_size"]
        rows.append({**r, "train_flops": flops, "wall_seconds": 2 * flops / rate, "pack_size": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = plan_budget(pd.DataFrame(rows), budget_hours=0.5, bootstrap=0)
    assert p["flops_per_second"] == pytest.approx(rate)
    assert p["budget_flops"] == pytest.approx(0.5 * 3600 * rate)
    assert p["choice"]["dataset_size"] == pytest.approx(0.5 * 3600 * rate / 6.0e5)
