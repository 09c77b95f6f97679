"""The group consumer's decisions, shared by the runner and the webhook processor: no I/O."""

from aiokafka import TopicPartition

from graphwire.processors.consumer.group import (
    Poll,
    commit_positions,
    lag,
    next_poll,
    to_resume,
)
from graphwire.processors.consumer.offsets import OffsetTracker
from graphwire.processors.consumer.stalls import moves_again, rewind_delay

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)


def test_room_left_fetches_and_the_limit_waits() -> None:
    """One free slot fetches; none, or fewer than none after a rebalance, waits for a slot."""
    assert next_poll(1) is Poll.FETCH
    assert next_poll(64) is Poll.FETCH
    assert next_poll(0) is Poll.WAIT
    assert next_poll(-3) is Poll.WAIT


def test_a_dependency_down_holds_even_with_room() -> None:
    """Unhealthy dependencies pause fetching whatever the room, at the limit too."""
    assert next_poll(64, healthy=False) is Poll.HOLD
    assert next_poll(0, healthy=False) is Poll.HOLD


def test_resume_leaves_held_partitions_paused() -> None:
    """Before a fetch every paused partition resumes except the stalled (held) ones."""
    assert to_resume({A0, A1, B0}, {A1}) == {A0, B0}
    assert to_resume({A0}, set()) == {A0}
    assert to_resume(set(), {A1}) == set()


def test_commit_positions_of_all_or_only_the_named_partitions() -> None:
    """Without partitions every moved position is committed; with them, only theirs."""
    committable = {A0: 10, A1: 7, B0: 3}
    assert commit_positions(committable) == {A0: 10, A1: 7, B0: 3}
    assert commit_positions(committable, {A1, TopicPartition("c", 0)}) == {A1: 7}
    assert commit_positions(committable, set()) == {}
    assert commit_positions({}, {A0}) == {}


def test_commit_positions_from_the_tracker_stop_at_the_lowest_unfinished() -> None:
    """An out-of-order finish commits nothing past the unfinished offset, of that partition only."""
    tracker = OffsetTracker()
    for offset in (5, 6, 7):
        tracker.add(A0, offset)
    tracker.add(B0, 0)
    tracker.finish(A0, 6)
    tracker.finish(B0, 0)
    assert commit_positions(tracker.committable(), {A0}) == {A0: 5}
    assert commit_positions(tracker.committable()) == {A0: 5, B0: 1}
    tracker.mark_committed({A0: 5, B0: 1})
    tracker.finish(A0, 5)
    assert commit_positions(tracker.committable()) == {A0: 7}


def test_lag_counts_the_records_after_the_last_fetched_one() -> None:
    """High watermark 100 after offset 89: 10 records wait; none when caught up or unknown."""
    assert lag(100, 89) == 10
    assert lag(100, 99) == 0
    assert lag(100, 120) == 0
    assert lag(None, 5) is None


def test_rewind_backoff_doubles_from_one_second_up_to_thirty() -> None:
    """A stalled partition is fetched again after 1, 2, 4, 8, 16, then 30 seconds at most."""
    assert [rewind_delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_stall_ends_only_when_a_commit_passes_its_message() -> None:
    """Committed past offset 7 with no rewind pending: moves again; at 7, unknown or mid-rewind:
    still stalled."""
    assert moves_again(7, rewinding=False, committed=8) is True
    assert moves_again(7, rewinding=False, committed=7) is False
    assert moves_again(7, rewinding=False, committed=None) is False
    assert moves_again(7, rewinding=True, committed=9) is False
