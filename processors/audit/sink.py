"""The audit sink (``graphwire audit``): a faust-streaming app that records every request, event,
result and dead letter in PostgreSQL.

It is its own consumer group (``GRAPHWIRE_AUDIT_GROUP_ID``, default ``graphwire-audit``), so a
slow or down PostgreSQL never slows the runners: records wait in Kafka and the sink catches up.

Delivery: a batch's offsets are acknowledged only after its transaction committed. faust's
``Stream.take_events()`` acks a batch in a ``finally`` once the loop body returns, and also when
the body is cancelled or raises; so the body (1) never lets a write error escape (it retries
until the write succeeds) and (2) holds one extra reference on every message of the batch,
released only after the write. A cancelled or crashed body leaves its messages unacked: their
offsets are never committed and the next owner reads them again. The writes are idempotent, so
that replay adds nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import faust
import mode
from faust.types import TP

from graphwire.processors.audit.rows import Record, to_row
from graphwire.processors.audit.writer import AuditWriter
from graphwire.processors.httpserver import HealthServer
from graphwire.processors.logs import setup_logging
from graphwire.processors.metrics import AuditMetrics
from graphwire.processors.settings import Settings

log = logging.getLogger(__name__)


def _credentials(settings: Settings) -> Any:
    """faust's form of the Kafka security settings (None for PLAINTEXT)."""
    security = settings.kafka_security()
    ssl_context = security.get("ssl_context")
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None and settings.sasl_mechanism is not None
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            mechanism=settings.sasl_mechanism,
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


def _record(message: Any) -> Record:
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=list(message.headers or ()),
        timestamp=message.timestamp,
    )


class AuditSink:
    """The faust app, its one agent, the writer and the health server of the sink."""

    def __init__(self, settings: Settings, *, metrics: AuditMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or AuditMetrics()
        self.writer = AuditWriter(
            settings.database_url.get_secret_value(),
            schema=settings.audit_schema,
            metrics=self.metrics,
        )
        self.health = HealthServer(
            self.readiness,
            self.metrics.registry,
            host=settings.http_host,
            port=settings.audit_http_port,
        )
        self._ping_problem: str | None = "PostgreSQL not checked yet"
        self._next_offset: dict[TP, int] = {}
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        batch = s.audit_batch_max
        app = faust.App(
            s.audit_group_id,
            broker=[f"kafka://{host.strip()}" for host in s.bootstrap_servers.split(",")],
            broker_credentials=_credentials(s),
            autodiscover=False,
            web_enabled=False,  # /health, /ready, /metrics come from HealthServer, as on runners
            topic_disable_leader=True,
            topic_allow_declare=False,  # topics are created by `graphwire topics ensure`
            store="memory://",
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=s.session_timeout_ms / 1000,
            broker_heartbeat_interval=s.heartbeat_interval_ms / 1000,
            broker_commit_interval=s.audit_commit_interval_s,
            broker_max_poll_records=batch,
            stream_buffer_maxsize=max(4096, 2 * batch),
            # On stop and on rebalance, commit what is written and do not wait for the batch
            # in hand: during a PostgreSQL outage it never finishes, and waiting would hang
            # shutdown and every rebalance. Its records are read again by the next owner.
            stream_wait_empty=False,
        )
        t = s.topics
        topic = app.topic(
            t.requests,
            t.events,
            t.results,
            t.dlq,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            allow_empty=True,
        )

        # concurrency=1: with more than one actor, faust-streaming can commit an offset past
        # a message another actor has not finished (faust-streaming issue 606), and then a
        # crash loses it. One actor, whole batches, in order.
        @app.agent(topic, concurrency=1, name="graphwire-audit-writer")
        async def write_records(stream: Any) -> None:
            async for events in stream.take_events(batch, within=s.audit_batch_within_s):
                try:
                    await self.write_batch(events)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # A restarted agent would go on with later records and faust could commit
                    # past this unacknowledged batch: stop the worker instead; the batch is
                    # read again when it starts.
                    log.critical("the audit sink stops: a batch failed unexpectedly (%r)", exc,
                                 exc_info=True)
                    await app.crash(exc)
                    raise

        return app

    async def write_batch(self, events: list[Any]) -> None:
        """Write one batch of faust events, then acknowledge them (see the module doc)."""
        for event in events:  # no await before this loop: nothing can cancel us in between
            event.message.incref()
        rows = []
        t = self.settings.topics
        for event in events:
            record = _record(event.message)
            row = to_row(record, t, max_request_bytes=self.settings.max_request_bytes)
            self.metrics.records.labels(record.topic).inc()
            if row.table == "dead_letters" and row.values[3] == "audit":
                self.metrics.dead_letters.labels(record.topic).inc()
                log.warning("audit dead letter %s: %s", record.source, row.values[8])
            rows.append(row)
        await self.writer.write_until_done(rows)  # returns once written; cancelled on stop
        for event in events:
            event.ack()
            tp = event.message.tp
            self._next_offset[tp] = max(self._next_offset.get(tp, 0), event.message.offset + 1)
        self._update_lag({event.message.tp for event in events})

    def _update_lag(self, partitions: set[TP]) -> None:
        consumer = self.app.consumer
        for tp in partitions:
            if tp in self._next_offset:
                try:
                    lag = consumer.highwater(tp) - self._next_offset[tp]
                except Exception:  # no longer assigned (a rebalance)
                    continue
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))

    async def refresh(self) -> None:
        """Ping PostgreSQL (readiness) and refresh lag for every assigned partition."""
        try:
            await asyncio.wait_for(self.writer.ping(), 5)
            self._ping_problem = None
        except Exception as exc:
            self._ping_problem = f"{type(exc).__name__}: {exc}"
        try:
            assigned = set(self.app.consumer.assignment())
        except Exception:  # not started or between assignments
            return
        for tp in set(self._next_offset) - assigned:  # revoked: another process reports it
            del self._next_offset[tp]
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))
        for tp in assigned - set(self._next_offset):
            try:
                position = await asyncio.wait_for(self.app.consumer.position(tp), 5)
            except Exception:  # a rebalance in between, or the broker is slow: next time
                continue
            if position is not None:
                self._next_offset[tp] = position
        self._update_lag(assigned)

    def readiness(self) -> dict[str, str]:
        """``/ready``: PostgreSQL answers and the last write (if any) succeeded."""
        problem = self.writer.problem if self.writer.problem != "not started" else None
        return {"postgresql": problem or self._ping_problem or "ok"}


class _SinkService(mode.Service):
    """Starts and stops the health server next to the faust app; refreshes lag and readiness."""

    def __init__(self, sink: AuditSink, **kwargs: Any) -> None:
        self.sink = sink
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.sink.refresh()
        await self.sink.health.start()

    async def on_stop(self) -> None:
        await self.sink.health.stop()
        await self.sink.writer.close()

    @mode.Service.timer(5.0)
    async def _refresh(self) -> None:
        await self.sink.refresh()


class _Worker(faust.Worker):
    """faust's worker with graphwire's logging (JSON lines unless on a terminal)."""

    def __init__(self, *services: Any, settings: Settings, **kwargs: Any) -> None:
        self._settings = settings
        super().__init__(*services, **kwargs)
        self.spinner = None  # a terminal spinner in JSON logs is noise
    def _setup_logging(self) -> None:
        setup_logging(self._settings.log_level, self._settings.log_format)
        logging.getLogger("faust").setLevel(max(logging.WARNING, logging.getLogger().level))
        logging.getLogger("mode").setLevel(max(logging.WARNING, logging.getLogger().level))


def run_sink(settings: Settings) -> int:
    """Run the sink until SIGTERM/SIGINT; returns the exit code."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    sink = AuditSink(settings)
    worker = _Worker(
        sink.app,
        _SinkService(sink, loop=loop),
        settings=settings,
        loop=loop,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
