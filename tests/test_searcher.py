"""CellSearcher without Ray: a cell left unbracketed after trials_per_cell takes extra LR trials."""

from __future__ import annotations

import math

import optuna
import pytest

from analysis.table import SELECT_METRIC
from scaling.lr_sampler import summarise_cell
from scaling.spec import parse_spec
from scaling.sweep.searcher import CellSearcher

LOW, HIGH = 1e-3, 1.6e-2


def spec(**over):
    data = {"name": "s", "axes": {"dataset_size": [100], "epochs": [1]},
            "learning_rate": {"low": LOW, "high": HIGH}, "trials_per_cell": 2, **over}  # fmt: skip
    return parse_spec(data)


def drive(searcher: CellSearcher, loss) -> list[tuple[str, float]]:
    """Run the searcher's trials one at a time (as Ray would with one slot): [(phase, lr), ...]."""
    seen = []
    for i in range(100):
        cfg = searcher.suggest(f"t{i}")
        if cfg == CellSearcher.FINISHED:
            return seen
        assert isinstance(cfg, dict), cfg  # nothing is in flight, so the searcher never waits
        lr = cfg["learning_rate"]
        seen.append((cfg["phase"], lr))
        searcher.on_trial_complete(f"t{i}", {SELECT_METRIC: loss(lr), "epoch": 1, "epochs": 1})
    raise AssertionError("the searcher never finished")


def bowl(center: float):
    return lambda lr: 1.0 + (math.log(lr) - math.log(center)) ** 2


@pytest.mark.parametrize("extra", [0, 2])
def test_an_unbracketed_cell_takes_one_extra_trial_on_its_open_side(extra):
    # 2 trials: the log-midpoint (4e-3), then the low edge; with the optimum at the midpoint the
    # best has a neighbour below only. One more trial above brackets it; then the search stops
    s = spec(sampler={"extra_trials": extra})
    searcher = CellSearcher(s, optuna.storages.InMemoryStorage(), cells=s.cells())
    mid = math.sqrt(LOW * HIGH)
    seen = drive(searcher, bowl(mid))
    lrs = [lr for _, lr in seen]
    assert lrs[:2] == pytest.approx([mid, LOW])
    cell = summarise_cell(searcher.cells[0].study)
    if extra == 0:
        assert len(seen) == 2 and not cell.done and cell.right is None
    else:
        assert len(seen) == 3 and lrs[2] > mid and cell.bracketed  # one was enough: the rest unused
        assert cell.lr == pytest.approx(mid, rel=0.05)


def test_an_edge_best_ends_the_search_and_the_repeat_waits_for_the_extra():
    # the optimum lies above the range: the extra trial steps out to the high edge, which is best,
    # so the search is done (the advice is "widen the range", not more trials); the repeat seed
    # then reruns the best of all three trials, not of the first two
    s = spec(sampler={"extra_trials": 2}, seeds={"base": 0, "repeat_best": 1})
    searcher = CellSearcher(s, optuna.storages.InMemoryStorage(), cells=s.cells())
    loss = bowl(3 * HIGH)
    seen = drive(searcher, loss)
    assert [p for p, _ in seen] == ["search", "search", "search", "repeat"]
    search_lrs = [lr for p, lr in seen if p == "search"]
    assert max(search_lrs) == pytest.approx(HIGH) and summarise_cell(searcher.cells[0].study).edge == "high"
    assert seen[-1][1] == pytest.approx(HIGH) == min(search_lrs, key=loss)
    assert searcher.remaining() == 0


def test_extra_trials_stop_at_the_cap():
    # 1 planned trial (the midpoint) + at most 1 extra (the low edge, worse): still one-sided, but
    # the cap ends the search
    s = spec(trials_per_cell=1, sampler={"extra_trials": 1})
    searcher = CellSearcher(s, optuna.storages.InMemoryStorage(), cells=s.cells())
    mid = math.sqrt(LOW * HIGH)
    seen = drive(searcher, bowl(mid))
    assert [lr for _, lr in seen] == pytest.approx([mid, LOW])
    assert not summarise_cell(searcher.cells[0].study).done
    assert searcher.remaining() == 0 and searcher.most_remaining() == 0


def test_remaining_counts_an_extra_that_told_trials_already_ask_for():
    s = spec(sampler={"extra_trials": 2})
    storage = optuna.storages.InMemoryStorage()
    first = CellSearcher(s, storage, cells=s.cells())
    mid = math.sqrt(LOW * HIGH)
    for i in range(2):  # the two planned trials, told
        cfg = first.suggest(f"t{i}")
        first.on_trial_complete(f"t{i}", {SELECT_METRIC: bowl(mid)(cfg["learning_rate"]), "epoch": 1, "epochs": 1})
    resumed = CellSearcher(s, storage, cells=s.cells())  # a later driver reads what the storage says
    assert resumed.remaining() == 1 and resumed.most_remaining() == 2
    assert s.planned_trials() == 2 and s.max_trials() == 4
