"""Stalls: a partition held at a message that cannot be finished, not even dead-lettered.

The partition is paused, its other work finishes, then it is rewound (seek) to the lowest
unfinished offset and fetched again with backoff until that message finishes. Order holds, no
in-flight slot leaks, and ``readiness()`` names the partition meanwhile. A commit past the
message ends the stall.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import Counter

from graphwire.processors.consumer.group import GroupConsumer

log = logging.getLogger(__name__)

# A stalled partition is fetched again after 1 s, then 2, 4, ... at most 30 s between tries.
REWIND_FIRST_S = 1.0
REWIND_MAX_S = 30.0


def rewind_delay(attempts: int) -> float:
    """Seconds to wait before fetching a partition again after its ``attempts``-th stall."""
    return min(REWIND_FIRST_S * 2.0 ** (attempts - 1), REWIND_MAX_S)


def moves_again(stalled_at: int, rewinding: bool, committed: int | None) -> bool:
    """Whether a commit at ``committed`` ends the stall at offset ``stalled_at``: the message
    finished (the position passed it) and no rewind is pending."""
    return committed is not None and not rewinding and committed > stalled_at


@dataclass
class _Stall:
    """A partition held at a message that could not be finished."""

    offset: int
    """The lowest unfinished offset when the partition last stalled."""
    attempts: int = 0
    """Times it stalled at that message (the backoff grows with it)."""
    rewind: asyncio.Task[None] | None = None
    """Set from the stall until the partition is rewound and may be fetched again."""


class Stalls:
    """The stalled partitions of one ``GroupConsumer``, and their rewinds."""

    def __init__(
        self,
        group: GroupConsumer,
        *,
        counter: Counter,
        running: Callable[[TopicPartition], set[asyncio.Task[None]]],
        commit: Callable[[set[TopicPartition]], Awaitable[object]],
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]],
    ) -> None:
        """``running(tp)``: the owner's work of a partition still in progress; ``commit``: the
        owner's commit; ``spawn(coro, name)``: a task whose unexpected death the owner reports;
        ``counter``: stalls, labelled by topic and partition."""
        self._group = group
        self._counter = counter
        self._running = running
        self._commit = commit
        self._spawn = spawn
        self._stalls: dict[TopicPartition, _Stall] = {}

    def __len__(self) -> int:
        return len(self._stalls)

    def partitions(self) -> set[TopicPartition]:
        """Every stalled partition."""
        return set(self._stalls)

    def held(self) -> set[TopicPartition]:
        """Stalled partitions not rewound yet: not fetched, not dispatched."""
        return {tp for tp, stall in self._stalls.items() if stall.rewind is not None}

    def readiness(self) -> str | None:
        """Why the worker is not ready because of stalls (None when nothing is stalled)."""
        if not self._stalls:
            return None
        return "; ".join(
            f"partition {tp.topic}/{tp.partition} is stalled at offset {stall.offset} "
            f"(attempts: {stall.attempts}): a message there cannot be finished, not even "
            "dead-lettered; check the dead-letter topic and the worker log"
            for tp, stall in sorted(self._stalls.items())
        )

    def stall(self, tp: TopicPartition, offset: int) -> None:
        """Hold ``tp`` at an unfinished message, then rewind it to fetch that message again."""
        stall = self._stalls.get(tp)
        if stall is None:
            stall = self._stalls[tp] = _Stall(offset)
            log.error(
                "partition %s/%d stalled at offset %d: the message cannot be finished, not even "
                "dead-lettered; it is fetched again with backoff until it is (see /ready)",
                tp.topic, tp.partition, offset,
            )
        if stall.rewind is not None:  # another key of the partition stalled: already held
            return
        consumer = self._group.consumer
        assert consumer is not None
        if tp in consumer.assignment():
            consumer.pause(tp)
        stall.attempts += 1
        self._counter.labels(tp.topic, str(tp.partition)).inc()
        stall.rewind = self._spawn(self._rewind(tp, stall), f"rewind {tp.topic}/{tp.partition}")

    async def _rewind(self, tp: TopicPartition, stall: _Stall) -> None:
        """Once the partition's runs are over, forget its unfinished messages (their slots come
        back), wait the backoff and seek to the lowest one: it and its key's later messages are
        fetched again, in order. What finished meanwhile is committed and not run again."""
        running = self._running(tp)
        if running:
            await asyncio.wait(running)
        await self._commit({tp})
        position = self._group.tracker.rewind(tp)
        self._group.wake()
        if position is None:  # revoked meanwhile: nothing of it is held here any more
            if self._stalls.get(tp) is stall:
                del self._stalls[tp]
            return
        stall.offset = position
        await asyncio.sleep(rewind_delay(stall.attempts))
        consumer = self._group.consumer
        assert consumer is not None
        if tp in consumer.assignment():
            consumer.seek(tp, position)
        stall.rewind = None  # the poll loop resumes the partition

    def committed(self, positions: Mapping[Hashable, int]) -> None:
        """After a commit: a partition committed past its stalled message moves again."""
        for tp, stall in list(self._stalls.items()):
            if moves_again(stall.offset, stall.rewind is not None, positions.get(tp)):
                del self._stalls[tp]
                log.warning(
                    "partition %s/%d moves again: offset %d is finished",
                    tp.topic, tp.partition, stall.offset,
                )

    async def cancel(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget the stalls of ``partitions`` (revoked, or the owner stops)."""
        tasks = []
        for tp in partitions:
            stall = self._stalls.pop(tp, None)
            if stall is not None and stall.rewind is not None:
                stall.rewind.cancel()
                tasks.append(stall.rewind)
        await asyncio.gather(*tasks, return_exceptions=True)
