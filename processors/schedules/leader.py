"""Leadership: one scheduler replica produces due requests, the others stand by.

The leader holds a session-level PostgreSQL advisory lock (keyed by the schema of the tables)
on a connection of its own, and runs every query of its ticks on that connection: if the
connection dies, so does the lock, and the leader's next query fails, so it steps down before
doing anything more. A standby tries the lock every ``GRAPHWIRE_SCHEDULER_STANDBY_POLL_S``.

A tick: cron firings that are due become rows (``store.take_crons``), due rows are produced
and acknowledged by the broker, then marked fired.

A firing of a cron defined through the gateway is charged to its owner's rate limit (the same
sliding window in Redis as the owner's HTTP requests; the cron's ``metadata.principal`` names
the owner and its ``rate_per_minute``). Over the limit the firing is skipped: marked fired
without being produced, logged with the reason, counted in
``graphwire_scheduler_skipped_firings_total{reason="rate_limited"}``. Redis not answering
skips no firing (the charge is left out, with a warning). A leader killed between producing and
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
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from graphwire.processors.audit.db import connect
from graphwire.processors.gateway.auth import Principal, RateLimiter
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
        self._redis: Redis | None = None  # the owners' rate limits, made on first use

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
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

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
        skipped = await self._over_rate(due)
        acks = [await self._producer.send(topic, row.value, key=row.key, headers=row.headers)
                for row in due if row.request_id not in skipped]
        await asyncio.gather(*acks)
        await store.mark_fired(conn, [row.request_id for row in due])
        produced = datetime.now(UTC)
        for row in due:
            if row.request_id in skipped:
                continue
            self._metrics.fired.labels("cron" if row.cron else "request").inc()
            self._metrics.lateness.observe(max(0.0, (produced - row.due_at).total_seconds()))
            log.info("fired %s (due %s)", row.request_id, row.due_at.isoformat())
        return len(due)

    async def _over_rate(self, due: list[store.Due]) -> set[str]:
        """Charge each gateway cron's firing to its owner's rate limit; the request_ids of
        the firings over it (skipped: logged and counted here)."""
        skipped: set[str] = set()
        for row in due:
            owner = _owner(row)
            if owner is None:
                continue
            if self._redis is None:
                self._redis = Redis.from_url(self.settings.redis_url.get_secret_value(),
                                             socket_timeout=5, socket_connect_timeout=5)
            try:
                decision = await RateLimiter(self._redis, self.settings.topic_prefix).check(owner)
            except (RedisError, OSError) as exc:
                log.warning("cannot charge cron firings to their owners' rate limits (Redis: "
                            "%s); firing them uncharged", type(exc).__name__)
                return skipped
            if not decision.allowed:
                skipped.add(row.request_id)
                self._metrics.skipped.labels("rate_limited").inc()
                log.warning("skipped cron firing %s: its owner %s is over its rate limit of %d "
                            "requests per minute", row.request_id, owner.name,
                            owner.rate_per_minute)
        return skipped

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


def _owner(row: store.Due) -> Principal | None:
    """The gateway caller a cron firing is charged to (``store.cron_owner``)."""
    if row.cron is None:
        return None
    try:
        return store.cron_owner(orjson.loads(row.value))
    except orjson.JSONDecodeError:
        return None


async def _close(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception:
        conn.terminate()
