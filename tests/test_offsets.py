"""OffsetTracker: commits never pass an unfinished message."""

from graphwire.processors.runner.offsets import OffsetTracker


def test_out_of_order_finish_commits_only_the_finished_prefix() -> None:
    """Finishing 11 and 12 before 10 commits nothing past 10; finishing 10 commits 13."""
    t = OffsetTracker()
    for offset in (10, 11, 12):
        t.add("p0", offset)
    assert t.committable() == {"p0": 10}
    t.finish("p0", 11)
    t.finish("p0", 12)
    assert t.committable() == {"p0": 10}
    assert t.in_flight == 1
    t.finish("p0", 10)
    assert t.committable() == {"p0": 13}
    assert t.in_flight == 0


def test_committed_positions_are_not_offered_again() -> None:
    """After mark_committed the same position is not committable until it moves."""
    t = OffsetTracker()
    t.add("p0", 0)
    t.finish("p0", 0)
    t.mark_committed(t.committable())
    assert t.committable() == {}
    t.add("p0", 1)
    assert t.committable() == {}
    t.finish("p0", 1)
    assert t.committable() == {"p0": 2}


def test_partitions_are_independent_and_removal_forgets_in_flight() -> None:
    """A stuck partition does not hold back another; removing it drops its in-flight count."""
    t = OffsetTracker()
    t.add("a", 0)
    t.add("a", 1)
    t.add("b", 5)
    t.finish("a", 1)
    t.finish("b", 5)
    assert t.committable() == {"a": 0, "b": 6}
    assert (t.in_flight, t.pending_in("a"), t.pending_in("b")) == (1, 1, 0)
    t.remove(["a"])
    assert (t.in_flight, t.committable(), t.position("a")) == (0, {"b": 6}, None)
    t.finish("a", 0)  # a late finish of a revoked partition is ignored
    assert t.in_flight == 0
