"""RequestIntake: stores the requests that carry ``after_seconds``/``run_at``.

Its own consumer group on the requests topic (``GRAPHWIRE_SCHEDULER_GROUP_ID``), so producers
in any language delay a run by adding one field. Runners skip such requests; this stores each
in ``graphwire_schedules`` as the request it will produce when due (the same bytes without
those two fields, the same key, its ``reply-to`` and trace headers), and commits the offsets
only after the rows are in. A request that does not validate is the runner's to reject; a
valid one that cannot be stored (a due time out of range, a row PostgreSQL refuses) is rejected
here, with a ``rejected`` result and a dead letter, and the intake goes on. Only an outage makes
it wait (``graphwire.processors.pgerrors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError

from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.pgerrors import kind
from graphwire.processors.runner.answer import Addressee, Answer
from graphwire.processors.runner.publisher import OutputPublisher, Record, Start
from graphwire.processors.schedules.metrics import SchedulerMetrics
from graphwire.processors.schedules.store import Stored, store
from graphwire.processors.settings import Settings
from graphwire.topics.codec import (
    HEADER_PRINCIPAL,
    HEADER_REPLY_TO,
    HEADER_TRACEPARENT,
    decode_request,
    dumps,
    loads,
)
from graphwire.topics.errors import DependencyUnavailable, GraphwireError, InvalidRequest
from graphwire.topics.models import Request

log = logging.getLogger(__name__)

KEPT_HEADERS = frozenset({HEADER_REPLY_TO, HEADER_TRACEPARENT, "tracestate", HEADER_PRINCIPAL})
_MARKERS = (b'"after_seconds"', b'"run_at"')


@dataclass(frozen=True, slots=True)
class Refused:
    """A delayed request the intake cannot store: it gets a ``rejected`` result and a dead
    letter with ``reason`` (an ``InvalidRequest``), and the intake goes on."""

    record: Any
    reason: str


def _due(request: Request, timestamp_ms: int) -> datetime | str:
    """When ``request`` is due, or why no time PostgreSQL and Python can hold says when (the
    contract may not bound it: a record from an older producer, or a producer-set timestamp)."""
    if request.run_at is not None:
        try:
            return request.run_at.astimezone(UTC)
        except (OverflowError, ValueError):
            return (f"invalid request: run_at: {request.run_at.isoformat()} is outside the "
                    "years 1-9999 in UTC; give a time within that range, with its offset")
    after = request.after_seconds or 0.0
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC) + timedelta(seconds=after)
    except (OverflowError, ValueError, OSError):
        return (f"invalid request: after_seconds: {after:g} s after the message's Kafka "
                f"timestamp ({timestamp_ms} ms) is past the year 9999; produce it with the "
                "current time as its timestamp, or give run_at")


def deferred_row(record: Any, max_bytes: int) -> Stored | Refused | None:
    """The row to store for ``record``; ``Refused`` when it is a valid delayed request that
    cannot be stored as it is; None when it is not a (valid) delayed request."""
    value = record.value
    if value is None or not any(marker in value for marker in _MARKERS):
        return None  # most requests: no JSON parse here
    try:
        request = decode_request(value, max_bytes=max_bytes)
    except GraphwireError:
        return None  # the runner rejects it, with the reason
    if not request.deferred:
        return None
    try:
        due = _due(request, record.timestamp)
        if isinstance(due, str):
            return Refused(record, due)
        body = loads(value)
        body.pop("after_seconds", None)
        body.pop("run_at", None)
        headers = [(k, bytes(v)) for k, v in (record.headers or ()) if k in KEPT_HEADERS]
        return Stored(request.request_id, due, request.graph, None, record.key, dumps(body),
                      headers, f"{record.topic}/{record.partition}/{record.offset}")
    except Exception as exc:  # a bug here must not stop the intake: reject this one, go on
        return Refused(record, f"invalid request: the scheduler cannot store it "
                               f"({type(exc).__name__}: {exc})")


class RequestIntake:
    """Consumes the requests topic and stores the delayed ones (see the module docstring)."""

    def __init__(self, settings: Settings, db: Any, metrics: SchedulerMetrics,
                 producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self._db = db
        self._metrics = metrics
        # The runner's publisher, so a refused request gets the runner's rejected result (its
        # reply-to copy and webhook included) and dead letter. Its runner metrics stay private.
        self._out = OutputPublisher(
            producer, settings.topics, RunnerMetrics(),
            max_message_bytes=settings.max_message_bytes, stopping=lambda: self._stopping,
            reply_to_timeout_s=settings.reply_to_timeout_s,
            reply_to_backoff_s=settings.reply_to_backoff_s,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.database_error: str | None = None
        """Why the last write failed (None: the last write succeeded)."""

    async def start(self) -> None:
        """Join the group and start consuming. Safe to call twice."""
        if self._consumer is not None:
            return
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            s.topics.requests,
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.scheduler_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            fetch_max_wait_ms=max(s.fetch_max_wait_ms, 50),
            max_partition_fetch_bytes=s.max_message_bytes,
            **s.kafka_security(),
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._consume(), name="scheduler-intake")

    async def stop(self) -> None:
        """Stop consuming (offsets of stored rows are committed). Idempotent."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    @property
    def running(self) -> bool:
        """True while the consuming task runs."""
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def _consume(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=self.settings.poll_timeout_ms,
                                                 max_records=500)
            except KafkaError as exc:
                self._metrics.errors.labels("intake_fetch").inc()
                log.warning("reading the requests topic failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if not batches:
                continue
            rows: list[Stored] = []
            refused: list[Refused] = []
            records = {}
            for record in (r for found in batches.values() for r in found):
                outcome = deferred_row(record, self.settings.max_request_bytes)
                if isinstance(outcome, Stored):
                    rows.append(outcome)
                    records[outcome.source] = record
                elif outcome is not None:
                    refused.append(outcome)
            if rows:
                refused += [Refused(records[row.source], reason)
                            for row, reason in await self._store(rows)]
            for one in refused:
                await self._reject(one)
            with contextlib.suppress(CommitFailedError):  # a rebalance: redelivered, re-stored
                await consumer.commit()

    async def _store(self, rows: list[Stored]) -> list[tuple[Stored, str]]:
        """Insert ``rows``, waiting out a PostgreSQL outage (the offsets wait with them); returns
        the rows PostgreSQL refuses (a data error), each with the reason. A refused batch is
        split in halves until each bad row is alone: the others are stored."""
        delay = 0.2
        while True:
            try:
                await store(self._db, rows)
            except Exception as exc:
                failure = kind(exc)
                if failure == "data":
                    if len(rows) == 1:
                        return [(rows[0], f"invalid request: PostgreSQL refused to store it "
                                          f"({type(exc).__name__}: {exc}); check its fields "
                                          "for NUL characters and values out of range")]
                    middle = len(rows) // 2
                    return [*await self._store(rows[:middle]), *await self._store(rows[middle:])]
                self._metrics.errors.labels("intake_store").inc()
                if failure == "conflict":  # a deadlock or serialization failure: again
                    await asyncio.sleep(0.05)
                    continue
                self.database_error = f"{type(exc).__name__}: {exc}"
                log.warning("storing %d delayed requests failed (%s); retrying", len(rows),
                            self.database_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.database_error = None
            for row in rows:
                log.info("stored %s to run at %s", row.request_id, row.due_at.isoformat())
            self._metrics.stored.labels("request").inc(len(rows))
            return []

    def _start(self, record: Record) -> Start:
        return Start(record, self._out.outbox(), self.settings.worker_id)

    async def _reject(self, refused: Refused) -> None:
        """A ``rejected`` result and a dead letter for ``refused``, as the runner gives a
        request that cannot run; acknowledged before the offset is committed. Nothing here
        stops the intake: what cannot be published is logged, and the intake goes on."""
        record = refused.record
        request = decode_request(record.value, max_bytes=self.settings.max_request_bytes)
        answer = Answer.rejected(
            InvalidRequest(refused.reason, request_id=request.request_id), "unschedulable")
        to = Addressee.of(request)
        try:
            try:
                await self._out.finish(self._start(record), to, answer, None)
            except TypeError:  # its metadata cannot be encoded again (too deep): leave it out
                to = dataclasses.replace(to, metadata=None)
                await self._out.finish(self._start(record), to, answer, None)
            log.warning("rejected %s: %s", request.request_id, refused.reason)
        except (asyncio.CancelledError, DependencyUnavailable):
            raise  # stopping: the offset stays uncommitted, the next owner rejects it
        except Exception as exc:  # refused for good (not authorised, too large): do not stop
            log.error("could not reject %s (%s): %s: %s; it stays on %s/%d at offset %d only",
                      request.request_id, refused.reason, type(exc).__name__, exc, record.topic,
                      record.partition, record.offset)
