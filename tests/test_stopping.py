"""The rules a pack uses to stop its own members (scaling/stopping.py), on known answers."""

import math

import pytest

from scaling.stopping import RungTable, asha_rungs


@pytest.mark.parametrize(
    ("max_epochs", "grace", "eta", "rungs"),
    [(9, 1, 3, [1, 3]), (10, 1, 3, [1, 3, 9]), (4, 1, 3, [1, 3]), (2, 1, 3, [1]), (1, 1, 3, []),
     (10, 2, 2, [2, 4, 8]), (6, 1, 2.5, [1, 3])],
)  # fmt: skip
def test_asha_rungs(max_epochs, grace, eta, rungs):
    assert asha_rungs(max_epochs, grace, eta) == rungs


def test_asha_keeps_the_best_third_of_nine_at_a_rung():
    table = RungTable("asha", max_epochs=9, grace_epochs=1, reduction_factor=3)
    losses = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]  # member i's loss at epoch 1
    for i, v in enumerate(losses):
        table.record(i, 1, v)
    kept = sorted(v for i, v in enumerate(losses) if not table.should_stop(i, 1, v))
    assert kept == [0.1, 0.2, 0.3]
    # the order members are judged in does not matter: everyone at the rung is recorded first
    assert [table.should_stop(i, 1, v) for i, v in reversed(list(enumerate(losses)))] == [
        v > 0.3 for v in reversed(losses)
    ]


def test_asha_judges_only_at_rungs_and_never_the_last_epoch():
    table = RungTable("asha", max_epochs=4, grace_epochs=1, reduction_factor=3,
                      history={1: [0.1, 0.2], 2: [0.1, 0.2], 3: [0.1, 0.2], 4: [0.1]})  # fmt: skip
    assert table.should_stop("x", 1, 0.5)  # rung 1, worse than the cell's earlier trials
    assert not table.should_stop("x", 2, 0.5)  # no rung at 2
    assert table.should_stop("x", 3, 0.5)  # rung 3
    assert not table.should_stop("x", 4, 0.5)  # finished anyway
    assert not table.should_stop("x", 1, 0.05)  # better than the history
    assert not RungTable("asha", max_epochs=4).should_stop("x", 1, 9.0)  # first at its rung


def test_median_rule_uses_history_and_peers_after_grace():
    table = RungTable("median", max_epochs=5, grace_epochs=2, history={2: [0.5, 0.6], 3: [0.4]})
    assert not table.should_stop("a", 1, 10.0)  # inside the grace period
    assert table.should_stop("a", 2, 0.7)  # median of [0.5, 0.6] is 0.55
    assert not table.should_stop("a", 2, 0.55)  # equal to the median: not worse
    assert not table.should_stop("a", 3, 0.9)  # only one other trial at epoch 3
    table.record("b", 3, 0.5)
    table.record("a", 3, 0.9)
    assert table.should_stop("a", 3, 0.9) and not table.should_stop("b", 3, 0.5)  # median(0.4, 0.5)/(0.4, 0.9)


def test_non_finite_values_are_ignored_and_bad_rules_refused():
    table = RungTable("median", max_epochs=3, history={1: [math.nan, 0.2, 0.3]})
    assert table.others("a", 1) == [0.2, 0.3]
    table.record("b", 1, math.inf)
    assert table.others("a", 1) == [0.2, 0.3]
    assert not table.should_stop("a", 1, math.nan)
    with pytest.raises(ValueError, match="method must be 'asha' or 'median', got 'hyperband'"):
        RungTable("hyperband", max_epochs=3)
    with pytest.raises(ValueError, match="reduction_factor > 1"):
        asha_rungs(3, 1, 1.0)
