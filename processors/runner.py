"""GraphRunner: consumes requests, runs graphs, publishes events and results, commits safely.

Delivery rules kept here (see ARCHITECTURE.md):

1. An offset is committed only after its result or dead letter is acknowledged by the broker.
2. Messages with the same key run one at a time in offset order; different keys run
   concurrently up to ``max_in_flight``. At the limit fetching pauses and polling goes on, so
   the member stays in the group however long a graph runs.
3. On revoke: queued runs of the partition are dropped, running ones get ``revoke_grace_s``,
   finished offsets are committed; the rest is redelivered to the new owner.
4. On stop (SIGTERM): stop fetching, give running runs ``shutdown_grace_s``, flush, commit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Hashable
from typing import Any, Self, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import ConsumerRecord

from graphs.execution import run_graph
from graphs.registry import GraphRegistry, UnknownGraphName
from processors.metrics import RunnerMetrics
from processors.offsets import OffsetTracker
from processors.publisher import Headers, Outbox
from processors.scheduler import KeyScheduler
from processors.settings import Settings
from topics.codec import (
    HEADER_ERROR,
    HEADER_REPLY_TO,
    HEADER_SOURCE,
    HEADER_TRACEPARENT,
    decode_request,
    dumps,
    event_dict,
    peek_graph,
    result_dict,
)
from topics.errors import DependencyUnavailable, InvalidRequest, UndecodableMessage, UnknownGraph
from topics.models import Request

log = logging.getLogger(__name__)

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
Record: TypeAlias = ConsumerRecord[bytes, bytes]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: GraphRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


class GraphRunner:
    """Runs the named graph for each request on ``<prefix>.requests`` of its consumer group."""

    def __init__(
        self,
        settings: Settings,
        registry: GraphRegistry,
        *,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or RunnerMetrics()
        self._topics = settings.topics
        self._tracker = OffsetTracker()
        self._scheduler: KeyScheduler[Record] = KeyScheduler(self._handle)
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._started = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        # read at scrape time: nothing to update on the per-message path
        self.metrics.in_flight.set_function(lambda: self._tracker.in_flight)

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
        self._consumer.subscribe([self._topics.requests], listener=_Rebalance(self))
        self._started = True
        self._poll_task = asyncio.create_task(self._poll_loop(), name="graphwire-poll")
        self._commit_task = asyncio.create_task(self._commit_loop(), name="graphwire-commit")
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
            dropped = self._scheduler.drop_queued()
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

    async def _close_clients(self) -> None:
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
            if free <= 0:
                await self._wait_for_slot(consumer)
                continue
            paused = consumer.paused()
            if paused:
                consumer.resume(*paused)
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
        for tp, records in batches.items():
            if tp not in assigned:  # revoked while fetched: the new owner reads them
                continue
            for record in records:
                self._tracker.add(tp, record.offset)
                key: Hashable = record.key if record.key is not None else record.offset
                self._scheduler.submit(tp, key, record)

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

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        mine = {tp for tp in revoked if self._tracker.position(tp) is not None}
        if not mine:
            return
        dropped = sum(self._scheduler.drop_queued(tp) for tp in mine)
        tasks = set().union(*(self._scheduler.running(tp) for tp in mine))
        cancelled = 0
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.settings.revoke_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            cancelled = len(pending)
        self.metrics.cancelled.inc(cancelled)
        await self._commit(mine)
        self._tracker.remove(mine)
        self._slot_freed.set()
        log.info(
            "revoked %d partitions: %d queued and %d cancelled runs go to the new owner",
            len(mine),
            dropped,
            cancelled,
        )

    # -- one message -----------------------------------------------------------------------

    async def _handle(self, record: Record) -> bool:
        """Process one message to its end; False when it is left uncommitted (for redelivery).

        A message left unfinished stops its key: the scheduler drops the key's queued messages,
        so a later message of the same thread never runs before an earlier one.
        """
        try:
            await self._process(record)
        except DependencyUnavailable as exc:
            log.warning("leaving %s/%d uncommitted: %s", record.topic, record.offset, exc)
            return False
        except Exception as exc:  # a bug of ours must not stop the partition
            log.exception("internal error on %s/%d", record.topic, record.offset)
            try:
                await self._dead_letter_only(
                    record,
                    f"internal error while processing ({type(exc).__name__}: {exc}); "
                    "report it to the graphwire maintainers, then replay the dead letter",
                    "internal",
                )
            except (DependencyUnavailable, KafkaError):
                return False
        self._tracker.finish(TopicPartition(record.topic, record.partition), record.offset)
        self._slot_freed.set()
        return True

    def _outbox(self) -> Outbox:
        assert self._producer is not None
        return Outbox(self._producer, self.metrics, lambda: self._stopping)

    async def _process(self, record: Record) -> None:
        started = time.perf_counter()
        try:
            request = decode_request(record.value, max_bytes=self.settings.max_request_bytes)
        except UndecodableMessage as exc:
            await self._dead_letter_only(record, str(exc), "undecodable")
            return
        except InvalidRequest as exc:
            assert exc.request_id is not None
            reason = "too_large" if type(exc).__name__ == "RequestTooLarge" else "invalid"
            await self._reject(
                record, exc.request_id, peek_graph(record.value), exc, reason, started
            )
            return
        try:
            graph = self.registry.get(request.graph)
        except UnknownGraphName:
            error = UnknownGraph(request.graph, self.registry.names())
            await self._reject(
                record,
                request.request_id,
                request.graph,
                error,
                "unknown_graph",
                started,
                metadata=request.metadata,
                thread_id=request.thread_id,
            )
            return
        await self._run(record, request, graph, started)

    async def _run(self, record: Record, request: Request, graph: Any, started: float) -> None:
        rid = request.request_id
        key = rid.encode()
        headers = _trace_headers(record)
        outbox = self._outbox()
        events_topic = self._topics.events
        metadata = request.metadata
        thread_id = request.thread_id
        seq = 0

        async def emit(type_: str, node: str | None, data: Any) -> None:
            nonlocal seq
            event = event_dict(rid, seq, type_, request.graph, node, data, metadata)
            seq += 1
            self.metrics.event_published(type_)
            await outbox.send(events_topic, self._encode(event, "data"), key, headers)

        await emit("run_started", None, {"thread_id": thread_id, "worker": self.settings.worker_id})
        config: dict[str, Any] = {
            "configurable": {**request.config.configurable, "thread_id": thread_id or rid},
            "recursion_limit": request.config.recursion_limit,
            "metadata": {"graphwire_request_id": rid},
        }
        if request.config.tags:
            config["tags"] = request.config.tags
        if request.config.max_concurrency:
            config["max_concurrency"] = request.config.max_concurrency
        self.metrics.active.inc()
        try:
            outcome = await run_graph(
                graph,
                input=request.input,
                command=request.command,
                config=config,
                stream=request.stream,
                timeout_s=request.timeout_s,
                emit=emit,
            )
        finally:
            self.metrics.active.dec()
        duration_ms = (time.perf_counter() - started) * 1000
        await emit(
            "run_finished", None, {"status": outcome.status, "duration_ms": round(duration_ms, 3)}
        )
        result = result_dict(
            rid,
            request.graph,
            outcome.status,
            output=outcome.output,
            error=outcome.error,
            interrupts=outcome.interrupts,
            thread_id=thread_id,
            duration_ms=duration_ms,
            metadata=metadata,
        )
        await self._send_result(outbox, record, key, result, headers)
        if outcome.status == "error":
            assert outcome.error is not None
            await self._send_dead_letter(outbox, record, f"graph failed: {outcome.error[1]}")
            self.metrics.dead_letters.labels("graph_error").inc()
        await outbox.confirm()
        self.metrics.executions.labels(request.graph, outcome.status).inc()
        self.metrics.duration.labels(request.graph).observe(duration_ms / 1000)

    def _encode(self, message: dict[str, Any], big_field: str) -> bytes:
        """Encode an output; one too large for Kafka gets ``big_field`` replaced by a notice."""
        value = dumps(message)
        limit = self.settings.max_message_bytes - 64 * 1024
        if len(value) > limit:
            message = {
                **message,
                big_field: {"truncated": True, "bytes": len(value), "limit": limit},
            }
            value = dumps(message)
        return value

    async def _send_result(
        self, outbox: Outbox, record: Record, key: bytes, result: dict[str, Any], headers: Headers
    ) -> None:
        value = self._encode(result, "output")
        await outbox.send(self._topics.results, value, key, headers)
        reply_to = _header(record, HEADER_REPLY_TO)
        if reply_to:
            topic = reply_to.decode("utf-8", "replace")
            if _TOPIC_NAME.match(topic) and topic != self._topics.results:
                await outbox.send(topic, value, key, headers)
            elif topic != self._topics.results:
                log.warning("ignoring reply-to %r: not a valid topic name", topic)

    async def _send_dead_letter(self, outbox: Outbox, record: Record, reason: str) -> None:
        headers = [
            *record.headers,
            (HEADER_ERROR, reason.encode()),
            (HEADER_SOURCE, f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        await outbox.send(self._topics.dlq, record.value, record.key, headers)

    async def _dead_letter_only(self, record: Record, reason: str, label: str) -> None:
        outbox = self._outbox()
        await self._send_dead_letter(outbox, record, reason)
        await outbox.confirm()
        self.metrics.dead_letters.labels(label).inc()
        log.warning(
            "dead-lettered %s/%d/%d: %s", record.topic, record.partition, record.offset, reason
        )

    async def _reject(
        self,
        record: Record,
        request_id: str,
        graph: str,
        error: Exception,
        label: str,
        started: float,
        *,
        metadata: dict[str, Any] | None = None,
        thread_id: str | None = None,
    ) -> None:
        outbox = self._outbox()
        result = result_dict(
            request_id,
            graph,
            "rejected",
            error=(type(error).__name__, str(error)),
            thread_id=thread_id,
            duration_ms=(time.perf_counter() - started) * 1000,
            metadata=metadata,
        )
        await self._send_result(outbox, record, request_id.encode(), result, _trace_headers(record))
        await self._send_dead_letter(outbox, record, str(error))
        await outbox.confirm()
        self.metrics.executions.labels(graph, "rejected").inc()
        self.metrics.dead_letters.labels(label).inc()
        log.warning("rejected %s: %s", request_id, error)


def _header(record: Record, name: str) -> bytes | None:
    for key, value in record.headers:
        if key == name:
            return bytes(value)
    return None


def _trace_headers(record: Record) -> Headers:
    trace = _header(record, HEADER_TRACEPARENT)
    return [(HEADER_TRACEPARENT, trace)] if trace else []
