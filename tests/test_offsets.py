"""OffsetTracker: commits never pass an unfinished message."""

from graphwire.processors.consumer.offsets import OffsetTracker


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


def test_rewind_returns_slots_and_restarts_at_the_lowest_unfinished_offset() -> None:
    """Rewinding 10..13 (11 and 13 done) frees 2 slots, resumes at 10, re-runs only 10 and 12."""
    t = OffsetTracker()
    for offset in (10, 11, 12, 13):
        t.add("p0", offset)
    t.finish("p0", 11)
    t.finish("p0", 13)
    assert t.in_flight == 2
    assert t.rewind("p0") == 10
    assert (t.in_flight, t.position("p0"), t.pending_in("p0")) == (0, 10, 0)
    assert [t.add("p0", offset) for offset in (10, 11, 12, 13, 14)] == [
        True, False, True, False, True,
    ]
    assert (t.in_flight, t.committable()) == (3, {"p0": 10})
    t.finish("p0", 10)
    assert t.committable() == {"p0": 12}  # 11 finished before the rewind: passed over
    t.finish("p0", 12)
    assert t.committable() == {"p0": 14}
    t.finish("p0", 14)
    assert (t.in_flight, t.committable()) == (0, {"p0": 15})


def test_rewind_of_a_finished_or_unknown_partition_is_a_no_op() -> None:
    """Nothing unfinished: rewind returns None and changes neither position nor in-flight."""
    t = OffsetTracker()
    assert t.rewind("p0") is None
    t.add("p0", 3)
    t.finish("p0", 3)
    assert (t.rewind("p0"), t.position("p0"), t.in_flight) == (None, 4, 0)


def test_finished_offset_refetched_first_after_rewind_only_moves_the_position() -> None:
    """A finished offset refetched with nothing pending before it counts as finished at once."""
    t = OffsetTracker()
    t.add("p0", 0)
    t.add("p0", 1)
    t.finish("p0", 1)
    assert t.rewind("p0") == 0
    t.add("p0", 0)
    t.finish("p0", 0)
    assert t.add("p0", 1) is False
    assert (t.in_flight, t.committable()) == (0, {"p0": 2})
