"""GraphRunner: consumes requests, runs graphs, publishes events and results, commits safely.

Delivery rules kept here (see ARCHITECTURE.md):

1. An offset is committed only after its result or dead letter is acknowledged by the broker.
2. Messages with the same key run one at a time in offset order; different keys run
   concurrently up to ``max_in_flight``. At the limit fetching pauses and polling goes on, so
   the member stays in the group however long a graph runs.
3. On revoke: queued runs of the partition are dropped, running ones get ``revoke_grace_s``,
   finished offsets are committed; the rest is redelivered to the new owner.
4. On stop (SIGTERM): stop fetching; checkpointed runs stop at their next step boundary (another
   worker resumes them), the others get ``shutdown_grace_s``; flush, commit.
5. A message that cannot be finished, not even dead-lettered, stalls its partition visibly: the
   partition is paused, its other runs finish, then it is rewound (seek) to the lowest unfinished
   offset and fetched again with backoff until that message finishes. Order holds, no in-flight
   slot leaks, and ``/ready`` names the partition meanwhile.
6. If the poll, commit or a rewind task dies of an unexpected error, ``/ready`` says so and
   ``on_failure`` is called: the worker exits non-zero, so its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.checkpoints import CheckpointStore
from graphwire.processors.runner.dedup import DedupStore
from graphwire.processors.runner.gate import Check, DependencyGate
from graphwire.processors.runner.offsets import OffsetTracker, RevokeListener
from graphwire.processors.runner.processing import Job, RequestProcessor
from graphwire.processors.runner.publisher import OutputPublisher, Record
from graphwire.processors.runner.scheduler import KeyScheduler
from graphwire.processors.settings import Settings
from graphwire.topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)

# A stalled partition is fetched again after 1 s, then 2, 4, ... at most 30 s between tries.
_REWIND_FIRST_S = 1.0
_REWIND_MAX_S = 30.0


@dataclass
class _Stall:
    """A partition held at a message that could not be finished."""

    offset: int
    """The lowest unfinished offset when the partition last stalled."""
    attempts: int = 0
    """Times it stalled at that message (the backoff grows with it)."""
    rewind: asyncio.Task[None] | None = None
    """Set from the stall until the partition is rewound and may be fetched again."""


class GraphRunner:
    """Runs the named graph for each request on ``<prefix>.requests`` of its consumer group."""

    def __init__(
        self,
        settings: Settings,
        registry: GraphRegistry,
        *,
        metrics: RunnerMetrics | None = None,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        """``on_failure`` is called once if a task of the runner dies of an unexpected error."""
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or RunnerMetrics()
        self._topics = settings.topics
        self._tracker = OffsetTracker()
        self._scheduler: KeyScheduler[Job] = KeyScheduler(self._handle)
        self._control_topic = self._topics.control
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._started = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._processor: RequestProcessor
        self._dedup: DedupStore | None = None
        self._checkpoints: CheckpointStore | None = None
        self._gate: DependencyGate | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        self._stalls: dict[TopicPartition, _Stall] = {}
        self._failure: str | None = None
        self._on_failure = on_failure
        # read at scrape time: nothing to update on the per-message path
        self.metrics.in_flight.set_function(lambda: self._tracker.in_flight)
        self.metrics.stalled.set_function(lambda: len(self._stalls))

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Kafka, join the group and start consuming. Safe to call twice."""
        if self._started:
            return
        s = self.settings
        security = s.kafka_security()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"graphwire-runner-{s.worker_id}",
            acks="all",
            linger_ms=s.linger_ms,
            compression_type=s.compression_type,
            max_request_size=s.max_message_bytes,
            **security,
        )
        out = OutputPublisher(
            self._producer,
            self._topics,
            self.metrics,
            max_message_bytes=s.max_message_bytes,
            stopping=lambda: self._stopping,
            reply_to_timeout_s=s.reply_to_timeout_s,
            reply_to_backoff_s=s.reply_to_backoff_s,
            reply_to_allowed=s.reply_to_allowed,
        )
        try:
            await self._start_stores()
        except DependencyUnavailable:
            await self._close_clients()
            raise
        self._processor = RequestProcessor(
            s,
            self.registry,
            self.metrics,
            out,
            dedup=self._dedup,
            checkpoints=self._checkpoints,
            stopping=lambda: self._stopping,
            gate=self._gate,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"graphwire-runner-{s.worker_id}",
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_partition_fetch_bytes=max(1024 * 1024, s.max_message_bytes),
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            **security,
        )
        try:
            await self._producer.start()
            await self._consumer.start()
        except KafkaConnectionError as exc:
            await self._close_clients()
            raise DependencyUnavailable(
                f"cannot reach Kafka at {s.bootstrap_servers}: check GRAPHWIRE_BOOTSTRAP_SERVERS, "
                "the broker and the security settings"
            ) from exc
        await out.start(s.bootstrap_servers, **security)
        self._consumer.subscribe(
            [self._topics.requests, self._control_topic], listener=RevokeListener(self._on_revoked)
        )
        self._started = True
        self._poll_task = self._watched(self._poll_loop(), "poll")
        self._commit_task = self._watched(self._commit_loop(), "commit")
        log.info(
            "runner %s consuming %s as group %s (max_in_flight=%d)",
            s.worker_id,
            self._topics.requests,
            s.group_id,
            s.max_in_flight,
        )

    async def stop(self) -> None:
        """Stop fetching, let running runs finish within the grace period, flush, commit, leave.

        Idempotent. Runs cancelled after the grace period stay uncommitted and are redelivered.
        """
        if self._stopping:  # a second caller waits for the first one's drain
            await self._stopped.wait()
            return
        if not self._started:
            return
        self._stopping = True
        try:
            if self._poll_task:
                await asyncio.gather(self._poll_task, return_exceptions=True)
            await self._cancel_rewinds(set(self._stalls))
            dropped = self._scheduler.drop_queued()
            self._processor.drain()  # checkpointed runs stop at their next step boundary
            cancelled = await self._scheduler.drain(None, self.settings.shutdown_grace_s)
            self.metrics.cancelled.inc(cancelled)
            if self._commit_task:
                self._commit_task.cancel()
                await asyncio.gather(self._commit_task, return_exceptions=True)
            await self._commit()
            log.info(
                "runner stopped: %d queued left for redelivery, %d runs cancelled",
                dropped,
                cancelled,
            )
        finally:
            await self._close_clients()
            self._stopped.set()

    async def _start_stores(self) -> None:
        s = self.settings
        checks: dict[str, Check] = {}
        if s.dedup:
            self._dedup = DedupStore(
                s.redis_url.get_secret_value(),
                namespace=s.topic_prefix,
                lease_ms=s.lease_ms,
                done_ttl_s=s.done_ttl_s,
                # a dead worker's turn keeps its place until its redelivery claims again: the
                # lease expires, the group notices (session timeout) and rebalances
                keep_ms=2 * (s.lease_ms + s.session_timeout_ms),
            )
            await self._dedup.start()
            self._dedup.listen_for_cancels()  # a cancel reaches a run here at once
            checks["Redis"] = self._dedup.ping
        if s.checkpoints:
            key = s.checkpoint_encryption_key
            self._checkpoints = CheckpointStore(
                s.database_url.get_secret_value(), schema=s.checkpoint_schema,
                encryption_key=key.get_secret_value() if key else None,
            )
            await self._checkpoints.start()
            checks["PostgreSQL"] = self._checkpoints.ping
        self._gate = DependencyGate(checks)

    async def _close_clients(self) -> None:
        if self._gate is not None:
            await self._gate.stop()
        for store in (self._dedup, self._checkpoints):
            if store is not None:
                with contextlib.suppress(Exception):
                    await store.stop()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def wait_stopped(self) -> None:
        """Return once ``stop()`` has finished."""
        await self._stopped.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def readiness(self) -> dict[str, str]:
        """``{"Kafka": ..., "Redis": ..., "PostgreSQL": ...}``: "ok" or why not."""
        if self._failure is not None:
            kafka = self._failure
        elif not self._started or self._stopping:
            kafka = "not consuming"
        elif self._stalls:
            kafka = "; ".join(
                f"partition {tp.topic}/{tp.partition} is stalled at offset {stall.offset} "
                f"(attempts: {stall.attempts}): a message there cannot be finished, not even "
                "dead-lettered; check the dead-letter topic and the worker log"
                for tp, stall in sorted(self._stalls.items())
            )
        else:
            kafka = "ok"
        status = {"Kafka": kafka}
        if self._gate is not None:
            status.update(self._gate.status())
        return status

    @property
    def failure(self) -> str | None:
        """Why a task of the runner died, if one did (the worker should exit non-zero)."""
        return self._failure

    @property
    def in_flight(self) -> int:
        """Messages held: running or queued behind their key."""
        return self._tracker.in_flight

    # -- consuming -------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        limit = self.settings.max_in_flight
        poll_ms = self.settings.poll_timeout_ms
        while not self._stopping:
            free = limit - self._tracker.in_flight
            if self._gate is not None and not self._gate.healthy:
                await self._keep_polling_paused(consumer)
                await asyncio.sleep(0.5)
                continue
            if free <= 0:
                await self._wait_for_slot(consumer)
                continue
            paused = consumer.paused()
            if paused:
                held = self._held()  # stalled partitions stay paused until rewound
                consumer.resume(*(tp for tp in paused if tp not in held))
                self.metrics.paused.set(0)
            try:
                batches = await consumer.getmany(timeout_ms=poll_ms, max_records=free)
            except KafkaError as exc:
                log.warning("fetch failed, retrying: %s", exc)
                await asyncio.sleep(0.5)
                continue
            self._dispatch(consumer, batches)

    async def _wait_for_slot(self, consumer: AIOKafkaConsumer) -> None:
        """At the in-flight limit: wait for a run to finish, polling (paused) to stay alive."""
        self._slot_freed.clear()
        try:
            await asyncio.wait_for(self._slot_freed.wait(), timeout=1.0)
        except TimeoutError:
            await self._keep_polling_paused(consumer)

    async def _keep_polling_paused(self, consumer: AIOKafkaConsumer) -> None:
        """Pause every partition and poll: nothing is fetched, the member stays in the group."""
        assigned = consumer.assignment()
        consumer.pause(*assigned)
        self.metrics.paused.set(len(assigned))
        # A paused poll returns nothing; it resets the max.poll.interval.ms clock. (A
        # partition assigned meanwhile is not paused yet: take at most one record.)
        try:
            batches = await consumer.getmany(timeout_ms=0, max_records=1)
        except KafkaError as exc:
            log.warning("paused poll failed, retrying: %s", exc)
            return
        self._dispatch(consumer, batches)

    def _dispatch(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[Record]]
    ) -> None:
        if not batches:
            return
        assigned = consumer.assignment()
        held = self._held()
        for tp, records in batches.items():
            if tp not in assigned:  # revoked while fetched: the new owner reads them
                continue
            if tp in held:  # fetched before its stall: the rewind fetches them again
                continue
            control = tp.topic == self._control_topic
            for record in records:
                if not self._tracker.add(tp, record.offset):
                    continue  # finished before its partition was rewound
                key: Hashable = record.key if record.key is not None else record.offset
                preset = None
                if control:  # cancels never wait for each other
                    key = record.offset
                elif ahead := self._scheduler.ahead(tp, key):  # a busy thread: double-texting
                    preset = self._processor.double_text(record, [job.record for job in ahead])
                    if preset is not None:  # "reject": answered now, beside the thread's runs
                        key = ("busy", record.offset)
                self._scheduler.submit(tp, key, Job(record, preset))
            if records:  # records of this partition not fetched yet (the fetch's high watermark)
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    lag = max(0, highwater - records[-1].offset - 1)
                    self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    # -- committing ------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self._commit()

    async def _commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit every finished prefix (of ``partitions``, or of all assigned partitions)."""
        consumer = self._consumer
        if consumer is None:
            return
        async with self._commit_lock:
            positions = self._tracker.committable()
            if partitions is not None:
                positions = {tp: p for tp, p in positions.items() if tp in partitions}
            if not positions:
                return
            started = time.perf_counter()
            try:
                await consumer.commit(positions)
            except KafkaError as exc:  # rebalance in progress, coordinator moved: retried later
                self.metrics.commits.labels("failed").inc()
                log.warning("commit of %d partitions failed: %s", len(positions), exc)
                return
            self._tracker.mark_committed(positions)
            self.metrics.commits.labels("ok").inc()
            self.metrics.commit_latency.observe(time.perf_counter() - started)
            for tp, stall in list(self._stalls.items()):
                position = positions.get(tp)
                if position is not None and stall.rewind is None and position > stall.offset:
                    del self._stalls[tp]
                    log.warning(
                        "partition %s/%d moves again: offset %d is finished",
                        tp.topic, tp.partition, stall.offset,
                    )

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:  # another member reports these now
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        await self._cancel_rewinds(revoked)  # the new owner fetches from the committed offset
        mine = {tp for tp in revoked if self._tracker.position(tp) is not None}
        if not mine:
            return
        dropped = sum(self._scheduler.drop_queued(tp) for tp in mine)
        tasks = set().union(*(self._scheduler.running(tp) for tp in mine))
        waiting = tasks & self._processor.waiting_for_threads()
        for task in waiting:  # nothing in progress: no grace needed
            task.cancel()
        cancelled = len(waiting)
        tasks -= waiting
        if waiting:
            await asyncio.wait(waiting)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.settings.revoke_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            cancelled += len(pending)
        self.metrics.cancelled.inc(cancelled)
        await self._commit(mine)
        self._tracker.remove(mine)
        await self._cancel_rewinds(mine)  # a run that ended unfinished during the grace stalled it
        self._slot_freed.set()
        log.info(
            "revoked %d partitions: %d queued and %d cancelled runs go to the new owner",
            len(mine),
            dropped,
            cancelled,
        )

    # -- one message -----------------------------------------------------------------------

    async def _handle(self, job: Job) -> bool:
        """Process one message; mark it finished only when its outputs are acknowledged."""
        record = job.record
        tp = TopicPartition(record.topic, record.partition)
        try:
            if record.topic == self._control_topic:
                finished = await self._processor.control.handle(record)
            else:
                finished = await self._processor.handle(job)
        except Exception:  # the processor ends every message itself; this is a bug guard
            log.exception("internal error on %s/%d/%d", tp.topic, tp.partition, record.offset)
            finished = False
        if not finished:  # left uncommitted; the scheduler stops its key
            if not self._stopping and self._tracker.position(tp) is not None:
                self._stall(tp, record.offset)
            return False
        self._tracker.finish(tp, record.offset)
        self._slot_freed.set()
        return True

    # -- stalls and the runner's own tasks -------------------------------------------------

    def _held(self) -> set[TopicPartition]:
        """Stalled partitions not rewound yet: not fetched, not dispatched."""
        return {tp for tp, stall in self._stalls.items() if stall.rewind is not None}

    def _stall(self, tp: TopicPartition, offset: int) -> None:
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
        consumer = self._consumer
        assert consumer is not None
        if tp in consumer.assignment():
            consumer.pause(tp)
        stall.attempts += 1
        self.metrics.stalls.labels(tp.topic, str(tp.partition)).inc()
        stall.rewind = self._watched(self._rewind(tp, stall), f"rewind {tp.topic}/{tp.partition}")

    async def _rewind(self, tp: TopicPartition, stall: _Stall) -> None:
        """Once the partition's runs are over, forget its unfinished messages (their slots come
        back), wait the backoff and seek to the lowest one: it and its key's later messages are
        fetched again, in order. What finished meanwhile is committed and not run again."""
        running = self._scheduler.running(tp)
        if running:
            await asyncio.wait(running)
        await self._commit({tp})
        position = self._tracker.rewind(tp)
        self._slot_freed.set()
        if position is None:  # revoked meanwhile: nothing of it is held here any more
            if self._stalls.get(tp) is stall:
                del self._stalls[tp]
            return
        stall.offset = position
        await asyncio.sleep(min(_REWIND_FIRST_S * 2 ** (stall.attempts - 1), _REWIND_MAX_S))
        consumer = self._consumer
        assert consumer is not None
        if tp in consumer.assignment():
            consumer.seek(tp, position)
        stall.rewind = None  # the poll loop resumes the partition

    async def _cancel_rewinds(self, partitions: set[TopicPartition]) -> None:
        """Forget the stalls of ``partitions`` (revoked, or the runner stops)."""
        tasks = []
        for tp in partitions:
            stall = self._stalls.pop(tp, None)
            if stall is not None and stall.rewind is not None:
                stall.rewind.cancel()
                tasks.append(stall.rewind)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _watched(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task of the runner whose unexpected death fails readiness and calls on_failure."""
        task = asyncio.create_task(coro, name=f"graphwire-{name}")
        task.add_done_callback(lambda done: self._task_done(done, name))
        return task

    def _task_done(self, task: asyncio.Task[None], name: str) -> None:
        if task.cancelled() or task.exception() is None or self._failure is not None:
            return
        exc = task.exception()
        self._failure = (
            f"the runner's {name} task died ({type(exc).__name__}: {exc}); this worker must be "
            "restarted (it exits non-zero) and the error reported to the graphwire maintainers"
        )
        log.error("%s", self._failure, exc_info=exc)
        if self._on_failure is not None:
            self._on_failure()
