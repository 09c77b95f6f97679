"""Publishing a request's outputs (events, result, reply-to copy, dead letter) and waiting
until the broker has acknowledged all of them.

The contract's topics must get every output (retried until acknowledged). A reply-to copy is a
courtesy to the requester: it gets a bounded time, and a topic that is missing, refused or slow
costs a warning and ``graphwire_reply_to_failures_total{reason}``, never the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import logging
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.answer import Addressee, Answer, EventPositions
from graphwire.topics.admin import message_limits
from graphwire.topics.codec import (
    HEADER_ERROR,
    HEADER_REPLY_TO,
    HEADER_SOURCE,
    HEADER_TRACEPARENT,
    HEADER_VALUE_DROPPED,
    TOP_NS,
    dumps,
    event_dict,
    result_dict,
)
from graphwire.topics.errors import DependencyUnavailable, GraphwireError
from graphwire.topics.specs import TopicNames
from graphwire.topics.webhooks import HEADER_WEBHOOK

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
Record: TypeAlias = ConsumerRecord[bytes, bytes]
CopyFailed: TypeAlias = Callable[[str, str, str], None]
"""Told ``(topic, reason, detail)`` when a copy was not delivered in its time."""
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_MARGIN_BYTES = 64 * 1024  # room for key, headers and batch overhead next to the value
_MAX_FAILING_REMEMBERED = 1000
LINGER_MS = 2.0
"""How long a batch collects messages (one run's events, and other runs' on its partition)
before it goes to the producer: short, so a consumer sees a node's event while the run goes on."""


def output_limit(configured: int, learned: dict[str, int], topics: list[str]) -> int:
    """Largest value to publish: the smaller of ``configured`` and what the cluster reported
    for ``topics`` (absent: unknown), less room for the record's key, headers and batch."""
    limit = min([configured, *(learned[t] for t in topics if t in learned)])
    return limit - min(_MARGIN_BYTES, limit // 4)


class PublishFailed(GraphwireError):
    """The broker refused an output for good (not authorised, too large, no such topic)."""


class _Batch:
    """Messages for one topic-partition that go to the producer as one record batch."""

    __slots__ = ("builder", "done", "lane", "timer")

    def __init__(self, builder: Any, lane: _Lane) -> None:
        self.builder = builder
        self.lane = lane
        self.done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        """The batch's ``RecordMetadata`` (its base offset) once acknowledged, or the error."""
        # An outbox given up on (its request failed) never looks: retrieve, so no warning.
        self.done.add_done_callback(_ignore_outcome)
        self.timer: asyncio.TimerHandle | None = None


class _Lane:
    """One topic-partition: the batch taking messages, and full ones waiting to be submitted."""

    __slots__ = ("busy", "open", "partition", "ready", "topic", "wanted")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.open: _Batch | None = None
        self.wanted = False
        """The open batch is due (linger over, or an outbox confirms): submit it next."""
        self.ready: deque[_Batch] = deque()
        self.busy = False
        """A submitter task runs for this lane."""


class Batcher:
    """One open record batch per topic-partition, shared by all the worker's outboxes.

    aiokafka's ``send`` costs a metadata check, a partitioner call and a future per message;
    here a message is one ``append`` to the open batch of its partition (the one the default
    partitioner picks for its key). A batch is due ``linger_s`` after its first message (so
    events stream live while a run goes on), or at once when an outbox confirms; it stays
    open until the producer takes it, which is when the partition's previous batch left for
    the broker (the producer holds one unsent batch per partition). So while one produce
    request is in flight, the messages of every run on that partition gather in one batch.
    Batches of a partition are submitted in order: a run's messages keep their order.
    """

    def __init__(self, producer: AIOKafkaProducer, linger_s: float) -> None:
        self._producer = producer
        self._linger_s = linger_s
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._submitters: set[asyncio.Future[None]] = set()

    async def partition(self, topic: str, key: bytes | None) -> int:
        """The partition the producer's default partitioner picks for ``key`` on ``topic``."""
        if not self._producer.client.cluster.partitions_for_topic(topic):
            await self._producer.client._wait_on_metadata(topic)  # raises if it never comes
        return int(self._producer._partition(topic, None, None, None, key, None))

    def append(
        self, topic: str, partition: int, value: bytes | None, key: bytes | None, headers: Headers
    ) -> tuple[_Batch, int]:
        """Add one message to the open batch of ``topic/partition``: the batch and the
        message's offset within it."""
        lane = self._lanes.get((topic, partition))
        if lane is None:
            lane = self._lanes[(topic, partition)] = _Lane(topic, partition)
        batch = lane.open
        if batch is not None:
            metadata = batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
            if metadata is not None:
                return batch, int(metadata.offset)
            self._close(lane)  # full (the builder closed itself): it goes as it is
            lane.ready.append(batch)
            self._wake(lane)
        batch = lane.open = _Batch(self._producer.create_batch(), lane)
        # The first message always fits, however large (the value limits bound it).
        metadata = batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        batch.timer = asyncio.get_running_loop().call_later(self._linger_s, self.flush, batch)
        return batch, int(metadata.offset)

    def flush(self, batch: _Batch) -> None:
        """``batch`` is due: it goes to the producer as soon as its partition allows."""
        lane = batch.lane
        if lane.open is batch:
            lane.wanted = True
            self._wake(lane)

    def _close(self, lane: _Lane) -> _Batch:
        batch = lane.open
        assert batch is not None
        lane.open, lane.wanted = None, False
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        batch.builder.close()
        return batch

    def _wake(self, lane: _Lane) -> None:
        if not lane.busy:
            lane.busy = True
            task = asyncio.ensure_future(self._submit(lane))
            self._submitters.add(task)  # a reference, so the task is not collected mid-way
            task.add_done_callback(self._submitters.discard)

    async def _submit(self, lane: _Lane) -> None:
        """Hand the lane's due batches to the producer, oldest first, until none is due."""
        try:
            while lane.ready or (lane.open is not None and lane.wanted):
                batch = lane.ready.popleft() if lane.ready else self._close(lane)
                try:
                    # returns once the producer took it: after the previous batch was drained
                    future: asyncio.Future[Any] = await self._producer.send_batch(
                        batch.builder, lane.topic, partition=lane.partition
                    )
                except asyncio.CancelledError:
                    # the loop is closing: a waiting outbox retries, then gives up as stopping
                    gone = KafkaConnectionError("the batch was not submitted (cancelled)")
                    for unsent in (batch, *lane.ready):
                        _fail(unsent, gone)
                    lane.ready.clear()
                    raise
                except Exception as exc:  # the outbox retries or gives up, see Outbox.confirm
                    _fail(batch, exc)
                    continue
                future.add_done_callback(functools.partial(_pass_on, target=batch.done))
        finally:
            lane.busy = False


def _fail(batch: _Batch, error: BaseException) -> None:
    if not batch.done.done():
        batch.done.set_exception(error)


def _pass_on(source: asyncio.Future[Any], *, target: asyncio.Future[Any]) -> None:
    """Settle ``target`` as ``source`` settled."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


_Entry: TypeAlias = tuple[str, bytes | None, bytes | None, Headers, _Batch, int]
"""A sent message: topic, value, key, headers, its batch and its offset within the batch."""


class Outbox:
    """The messages one request publishes; ``confirm()`` returns once all are acknowledged.

    Sends are batched and pipelined (nothing waits for the broker until ``confirm``, see
    ``Batcher``); a message whose delivery failed is sent again with backoff until it is
    acknowledged or the worker stops, in which case ``DependencyUnavailable`` leaves the
    request uncommitted for redelivery.
    """

    __slots__ = (
        "_batcher", "_copies", "_metrics", "_partitions", "_producer", "_sent", "_stopping",
        "acked",
    )

    def __init__(
        self,
        producer: AIOKafkaProducer,
        metrics: RunnerMetrics,
        stopping: Callable[[], bool],
        batcher: Batcher,
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._stopping = stopping
        self._batcher = batcher
        self.acked: dict[str, str] = {}
        """``topic -> "topic/partition/offset"`` of the last acknowledged message per topic."""
        self._sent: list[_Entry] = []
        self._partitions: dict[tuple[str, bytes | None], int] = {}
        """A request's messages share a key: its partition is looked up once per topic."""
        self._copies: list[tuple[str, asyncio.Task[tuple[str, str] | None], CopyFailed]] = []

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> None:
        """Add one message to its partition's batch (returns before the broker acknowledges
        it; the batch leaves within the linger, when full, or at ``confirm``)."""
        # The check aiokafka's send() makes per message: a batch appended to directly skips it,
        # and a record over the limit would then be refused by the broker, not here.
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._producer._max_request_size:
            raise PublishFailed(
                f"the producer refused a message for {topic} (MessageSizeTooLargeError: "
                f"{size} bytes, over max_request_size {self._producer._max_request_size}); "
                "check the topic and the message size limits"
            )
        partition = self._partitions.get((topic, key))
        if partition is None:
            partition = self._partitions[(topic, key)] = await self._partition(topic, key)
        batch, offset = self._batcher.append(topic, partition, value, key, headers)
        self._sent.append((topic, value, key, headers, batch, offset))

    async def _partition(self, topic: str, key: bytes | None) -> int:
        delay = 0.1
        while True:
            try:
                return await self._batcher.partition(topic, key)
            except KafkaError as exc:
                if not _can_succeed_later(exc):
                    raise PublishFailed(
                        f"the producer refused a message for {topic} ({type(exc).__name__}: "
                        f"{exc}); check the topic and the message size limits"
                    ) from exc
                self._backoff_or_give_up(exc, topic)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)

    def _backoff_or_give_up(self, exc: BaseException, topic: str) -> None:
        self._metrics.publish_retries.inc()
        if self._stopping():
            raise DependencyUnavailable(
                f"Kafka did not acknowledge an output before shutdown ({exc}); the request stays "
                "uncommitted and will be redelivered"
            ) from exc
        known: Any = None
        with contextlib.suppress(Exception):  # diagnostics only: what the producer believes
            known = sorted(self._producer.client.cluster.partitions_for_topic(topic) or ())
        log.warning("publish to %s failed, retrying: %r (partitions in metadata: %s)", topic, exc,
                    known)

    def send_copy(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        headers: Headers,
        *,
        timeout_s: float,
        on_failure: CopyFailed,
    ) -> None:
        """Start delivering a copy that may fail (a reply-to): ``confirm()`` waits for it at
        most ``timeout_s``, then calls ``on_failure(topic, reason, detail)`` if it failed."""
        task = asyncio.ensure_future(self._deliver_copy(topic, value, key, headers, timeout_s))
        self._copies.append((topic, task, on_failure))

    async def _deliver_copy(
        self, topic: str, value: bytes, key: bytes, headers: Headers, timeout_s: float
    ) -> tuple[str, str] | None:
        """Deliver one copy within ``timeout_s``: None, or ``(reason, detail)`` on failure."""
        deadline = time.monotonic() + timeout_s
        delay, last = 0.1, "no acknowledgement"
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                # For a topic the cluster does not know, the producer waits for its metadata
                # for request_timeout_ms and then fails retriably: bound that wait here.
                async with asyncio.timeout(remaining):
                    future: asyncio.Future[Any] = await self._producer.send(
                        topic, value, key=key, headers=headers
                    )
                # asyncio.wait, not a timeout: cancelling the delivery future itself would
                # leave the producer's batch completing a cancelled future.
                done, _ = await asyncio.wait({future}, timeout=deadline - time.monotonic())
                if not done:
                    future.add_done_callback(_ignore_outcome)
                    break
                future.result()
                return None
            except TimeoutError:
                break
            except KafkaError as exc:
                if not _can_succeed_later(exc):
                    return "refused", f"{type(exc).__name__}: {exc}"
                last = f"{type(exc).__name__}: {exc}"
                pause = min(delay, deadline - time.monotonic()) * random.uniform(0.5, 1.0)
                await asyncio.sleep(max(0.0, pause))
                delay = min(delay * 2, 1.0)
        return "timeout", last

    async def confirm(self) -> None:
        """Wait until the broker acknowledged every message sent so far, and until each copy
        was delivered or ran out of its time."""
        try:
            await self._confirm_sent()
        except BaseException:
            for _topic, task, _report in self._copies:
                task.cancel()
            raise
        copies, self._copies = self._copies, []
        outcomes = await asyncio.gather(*(task for _topic, task, _report in copies))
        for (topic, _task, report), outcome in zip(copies, outcomes, strict=True):
            if outcome is not None:
                report(topic, *outcome)

    async def _confirm_sent(self) -> None:
        delay = 0.1
        while self._sent:
            batches = list({id(entry[4]): entry[4] for entry in self._sent}.values())
            for batch in batches:
                self._batcher.flush(batch)  # no linger: this request waits for them now
            await asyncio.wait({batch.done for batch in batches})
            failed: list[tuple[_Entry, BaseException]] = []
            for entry in self._sent:
                topic, *_, batch, offset = entry
                error = batch.done.exception()
                if error is not None:
                    failed.append((entry, error))
                else:
                    acked = batch.done.result()
                    self.acked[topic] = f"{topic}/{acked.partition}/{acked.offset + offset}"
            self._sent = []
            if not failed:
                return
            for (topic, *_), error in failed:
                if isinstance(error, KafkaError) and not _can_succeed_later(error):
                    raise PublishFailed(
                        f"the broker refused a message for {topic} ({type(error).__name__}); "
                        "check that the topic exists and this worker may write to it"
                    ) from error
            self._backoff_or_give_up(failed[0][1], failed[0][0][0])
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)
            for (topic, value, key, headers, *_), _error in failed:
                await self.send(topic, value, key, headers)


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    """Retrieve a late copy's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _can_succeed_later(exc: KafkaError) -> bool:
    """Retriable errors and lost connections; not authorisation or size errors."""
    return bool(getattr(exc, "retriable", False)) or isinstance(
        exc, KafkaConnectionError | KafkaTimeoutError | NodeNotReadyError
    )


def header(record: Record, name: str) -> bytes | None:
    """The value of header ``name`` of ``record``, if present."""
    for key, value in record.headers:
        if key == name:
            return bytes(value)
    return None


def trace_headers(record: Record) -> Headers:
    """The headers every output of ``record`` carries (W3C ``traceparent``)."""
    trace = header(record, HEADER_TRACEPARENT)
    return [(HEADER_TRACEPARENT, trace)] if trace else []


class Start:
    """One start of a request on this worker: its message, its clock, the outbox that all its
    outputs go through, and the positions of its events."""

    __slots__ = ("began", "headers", "outbox", "positions", "record", "worker")

    def __init__(self, record: Record, outbox: Outbox, worker: str, attempt: int = 1) -> None:
        self.record = record
        self.began = time.perf_counter()
        self.outbox = outbox
        self.worker = worker
        """This worker's id (``run_started`` names it)."""
        self.headers = trace_headers(record)
        """The headers every output of this start carries."""
        self.positions = EventPositions(attempt)

    @property
    def attempt(self) -> int:
        """The start's number: the claim's attempt (1 before the claim and without dedup)."""
        return self.positions.attempt

    def claimed(self, attempt: int) -> None:
        """The claim numbered this start ``attempt``; no event has been sent yet."""
        self.positions = EventPositions(attempt)

    def elapsed_ms(self) -> float:
        """Milliseconds since the message was taken up."""
        return (time.perf_counter() - self.began) * 1000


Keep: TypeAlias = Callable[[bytes, str | None], Awaitable[None]]
"""``keep(result, dead_letter_reason)``: awaited just before a result is published, so a
redelivery after a crash publishes that same result again instead of running."""


class OutputPublisher:
    """Writes a request's outputs to the contract's topics: results, reply-to, dead letters."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: TopicNames,
        metrics: RunnerMetrics,
        *,
        max_message_bytes: int,
        stopping: Callable[[], bool],
        reply_to_timeout_s: float = 5.0,
        reply_to_backoff_s: float = 60.0,
        linger_ms: float = LINGER_MS,
        reply_to_allowed: str = "",
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._configured = max_message_bytes
        self._limit = output_limit(max_message_bytes, {}, [])
        self._dlq_limit = self._limit
        self._stopping = stopping
        self._batcher = Batcher(producer, linger_ms / 1000)
        self._reply_to_timeout_s = reply_to_timeout_s
        self._reply_to_backoff_s = reply_to_backoff_s
        # control too: a result there would be read as a cancel by every runner
        self._own = frozenset({topics.requests, topics.events, topics.dlq, topics.control})
        self._reply_to_allowed = tuple(
            p.strip() for p in reply_to_allowed.split(",") if p.strip()
        )
        """``GRAPHWIRE_REPLY_TO_ALLOWED``: fnmatch patterns; empty allows any other topic."""
        self._failing_reply_to: dict[str, float] = {}
        """Reply-to topics that failed lately -> until when (monotonic) they are skipped."""

    @property
    def results_topic(self) -> str:
        """Where results go."""
        return self._topics.results

    @property
    def limit(self) -> int:
        """Results and events larger than this many bytes get their big field truncated."""
        return self._limit

    async def start(self, bootstrap_servers: str, **client_kwargs: Any) -> None:
        """Once the producer is started: keep the output topics in its metadata, and lower the
        output limits to what the cluster accepts on them.

        aiokafka's producer asks the cluster only about the topics it tracks, and tracks a
        topic only once it had to wait for it: the first reply-to topic would otherwise shrink
        its metadata to that one topic, and results in flight lose their partition leaders.

        The limits: each topic's ``max.message.bytes``, else the broker's
        ``message.max.bytes``. Without them, an output between the broker's limit (about 1 MiB
        by default) and ``max_message_bytes`` is refused by the broker instead of truncated.
        A cluster that does not say leaves the configured limit, with a warning.
        """
        names = [self._topics.results, self._topics.events, self._topics.dlq]
        await self._producer.client.set_topics(names)
        try:
            learned = await message_limits(bootstrap_servers, names, **client_kwargs)
        except GraphwireError as exc:
            log.warning(
                "could not read the topics' max.message.bytes (%s); outputs are truncated above "
                "GRAPHWIRE_MAX_MESSAGE_BYTES=%d only: keep it at or below the broker's limit",
                exc, self._configured,
            )
            return
        self._limit = output_limit(self._configured, learned, names[:2])
        self._dlq_limit = output_limit(self._configured, learned, names[2:])
        log.log(
            logging.INFO if learned else logging.WARNING,
            "outputs larger than %d bytes are truncated (topic limits %s, "
            "GRAPHWIRE_MAX_MESSAGE_BYTES=%d)%s",
            self._limit, learned, self._configured,
            "" if learned else ": the cluster reported no message size limit, keep the setting "
            "at or below the broker's",
        )

    def outbox(self) -> Outbox:
        """A fresh outbox for one request."""
        return Outbox(self._producer, self._metrics, self._stopping, self._batcher)

    def encode(self, message: dict[str, Any], big_field: str) -> bytes:
        """Encode an output; one too large for Kafka gets ``big_field`` replaced by a notice."""
        value = dumps(message)
        if len(value) > self._limit:
            notice = {"truncated": True, "bytes": len(value), "limit": self._limit}
            value = dumps({**message, big_field: notice})
        return value

    async def emit(
        self, start: Start, to: Addressee, type_: str, node: str | None, data: Any,
        ns: Sequence[str] = TOP_NS, extra: Mapping[str, Any] | None = None,
    ) -> None:
        """One event of ``start``, at its next position (``ns``: the subgraph it came from;
        ``extra``: optional event fields)."""
        rid = to.request_id
        event = event_dict(rid, start.positions.next(), type_, to.graph, node, data,
                           to.metadata or {}, ns, extra)
        self._metrics.event_published(type_)
        await start.outbox.send(self._topics.events, self.encode(event, "data"), rid.encode(),
                                start.headers)

    async def finish(
        self, start: Start, to: Addressee, answer: Answer, keep: Keep | None
    ) -> str | None:
        """Publish ``answer``, the end of ``start``: the only code that writes a final answer.

        In the crash-safe order: the events this start still owes; ``keep`` the result (unless
        it is a kept one already), so a redelivery publishes it again rather than run; the
        result (with its reply-to copy and webhook header) and the dead letter; wait for the
        broker's acknowledgement; count. Returns where the result landed
        (``topic/partition/offset``), the pointer of the done marker written next."""
        duration_ms = start.elapsed_ms()
        if answer.events == "bookends":
            await self.emit(start, to, "run_started", None,
                            answer.run_started(to.thread_id, start.worker, start.attempt))
        if answer.events != "none":
            await self.emit(start, to, "run_finished", None, answer.run_finished(duration_ms))
        result = answer.kept
        if result is None:
            result = result_dict(
                to.request_id, to.graph, answer.status, output=answer.output,
                error=answer.error, interrupts=answer.interrupts, next=answer.next,
                breakpoint=answer.breakpoint, thread_id=to.thread_id,
                attempts=answer.attempts, cached=answer.cached, duration_ms=duration_ms,
                metadata=to.metadata,
            )
        value = self.encode(result, "output")
        dead_letter = answer.dead_letter
        if keep is not None and answer.kept is None:
            await keep(value, dead_letter.reason if dead_letter is not None else None)
        outbox = start.outbox
        await self._send_result(outbox, start.record, to.request_id.encode(), value,
                                start.headers, to.webhook)
        if dead_letter is not None:
            await self.send_dead_letter(outbox, start.record, dead_letter.reason)
        await outbox.confirm()
        self._count(to, answer, dead_letter, duration_ms)
        return outbox.acked.get(self._topics.results)

    def _count(
        self, to: Addressee, answer: Answer, dead_letter: Any, duration_ms: float
    ) -> None:
        metrics = self._metrics
        metrics.run_finished(to.graph, answer.status, duration_ms / 1000 if answer.ran else None)
        if dead_letter is not None:
            metrics.dead_letters.labels(dead_letter.label).inc()
        if answer.cancel is not None:
            metrics.run_cancels.labels(answer.cancel.action, answer.cancel.cause).inc()
        if answer.ran:
            log.debug("run %s in %.1f ms (attempt %d)", answer.status, duration_ms,
                      answer.attempts)

    async def send_result(
        self, outbox: Outbox, record: Record, key: bytes, result: dict[str, Any], headers: Headers,
        *, webhook: str | None = None,
    ) -> None:
        """The result to the results topic and, when the request asked, a copy to its reply-to
        (delivered within ``reply_to_timeout_s`` or given up, see ``Outbox.send_copy``).
        ``webhook``: the request's, as a header of the results-topic message (``graphwire
        webhooks`` POSTs it there)."""
        await self._send_result(outbox, record, key, self.encode(result, "output"), headers,
                                webhook)

    async def _send_result(
        self, outbox: Outbox, record: Record, key: bytes, value: bytes, headers: Headers,
        webhook: str | None,
    ) -> None:
        own = [*headers, (HEADER_WEBHOOK, webhook.encode())] if webhook else headers
        await outbox.send(self._topics.results, value, key, own)
        reply_to = header(record, HEADER_REPLY_TO)
        if not reply_to:
            return
        topic = reply_to.decode("utf-8", "replace")
        if topic == self._topics.results:
            return  # it is there already
        refusal = self._refuse_reply_to(topic)
        if refusal is not None:
            self._reply_to_failed(topic, *refusal)
            return
        outbox.send_copy(
            topic,
            value,
            key,
            headers,
            timeout_s=self._reply_to_timeout_s,
            on_failure=self._reply_to_failed,
        )

    def reply_to_not_allowed(self, record: Record) -> str | None:
        """Why ``record``'s reply-to names a topic ``GRAPHWIRE_REPLY_TO_ALLOWED`` does not
        allow (the request is then rejected before it runs, as a refused webhook is), or None.

        The runner writes the copy with its own credentials, so without the allow-list any
        producer of requests could have results written to any topic the runner may write to
        (a confused deputy); the operator names the topics requesters may use."""
        reply_to = header(record, HEADER_REPLY_TO)
        if not reply_to or not self._reply_to_allowed:
            return None
        topic = reply_to.decode("utf-8", "replace")
        if topic == self._topics.results or topic in self._own:
            return None  # results: there already; own topics: no copy, the run goes on
        if self._allowed_reply_to(topic):
            return None
        shown = topic[:249].encode("unicode_escape").decode("ascii")
        return (f"reply-to topic {shown!r} is not allowed here: use a topic matching "
                f"GRAPHWIRE_REPLY_TO_ALLOWED ({', '.join(self._reply_to_allowed)}), or leave "
                f"reply-to out and read {self._topics.results}")

    def _allowed_reply_to(self, topic: str) -> bool:
        allowed = self._reply_to_allowed
        return not allowed or any(fnmatch.fnmatchcase(topic, p) for p in allowed)

    def _refuse_reply_to(self, topic: str) -> tuple[str, str] | None:
        """Why no copy goes to ``topic``, as ``(reason, detail)``; None when it may."""
        if not _TOPIC_NAME.match(topic):
            return "invalid_name", "not a valid topic name"
        if topic in self._own:
            # A result on the requests topic is read back as a request (and rejected: a
            # second result for the same request_id); on events or dlq it breaks their readers.
            return "own_topic", "it is one of graphwire's own topics"
        if not self._allowed_reply_to(topic):  # checked at intake too: a kept result, say
            return "not_allowed", "GRAPHWIRE_REPLY_TO_ALLOWED does not match it"
        until = self._failing_reply_to.get(topic)
        if until is not None:
            if time.monotonic() < until:
                return "recent_failure", f"it failed less than {self._reply_to_backoff_s:g}s ago"
            del self._failing_reply_to[topic]
        return None

    def _remember_failing(self, topic: str) -> None:
        """Skip ``topic`` for ``reply_to_backoff_s``; requesters choose the names, so the
        memory is bounded (expired entries go first, then the oldest)."""
        now = time.monotonic()
        failing = self._failing_reply_to
        failing.pop(topic, None)
        failing[topic] = now + self._reply_to_backoff_s
        if len(failing) > _MAX_FAILING_REMEMBERED:
            for name in [n for n, until in failing.items() if until <= now]:
                del failing[name]
            while len(failing) > _MAX_FAILING_REMEMBERED:
                del failing[next(iter(failing))]

    def _reply_to_failed(self, topic: str, reason: str, detail: str) -> None:
        """Count and log a reply-to copy that was not delivered; the result is on results."""
        self._metrics.reply_to_failures.labels(reason).inc()
        if reason in ("timeout", "refused"):
            if self._reply_to_backoff_s > 0:
                self._remember_failing(topic)
            # the producer would otherwise ask the cluster about this topic at every
            # metadata refresh for the rest of the process's life (aiokafka keeps the set)
            with contextlib.suppress(Exception):
                self._producer.client._topics.discard(topic)
        log.log(
            logging.DEBUG if reason == "recent_failure" else logging.WARNING,
            "no reply-to copy to %r (%s: %s); the result is on %s only. Operator action: create "
            "the topic and allow this worker to write to it, or fix the requester's reply-to",
            topic[:300], reason, detail, self._topics.results,
        )

    async def send_dead_letter(self, outbox: Outbox, record: Record, reason: str) -> None:
        """The original key, bytes and headers, plus the reason and where it came from."""
        headers = [
            *record.headers,
            (HEADER_ERROR, reason.encode()),
            (HEADER_SOURCE, f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        value = record.value
        if value is not None and len(value) > self._dlq_limit:
            # Larger than this worker may produce: keep the reason and the pointer to the
            # original (still on the source topic) rather than stall the partition.
            headers.append((HEADER_VALUE_DROPPED, str(len(value)).encode()))
            value = None
        await outbox.send(self._topics.dlq, value, record.key, headers)

    async def dead_letter_only(self, record: Record, reason: str, label: str) -> None:
        """Dead-letter a message that has no request to answer, and wait for the ack."""
        outbox = self.outbox()
        await self.send_dead_letter(outbox, record, reason)
        await outbox.confirm()
        self._metrics.dead_letters.labels(label).inc()
        log.warning(
            "dead-lettered %s/%d/%d: %s", record.topic, record.partition, record.offset, reason
        )
