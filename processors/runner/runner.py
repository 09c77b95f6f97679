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
   slot leaks, and ``/ready`` names the partition meanwhile (``Stalls``).
6. If the poll, commit or a rewind task dies of an unexpected error, ``/ready`` says so and
   ``on_failure`` is called: the worker exits non-zero, so its supervisor restarts it.

Fetching, pausing, committing and the revoke hand-over are the shared ``GroupConsumer``
(``graphwire.processors.consumer``); this class says how many messages it takes, queues them
behind their keys, and ends runs on revoke and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.consumer.group import Batches, GroupConsumer, kafka_unreachable
from graphwire.processors.consumer.stalls import Stalls
from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.checkpoints import CheckpointStore
from graphwire.processors.runner.claims import RedisClaims
from graphwire.processors.runner.gate import Check, DependencyGate
from graphwire.processors.runner.keyqueue import KeyQueue
from graphwire.processors.runner.processing import Job, RequestProcessor
from graphwire.processors.runner.publisher import OutputPublisher
from graphwire.processors.settings import Settings
from graphwire.topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)


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
        self._group = GroupConsumer(
            settings,
            client_id=f"graphwire-runner-{settings.worker_id}",
            group_id=settings.group_id,
            lag_gauge=self.metrics.consumer_lag,
            commits=self.metrics.commits,
            commit_latency=self.metrics.commit_latency,
            paused_gauge=self.metrics.paused,
        )
        self._queue: KeyQueue[Job] = KeyQueue(self._handle)
        self._control_topic = self._topics.control
        self._stopping = False
        self._started = False
        self._producer: AIOKafkaProducer | None = None
        self._processor: RequestProcessor
        self._dedup: RedisClaims | None = None
        self._checkpoints: CheckpointStore | None = None
        self._gate: DependencyGate | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._stalls = Stalls(
            self._group,
            counter=self.metrics.stalls,
            running=self._queue.running,
            commit=self._commit,
            spawn=self._watched,
        )
        self._failure: str | None = None
        self._on_failure = on_failure
        # read at scrape time: nothing to update on the per-message path
        self.metrics.in_flight.set_function(lambda: self._group.tracker.in_flight)
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
        try:
            await self._producer.start()
            await self._group.start()
        except KafkaConnectionError as exc:
            await self._close_clients()
            raise kafka_unreachable(s) from exc
        await out.start(s.bootstrap_servers, **security)
        self._start_consuming()

    def _start_consuming(self) -> None:
        """Subscribe and start the poll and commit loops (a stalled partition stays held)."""
        s = self.settings
        self._group.subscribe([self._topics.requests, self._control_topic], self._on_revoked)
        self._started = True
        self._poll_task = self._watched(
            self._group.poll_loop(
                self._room,
                self._dispatch,
                lambda: self._stopping,
                healthy=lambda: self._gate is None or self._gate.healthy,
                held=self._stalls.held,
            ),
            "poll",
        )
        self._commit_task = self._watched(self._group.commit_loop(self._commit), "commit")
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
            await self._stalls.cancel(self._stalls.partitions())
            dropped = self._queue.drop_queued()
            self._processor.drain()  # checkpointed runs stop at their next step boundary
            cancelled = await self._queue.drain(None, self.settings.shutdown_grace_s)
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
            self._dedup = RedisClaims(
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
                store=s.store, store_sweep_interval_s=s.store_sweep_interval_s,
            )
            await self._checkpoints.start()
            if self._checkpoints.store is not None:
                self._checkpoints.store.observer = self.metrics.observe_store
            checks["PostgreSQL"] = self._checkpoints.ping
        self._gate = DependencyGate(checks)

    async def _close_clients(self) -> None:
        if self._gate is not None:
            await self._gate.stop()
        for store in (self._dedup, self._checkpoints):
            if store is not None:
                with contextlib.suppress(Exception):
                    await store.stop()
        await self._group.stop()
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
        else:
            kafka = self._stalls.readiness() or "ok"
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
        return self._group.tracker.in_flight

    @property
    def _consumer(self) -> AIOKafkaConsumer | None:
        """The group's Kafka consumer, from ``start()`` on (tests look at its pauses)."""
        return self._group.consumer

    # -- consuming -------------------------------------------------------------------------

    def _room(self) -> int:
        """Messages this worker takes now: the in-flight limit minus those it holds."""
        return self.settings.max_in_flight - self._group.tracker.in_flight

    def _dispatch(self, batches: Batches) -> None:
        """Queue each new message behind its key: one run at a time per key, in offset order."""
        for tp, records in self._group.accept(batches, self._stalls.held()):
            control = tp.topic == self._control_topic
            for record in records:
                key: Hashable = record.key if record.key is not None else record.offset
                preset = None
                if control:  # cancels never wait for each other
                    key = record.offset
                elif ahead := self._queue.ahead(tp, key):  # a busy thread: double-texting
                    preset = self._processor.double_text(record, [job.record for job in ahead])
                    if preset is not None:  # "reject": answered now, beside the thread's runs
                        key = ("busy", record.offset)
                    else:
                        self._processor.queued(record)
                self._queue.submit(tp, key, Job(record, preset))

    # -- committing ------------------------------------------------------------------------

    async def _commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit every finished prefix (of ``partitions``, or of all assigned partitions)."""
        self._stalls.committed(await self._group.commit(partitions))

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._group.forget_lag(revoked)
        await self._stalls.cancel(revoked)  # the new owner fetches from the committed offset
        mine = self._group.tracked(revoked)
        if not mine:
            return
        dropped = sum(self._queue.drop_queued(tp) for tp in mine)
        cancelled = await self._stop_runs(mine)
        self.metrics.cancelled.inc(cancelled)
        await self._group.hand_over(mine, self._commit)
        await self._stalls.cancel(mine)  # a run that ended unfinished during the grace stalled it
        self._group.wake()
        log.info(
            "revoked %d partitions: %d queued and %d cancelled runs go to the new owner",
            len(mine),
            dropped,
            cancelled,
        )

    async def _stop_runs(self, partitions: set[TopicPartition]) -> int:
        """End the runs of revoked ``partitions``: at once those waiting for their thread, the
        others after ``revoke_grace_s``. Returns how many were cancelled."""
        tasks = set().union(*(self._queue.running(tp) for tp in partitions))
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
        return cancelled

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
            if not self._stopping and self._group.tracker.position(tp) is not None:
                self._stalls.stall(tp, record.offset)
            return False
        self._group.finish(tp, record.offset)
        return True

    # -- the runner's own tasks -------------------------------------------------------------

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
