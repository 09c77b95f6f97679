"""GroupConsumer: one member of a consumer group whose messages are finished by its owner.

The owner (``GraphRunner``, ``WebhookDispatcher``) says how many more messages it takes now and
what to do with fetched ones; this class does the rest the same way for both:

1. Fetch at most the room left. At the in-flight limit (or while a dependency is down) every
   partition is paused and polling goes on, so the member stays in the group however long the
   work takes; a freed slot (``wake()``) fetches again at once.
2. Hand each new message to the owner once (``accept``): not one of a partition revoked while it
   was fetched, nor one of a partition held by the owner, nor one that finished before a rewind.
3. Commit every ``commit_interval_ms`` the finished prefix of each partition (``OffsetTracker``).
4. On revoke, the owner stops its work of those partitions; ``hand_over`` commits what finished
   and forgets the rest, which the new owner fetches again.
5. The lag gauge: per partition, the records not fetched yet (the fetch's high watermark).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from enum import Enum
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge, Histogram

from graphwire.processors.consumer.offsets import OffsetTracker, RevokeListener
from graphwire.processors.settings import Settings
from graphwire.topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Batches: TypeAlias = dict[TopicPartition, list[Record]]

_RETRY_S = 0.5  # after a failed fetch, and between looks while a dependency is down
_SLOT_WAIT_S = 1.0  # at the limit: a paused poll at least this often, to stay in the group


class Poll(Enum):
    """What the poll loop does next."""

    FETCH = "fetch"
    """Resume the partitions not held and fetch up to the room left."""
    WAIT = "wait"
    """At the in-flight limit: wait for a slot, polling paused meanwhile."""
    HOLD = "hold"
    """A dependency is down: poll paused, look again in half a second."""


def next_poll(room: int, healthy: bool = True) -> Poll:
    """The poll loop's next step, given the messages the owner takes now and its dependencies."""
    if not healthy:
        return Poll.HOLD
    if room <= 0:
        return Poll.WAIT
    return Poll.FETCH


def to_resume(paused: Iterable[Hashable], held: Iterable[Hashable]) -> set[Hashable]:
    """Paused partitions to resume before a fetch: all but those the owner holds."""
    return set(paused) - set(held)


def commit_positions(
    committable: Mapping[Hashable, int], partitions: Iterable[Hashable] | None = None
) -> dict[Hashable, int]:
    """The positions to commit: the moved ones, of ``partitions`` only when given."""
    if partitions is None:
        return dict(committable)
    wanted = set(partitions)
    return {tp: p for tp, p in committable.items() if tp in wanted}


def lag(highwater: int | None, last_offset: int) -> int | None:
    """Records after ``last_offset`` not fetched yet; None when the fetch gave no high watermark."""
    if highwater is None:
        return None
    return max(0, highwater - last_offset - 1)


def kafka_unreachable(settings: Settings) -> DependencyUnavailable:
    """The error a processor raises when its Kafka clients cannot connect."""
    return DependencyUnavailable(
        f"cannot reach Kafka at {settings.bootstrap_servers}: check GRAPHWIRE_BOOTSTRAP_SERVERS, "
        "the broker and the security settings"
    )


class GroupConsumer:
    """One member of ``group_id``: fetches with backpressure, commits finished prefixes."""

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        group_id: str,
        lag_gauge: Gauge,
        commits: Counter,
        commit_latency: Histogram | None = None,
        paused_gauge: Gauge | None = None,
    ) -> None:
        """The metrics are the owner's: ``commits`` is labelled by outcome (ok, failed)."""
        self.settings = settings
        self.tracker = OffsetTracker()
        """Received and finished offsets; the owner marks a message finished here."""
        self.consumer: AIOKafkaConsumer | None = None
        """The Kafka consumer, from ``start()`` on."""
        self._client_id = client_id
        self._group_id = group_id
        self._lag = lag_gauge
        self._commits = commits
        self._commit_latency = commit_latency
        self._paused = paused_gauge
        self._slot_freed = asyncio.Event()
        self._commit_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and join (no subscription yet). Raises ``KafkaConnectionError``."""
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=self._client_id,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_partition_fetch_bytes=max(1024 * 1024, s.max_message_bytes),
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            **s.kafka_security(),
        )
        await self.consumer.start()

    def subscribe(
        self, topics: list[str], on_revoked: Callable[[set[TopicPartition]], Awaitable[None]]
    ) -> None:
        """Subscribe; ``on_revoked`` is awaited before partitions go to another member."""
        assert self.consumer is not None
        self.consumer.subscribe(topics, listener=RevokeListener(on_revoked))

    async def stop(self) -> None:
        """Leave the group (the owner committed first)."""
        if self.consumer is not None:
            await self.consumer.stop()

    # -- fetching --------------------------------------------------------------------------

    def wake(self) -> None:
        """A message finished or slots came back: the poll loop looks at the room again."""
        self._slot_freed.set()

    def finish(self, tp: TopicPartition, offset: int) -> None:
        """Mark a message finished (committable once those before it are) and free its slot."""
        self.tracker.finish(tp, offset)
        self._slot_freed.set()

    async def poll_loop(
        self,
        room: Callable[[], int],
        dispatch: Callable[[Batches], None],
        stopping: Callable[[], bool],
        *,
        healthy: Callable[[], bool] = lambda: True,
        held: Callable[[], set[TopicPartition]] = set,
    ) -> None:
        """Fetch and ``dispatch`` until ``stopping()``; never more than ``room()`` at once.

        ``held()`` partitions stay paused; ``healthy()`` False pauses every partition.
        """
        consumer = self.consumer
        assert consumer is not None
        poll_ms = self.settings.poll_timeout_ms
        while not stopping():
            free = room()
            step = next_poll(free, healthy())
            if step is Poll.HOLD:
                await self._poll_paused(dispatch)
                await asyncio.sleep(_RETRY_S)
                continue
            if step is Poll.WAIT:
                await self._wait_for_slot(dispatch)
                continue
            paused = consumer.paused()
            if paused:
                consumer.resume(*to_resume(paused, held()))
                if self._paused is not None:
                    self._paused.set(0)
            try:
                batches = await consumer.getmany(timeout_ms=poll_ms, max_records=free)
            except KafkaError as exc:
                log.warning("fetch failed, retrying: %s", exc)
                await asyncio.sleep(_RETRY_S)
                continue
            dispatch(batches)

    async def _wait_for_slot(self, dispatch: Callable[[Batches], None]) -> None:
        """At the in-flight limit: wait for a slot, polling (paused) to stay alive."""
        self._slot_freed.clear()
        try:
            await asyncio.wait_for(self._slot_freed.wait(), timeout=_SLOT_WAIT_S)
        except TimeoutError:
            await self._poll_paused(dispatch)

    async def _poll_paused(self, dispatch: Callable[[Batches], None]) -> None:
        """Pause every partition and poll: nothing is fetched, the member stays in the group."""
        consumer = self.consumer
        assert consumer is not None
        assigned = consumer.assignment()
        consumer.pause(*assigned)
        if self._paused is not None:
            self._paused.set(len(assigned))
        # A paused poll returns nothing; it resets the max.poll.interval.ms clock. (A
        # partition assigned meanwhile is not paused yet: take at most one record.)
        try:
            batches = await consumer.getmany(timeout_ms=0, max_records=1)
        except KafkaError as exc:
            log.warning("paused poll failed, retrying: %s", exc)
            return
        dispatch(batches)

    def accept(
        self, batches: Batches, held: set[TopicPartition] | frozenset[TopicPartition] = frozenset()
    ) -> Iterator[tuple[TopicPartition, list[Record]]]:
        """Per partition, the fetched messages that are new here, each now tracked (in flight).

        Passed over: partitions revoked while fetched (the new owner reads them), ``held`` ones
        (fetched before their stall; the rewind fetches them again), and messages that finished
        before a rewind. Sets each fetched partition's lag gauge.
        """
        if not batches:
            return
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        for tp, records in batches.items():
            if tp not in assigned or tp in held:
                continue
            new = [record for record in records if self.tracker.add(tp, record.offset)]
            if new:
                yield tp, new
            if records:
                behind = lag(self.consumer.highwater(tp), records[-1].offset)
                if behind is not None:
                    self._lag.labels(tp.topic, str(tp.partition)).set(behind)

    # -- committing ------------------------------------------------------------------------

    async def commit_loop(self, commit: Callable[[], Awaitable[object]]) -> None:
        """Call ``commit()`` every ``commit_interval_ms``, forever (cancel it)."""
        interval = self.settings.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await commit()

    async def commit(self, partitions: set[TopicPartition] | None = None) -> dict[Hashable, int]:
        """Commit every finished prefix (of ``partitions``, or of all); returns the positions
        committed (none when nothing moved or the commit failed: retried on the next tick)."""
        consumer = self.consumer
        if consumer is None:
            return {}
        async with self._commit_lock:
            positions = commit_positions(self.tracker.committable(), partitions)
            if not positions:
                return {}
            started = time.perf_counter()
            try:
                await consumer.commit(positions)
            except KafkaError as exc:  # rebalance in progress, coordinator moved: retried later
                self._commits.labels("failed").inc()
                log.warning("commit of %d partitions failed: %s", len(positions), exc)
                return {}
            self.tracker.mark_committed(positions)
            self._commits.labels("ok").inc()
            if self._commit_latency is not None:
                self._commit_latency.observe(time.perf_counter() - started)
            return positions

    # -- revoke ----------------------------------------------------------------------------

    def forget_lag(self, revoked: Iterable[TopicPartition]) -> None:
        """Drop the lag gauges of revoked partitions: another member reports them now."""
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self._lag.remove(tp.topic, str(tp.partition))

    def tracked(self, partitions: Iterable[TopicPartition]) -> set[TopicPartition]:
        """Those of ``partitions`` that hold messages here (received since assigned)."""
        return {tp for tp in partitions if self.tracker.position(tp) is not None}

    async def hand_over(
        self,
        partitions: set[TopicPartition],
        commit: Callable[[set[TopicPartition]], Awaitable[object]] | None = None,
    ) -> None:
        """Commit what finished in revoked ``partitions`` (with ``commit``, the owner's, when
        given) and forget them: the new owner fetches the rest again."""
        await (commit or self.commit)(partitions)
        self.tracker.remove(partitions)
