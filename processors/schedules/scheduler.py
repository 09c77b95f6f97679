"""Scheduler: the ``graphwire scheduler`` processor (intake on every replica, one leader)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from graphwire.processors.audit.db import connect, require_migrated, server_settings
from graphwire.processors.schedules.intake import RequestIntake
from graphwire.processors.schedules.leader import Leadership
from graphwire.processors.schedules.metrics import SchedulerMetrics
from graphwire.processors.settings import Settings
from graphwire.topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)


class Scheduler:
    """Stores delayed requests and, while it leads, produces what is due (``async with``)."""

    def __init__(self, settings: Settings, metrics: SchedulerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or SchedulerMetrics()
        self._pool: Any = None
        self._producer: AIOKafkaProducer | None = None
        self._intake: RequestIntake | None = None
        self._leadership: Leadership | None = None
        self._leading: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def role(self) -> str:
        """``leader``, ``standby`` or ``starting``."""
        return self._leadership.role if self._leadership else "starting"

    async def start(self, *, migrate: bool = False) -> None:
        """Check the tables, connect, join the intake group and campaign. Safe to call twice."""
        if self._pool is not None:
            return
        s = self.settings
        dsn, schema = s.database_url.get_secret_value(), s.audit_schema
        conn = await connect(dsn, schema)
        try:
            if migrate:
                from graphwire.processors.audit.db import migrate as apply

                await apply(conn, schema)
            await require_migrated(conn, schema)
        finally:
            await conn.close()
        try:
            self._pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=2, timeout=10, command_timeout=30,
                server_settings=server_settings(schema),
            )
            self._producer = AIOKafkaProducer(
                bootstrap_servers=s.bootstrap_servers, acks="all", linger_ms=s.linger_ms,
                compression_type=s.compression_type, max_request_size=s.max_message_bytes,
                **s.kafka_security(),
            )
            await self._producer.start()
            self._intake = RequestIntake(s, self._pool, self.metrics, self._producer)
            await self._intake.start()
        except KafkaConnectionError as exc:
            await self.stop()
            raise DependencyUnavailable(
                f"cannot reach Kafka at {s.bootstrap_servers}; check GRAPHWIRE_BOOTSTRAP_SERVERS"
            ) from exc
        except BaseException:
            await self.stop()
            raise
        self._leadership = Leadership(s, self._producer, self.metrics, lambda: self._stopping)
        self._leading = asyncio.create_task(self._leadership.run(), name="scheduler-leader")

    async def stop(self) -> None:
        """Finish the tick in progress, give up the lead, leave the group. Idempotent."""
        self._stopping = True
        if self._leadership is not None:
            self._leadership.wake()
        if self._leading is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._leading), 30)
            except TimeoutError:
                self._leading.cancel()
            await asyncio.gather(self._leading, return_exceptions=True)
            self._leading = None
        if self._intake is not None:
            await self._intake.stop()
            self._intake = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def readiness(self) -> dict[str, str]:
        """``/ready``: Kafka (the intake consumes) and PostgreSQL (the last query answered)."""
        intake, leadership = self._intake, self._leadership
        kafka = "ok" if intake is not None and intake.running else "the intake is not running"
        errors = [e for e in (intake and intake.database_error,
                              leadership and leadership.database_error) if e]
        return {"kafka": kafka, "postgresql": errors[0] if errors else "ok"}

    @property
    def failed(self) -> BaseException | None:
        """The exception that ended the leader or intake task (a bug), if one did."""
        tasks = [self._leading, self._intake.task if self._intake else None]
        for task in tasks:
            if task is not None and task.done() and not task.cancelled():
                exc = task.exception()
                if exc is not None:
                    return exc
        return None
