"""RequestIntake: stores the requests that carry ``after_seconds``/``run_at``.

Its own consumer group on the requests topic (``GRAPHWIRE_SCHEDULER_GROUP_ID``), so producers
in any language delay a run by adding one field. Runners skip such requests; this stores each
in ``graphwire_schedules`` as the request it will produce when due (the same bytes without
those two fields, the same key, its ``reply-to`` and trace headers), and commits the offsets
only after the rows are in. A request that does not validate is the runner's to reject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from graphwire.processors.schedules.metrics import SchedulerMetrics
from graphwire.processors.schedules.store import Stored, store
from graphwire.processors.settings import Settings
from graphwire.topics.codec import (
    HEADER_REPLY_TO,
    HEADER_TRACEPARENT,
    decode_request,
    dumps,
    loads,
)
from graphwire.topics.errors import GraphwireError

log = logging.getLogger(__name__)

KEPT_HEADERS = frozenset({HEADER_REPLY_TO, HEADER_TRACEPARENT, "tracestate"})
_MARKERS = (b'"after_seconds"', b'"run_at"')


def deferred_row(record: Any, max_bytes: int) -> Stored | None:
    """The row to store for ``record``, None when it is not a (valid) delayed request."""
    value = record.value
    if value is None or not any(marker in value for marker in _MARKERS):
        return None  # most requests: no JSON parse here
    try:
        request = decode_request(value, max_bytes=max_bytes)
    except GraphwireError:
        return None  # the runner rejects it, with the reason
    if not request.deferred:
        return None
    if request.run_at is not None:
        due = request.run_at.astimezone(UTC)
    else:
        assert request.after_seconds is not None
        produced = datetime.fromtimestamp(record.timestamp / 1000, UTC)
        due = produced + timedelta(seconds=request.after_seconds)
    body = loads(value)
    body.pop("after_seconds", None)
    body.pop("run_at", None)
    headers = [(k, bytes(v)) for k, v in (record.headers or ()) if k in KEPT_HEADERS]
    return Stored(request.request_id, due, request.graph, None, record.key, dumps(body),
                  headers, f"{record.topic}/{record.partition}/{record.offset}")


class RequestIntake:
    """Consumes the requests topic and stores the delayed ones (see the module docstring)."""

    def __init__(self, settings: Settings, db: Any, metrics: SchedulerMetrics) -> None:
        self.settings = settings
        self._db = db
        self._metrics = metrics
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
            rows = [row for records in batches.values() for record in records
                    if (row := deferred_row(record, self.settings.max_request_bytes))]
            if rows:
                await self._store(rows)
            with contextlib.suppress(CommitFailedError):  # a rebalance: redelivered, re-stored
                await consumer.commit()

    async def _store(self, rows: list[Stored]) -> None:
        """Insert ``rows``, waiting out a PostgreSQL outage (the offsets wait with them)."""
        delay = 0.2
        while True:
            try:
                await store(self._db, rows)
                self.database_error = None
                for row in rows:
                    log.info("stored %s to run at %s", row.request_id, row.due_at.isoformat())
                self._metrics.stored.labels("request").inc(len(rows))
                return
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                self.database_error = f"{type(exc).__name__}: {exc}"
                self._metrics.errors.labels("intake_store").inc()
                log.warning("storing %d delayed requests failed (%s); retrying", len(rows),
                            self.database_error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
