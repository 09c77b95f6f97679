"""Leadership: one scheduler replica produces due requests, the others stand by.

The leader holds a session-level PostgreSQL advisory lock (keyed by the schema of the tables)
on a connection of its own, and runs every query of its ticks on that connection: if the
connection dies, so does the lock, and the leader's next query fails, so it steps down before
doing anything more. A standby tries the lock every ``GRAPHWIRE_SCHEDULER_STANDBY_POLL_S``.

A tick: cron firings that are due become rows (``store.take_crons``), due rows are produced
and acknowledged by the broker, then marked fired. A leader killed between producing and
marking leaves the rows unmarked; its successor produces them again with the same request_id,
and the runners' dedup runs each request once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from graphwire.processors.audit.db import connect
from graphwire.processors.schedules import store
from graphwire.processors.schedules.metrics import SchedulerMetrics
from graphwire.processors.settings import Settings
from graphwire.topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)

_TRY_LOCK = (
    "SELECT pg_try_advisory_lock(hashtextextended('graphwire-scheduler:' || current_schema(), 0))"
)
_OUTAGES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, DependencyUnavailable,
            KafkaError, TimeoutError)
_PRUNE_EVERY_S = 60.0
_COUNT_EVERY_S = 5.0


class Leadership:
    """Campaigns for the lock and, while it holds it, fires what is due."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer,
                 metrics: SchedulerMetrics, stopping: Callable[[], bool]) -> None:
        self.settings = settings
        self._producer = producer
        self._metrics = metrics
        self._stopping = stopping
        self._wake = asyncio.Event()
        self.role = "starting"
        """``leader``, ``standby``, or ``starting`` (no database answer yet)."""
        self.database_error: str | None = None
        self._pruned = self._counted = 0.0

    def wake(self) -> None:
        """Stop waiting and tick now (on shutdown)."""
        self._wake.set()

    async def run(self) -> None:
        """Campaign until stopped; lead whenever the lock is ours."""
        s = self.settings
        while not self._stopping():
            conn = None
            try:
                conn = await connect(s.database_url.get_secret_value(), s.audit_schema, timeout=5)
                if not await conn.fetchval(_TRY_LOCK):
                    self._set_role("standby")
                    self.database_error = None
                    await self._sleep(s.scheduler_standby_poll_s)
                    continue
                self._set_role("leader")
                log.info("leading: this replica produces due requests")
                await self._lead(conn)
            except _OUTAGES as exc:
                self.database_error = f"{type(exc).__name__}: {exc}"
                self._metrics.errors.labels("leader").inc()
                log.warning("scheduler %s: %s; campaigning again", self.role, self.database_error)
                self._set_role("standby")
                await self._sleep(min(1.0, s.scheduler_standby_poll_s))
            finally:
                if conn is not None:
                    await _close(conn)  # releases the lock (it is the session's)
        self._set_role("standby")

    def _set_role(self, role: str) -> None:
        self.role = role
        self._metrics.leader.set(1 if role == "leader" else 0)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(seconds, 0.0))
        except TimeoutError:
            pass

    async def _lead(self, conn: Any) -> None:
        s = self.settings
        grace = timedelta(seconds=s.scheduler_missed_grace_s)
        while not self._stopping():
            now = datetime.now(UTC)
            tick = await store.take_crons(conn, now, grace)
            if tick.stored:
                self._metrics.stored.labels("cron").inc(tick.stored)
            if tick.missed_run:
                self._metrics.missed.labels("run").inc(tick.missed_run)
            if tick.missed_skipped:
                self._metrics.missed.labels("skip").inc(tick.missed_skipped)
            fired = await self._fire_due(conn, now)
            self.database_error = None
            await self._maybe_prune(conn, now)
            if fired >= s.scheduler_batch:
                continue  # more are due: no sleep
            upcoming = await store.next_due(conn)
            wait = s.scheduler_tick_s
            if upcoming is not None:
                wait = min(wait, (upcoming - datetime.now(UTC)).total_seconds())
            await self._sleep(wait)

    async def _fire_due(self, conn: Any, now: datetime) -> int:
        """Produce the rows due at ``now``, wait for every ack, then mark them fired."""
        due = await store.take_due(conn, now, self.settings.scheduler_batch)
        if not due:
            return 0
        topic = self.settings.topics.requests
        acks = [await self._producer.send(topic, row.value, key=row.key, headers=row.headers)
                for row in due]
        await asyncio.gather(*acks)
        await store.mark_fired(conn, [row.request_id for row in due])
        produced = datetime.now(UTC)
        for row in due:
            self._metrics.fired.labels("cron" if row.cron else "request").inc()
            self._metrics.lateness.observe(max(0.0, (produced - row.due_at).total_seconds()))
            log.info("fired %s (due %s)", row.request_id, row.due_at.isoformat())
        return len(due)

    async def _maybe_prune(self, conn: Any, now: datetime) -> None:
        """Every few seconds count what is pending; every minute delete old fired rows."""
        if time.monotonic() - self._counted < _COUNT_EVERY_S:
            return
        self._counted = time.monotonic()
        self._metrics.pending.set(await store.pending(conn))
        if time.monotonic() - self._pruned < _PRUNE_EVERY_S:
            return
        self._pruned = time.monotonic()
        retention = timedelta(seconds=self.settings.scheduler_retention_s)
        deleted = await store.prune(conn, retention, now)
        if deleted:
            log.info("pruned %d fired schedules older than %s", deleted, retention)


async def _close(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception:
        conn.terminate()
