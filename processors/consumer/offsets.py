"""Which offsets may be committed: only those below which every message is finished; and the
rebalance listener through which a consumer commits them before its partitions are taken."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable

from aiokafka import ConsumerRebalanceListener, TopicPartition

log = logging.getLogger(__name__)


class RevokeListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Awaits ``on_revoked(partitions)`` before they go (the owner commits what is finished
    there and forgets the rest); logs assignments."""

    def __init__(self, on_revoked: Callable[[set[TopicPartition]], Awaitable[None]]) -> None:
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


class _PartitionState:
    __slots__ = ("committed", "done", "finished_ahead", "next_offset", "pending")

    def __init__(self) -> None:
        self.pending: deque[int] = deque()  # offsets handed out, in arrival (= offset) order
        self.done: set[int] = set()  # finished offsets still behind an unfinished one
        self.next_offset: int | None = None  # one past the highest offset seen
        self.committed: int | None = None  # last position committed (or known committed)
        # finished before a rewind: when fetched again they are passed over, not run twice
        self.finished_ahead: set[int] = set()


class OffsetTracker:
    """Tracks received and finished offsets per partition.

    ``committable()`` gives, per partition, the position to commit: the lowest unfinished offset,
    or one past the highest seen when all are finished. A message finishing out of order never
    moves the commit past an earlier unfinished one. All operations are O(1) amortised.
    """

    def __init__(self) -> None:
        self._partitions: dict[Hashable, _PartitionState] = {}
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Messages received and not yet finished, over all partitions."""
        return self._in_flight

    def add(self, tp: Hashable, offset: int) -> bool:
        """Record that ``offset`` of ``tp`` was received; False if it finished before a rewind
        (nothing to do: it counts as finished again)."""
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = _PartitionState()
        state.next_offset = offset + 1
        if offset in state.finished_ahead:
            state.finished_ahead.discard(offset)
            if state.pending:  # behind an unfinished one: still holds the commit back
                state.pending.append(offset)
                state.done.add(offset)
            return False
        state.pending.append(offset)
        self._in_flight += 1
        return True

    def finish(self, tp: Hashable, offset: int) -> None:
        """Record that ``offset`` of ``tp`` is finished (its output acknowledged)."""
        state = self._partitions.get(tp)
        if state is None:  # partition revoked meanwhile: nothing to commit any more
            return
        if state.pending and state.pending[0] == offset:
            state.pending.popleft()
            while state.pending and state.pending[0] in state.done:
                state.done.remove(state.pending.popleft())
        else:
            state.done.add(offset)
        self._in_flight -= 1

    def pending_in(self, tp: Hashable) -> int:
        """Unfinished messages of one partition."""
        state = self._partitions.get(tp)
        return 0 if state is None else len(state.pending) - len(state.done)

    def position(self, tp: Hashable) -> int | None:
        """Where a consumer of ``tp`` should resume: the lowest unfinished offset."""
        state = self._partitions.get(tp)
        if state is None:
            return None
        return state.pending[0] if state.pending else state.next_offset

    def rewind(self, tp: Hashable) -> int | None:
        """Forget ``tp``'s unfinished messages, to fetch them again from the lowest one (returned;
        None when none is unfinished). Their in-flight slots are returned; messages above it that
        finished are remembered, so that fetched again they are not run twice."""
        state = self._partitions.get(tp)
        if state is None or not state.pending:
            return None
        position = state.pending[0]
        self._in_flight -= len(state.pending) - len(state.done)
        state.finished_ahead |= state.done
        state.pending.clear()
        state.done = set()
        state.next_offset = position
        return position

    def committable(self) -> dict[Hashable, int]:
        """Positions that moved since they were last marked committed."""
        out = {}
        for tp, state in self._partitions.items():
            position = state.pending[0] if state.pending else state.next_offset
            if position is not None and position != state.committed:
                out[tp] = position
        return out

    def mark_committed(self, positions: dict[Hashable, int]) -> None:
        """Record that ``positions`` were committed to the broker."""
        for tp, position in positions.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.committed = position

    def remove(self, partitions: Iterable[Hashable]) -> None:
        """Forget partitions (revoked); their unfinished messages leave the in-flight count."""
        for tp in partitions:
            state = self._partitions.pop(tp, None)
            if state is not None:
                self._in_flight -= len(state.pending) - len(state.done)
