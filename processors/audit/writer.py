"""AuditWriter: writes batches of audit rows to PostgreSQL, exactly once per row.

A batch is one transaction: ``copy_records_to_table`` into per-connection temporary staging
tables, then one ``INSERT ... SELECT ... ON CONFLICT`` per table. Replaying a batch (after a crash
before its offsets were committed) changes nothing: events and dead letters are
``DO NOTHING`` on their keys; a run's request half is written only once, and its result half is
the last result in offset order, which a replay writes again unchanged.

``write_until_done`` never gives up while the process runs: PostgreSQL unreachable (or the
tables missing) means wait with backoff, report not ready, try again. Rows PostgreSQL refuses
(a data error) are isolated by splitting the batch in halves until each bad row is alone, and
turned into dead letters, so one bad row never holds the batch back (nor turns it into one
transaction per row).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from graphwire.processors.audit.db import server_settings
from graphwire.processors.audit.rows import (
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    REQUEST_COLUMNS,
    RESULT_COLUMNS,
    Row,
    rejected,
)
from graphwire.processors.metrics import AuditMetrics
from graphwire.processors.pgerrors import kind

log = logging.getLogger(__name__)

_STAGING = {
    "requests": (
        REQUEST_COLUMNS,
        "request_id text, graph text, thread_id text, input jsonb, command jsonb, "
        "metadata jsonb, requested_at timestamptz, request_source text, pos bigint",
    ),
    "results": (
        RESULT_COLUMNS,
        "request_id text, graph text, thread_id text, status text, output jsonb, error jsonb, "
        "interrupts jsonb, metadata jsonb, attempts integer, cached boolean, "
        "duration_ms double precision, finished_at timestamptz, result_source text, "
        "result_partition integer, pos bigint",
    ),
    "events": (
        EVENT_COLUMNS,
        "request_id text, seq bigint, type text, node text, data jsonb, ts timestamptz",
    ),
    "dead_letters": (
        DEAD_LETTER_COLUMNS,
        "source_topic text, source_partition integer, source_offset bigint, origin text, "
        "request_id text, key bytea, value bytea, headers jsonb, reason text, "
        "received_at timestamptz",
    ),
}

# Requests: the first request for a request_id fills the request half (input, when); a replay
# or a duplicate request leaves it alone. The status stays as the result set it.
_MERGE_REQUESTS = """
INSERT INTO graphwire_runs AS r (request_id, graph, thread_id, status, input, command, metadata,
                                 requested_at, request_source)
SELECT DISTINCT ON (request_id) request_id, graph, thread_id, 'accepted', input, command,
       metadata, requested_at, request_source
FROM gw_stage_requests ORDER BY request_id, pos
ON CONFLICT (request_id) DO UPDATE SET
    input = EXCLUDED.input, command = EXCLUDED.command, requested_at = EXCLUDED.requested_at,
    request_source = EXCLUDED.request_source,
    graph = coalesce(r.graph, EXCLUDED.graph),
    thread_id = coalesce(r.thread_id, EXCLUDED.thread_id),
    metadata = CASE WHEN r.metadata = '{}' THEN EXCLUDED.metadata ELSE r.metadata END
WHERE r.request_source IS NULL
"""

# Results: the last result in offset order wins (a republished result is the same run), also
# against one already in the table: a sink process that lost the partition may commit an older
# batch after the new owner wrote a newer result. (Results are keyed by request_id, so one
# request's results share a partition; if the partition count changed, the later timestamp
# decides.)
_MERGE_RESULTS = """
INSERT INTO graphwire_runs AS r (request_id, graph, thread_id, status, output, error, interrupts,
                                 metadata, attempts, cached, duration_ms, finished_at,
                                 result_source, result_partition, result_offset)
SELECT DISTINCT ON (request_id) request_id, graph, thread_id, status, output, error, interrupts,
       metadata, attempts, cached, duration_ms, finished_at, result_source, result_partition, pos
FROM gw_stage_results ORDER BY request_id, pos DESC
ON CONFLICT (request_id) DO UPDATE SET
    status = EXCLUDED.status, output = EXCLUDED.output, error = EXCLUDED.error,
    interrupts = EXCLUDED.interrupts, attempts = EXCLUDED.attempts, cached = EXCLUDED.cached,
    duration_ms = EXCLUDED.duration_ms, finished_at = EXCLUDED.finished_at,
    result_source = EXCLUDED.result_source, result_partition = EXCLUDED.result_partition,
    result_offset = EXCLUDED.result_offset,
    graph = coalesce(r.graph, EXCLUDED.graph),
    thread_id = coalesce(r.thread_id, EXCLUDED.thread_id),
    metadata = CASE WHEN r.metadata = '{}' THEN EXCLUDED.metadata ELSE r.metadata END
WHERE r.result_offset IS NULL
   OR (r.result_partition = EXCLUDED.result_partition AND EXCLUDED.result_offset >= r.result_offset)
   OR (r.result_partition <> EXCLUDED.result_partition AND EXCLUDED.finished_at >= r.finished_at)
"""

_MERGE_EVENTS = f"""
INSERT INTO graphwire_events ({", ".join(EVENT_COLUMNS)})
SELECT {", ".join(EVENT_COLUMNS)} FROM gw_stage_events ORDER BY request_id, seq
ON CONFLICT DO NOTHING
"""

_MERGE_DEAD_LETTERS = f"""
INSERT INTO graphwire_dead_letters ({", ".join(DEAD_LETTER_COLUMNS)})
SELECT {", ".join(DEAD_LETTER_COLUMNS)} FROM gw_stage_dead_letters
ORDER BY source_topic, source_partition, source_offset
ON CONFLICT DO NOTHING
"""

_MERGES = {
    "requests": ("graphwire_runs", _MERGE_REQUESTS),
    "results": ("graphwire_runs", _MERGE_RESULTS),
    "events": ("graphwire_events", _MERGE_EVENTS),
    "dead_letters": ("graphwire_dead_letters", _MERGE_DEAD_LETTERS),
}

_kind = kind  # the shared classifier (graphwire.processors.pgerrors), under its old name


class AuditWriter:
    """A small asyncpg pool and the batch write; one batch at a time per caller."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        metrics: AuditMetrics | None = None,
        pool_size: int = 2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self.metrics = metrics or AuditMetrics()
        self._pool_size = pool_size
        self._max_backoff_s = max_backoff_s
        self._pool: Any = None
        self.problem: str | None = "not started"
        """Why the last write failed, or None while writes succeed (readiness)."""
        self._closed = False

    async def _init_connection(self, conn: Any) -> None:
        for name, (_columns, ddl) in _STAGING.items():
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS gw_stage_{name} ({ddl}) ON COMMIT DELETE ROWS"
            )

    async def _ensure_pool(self) -> Any:
        if self._closed:
            raise asyncio.CancelledError("the audit writer is closed")
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,  # no background reconnects (and their tracebacks) in an outage
                max_size=self._pool_size,
                timeout=10,
                command_timeout=60,
                server_settings=server_settings(self._schema),
                init=self._init_connection,
            )
        return self._pool

    async def close(self) -> None:
        """Close the pool (bounded: a hung server does not hold shutdown); a write still
        waiting then ends with ``CancelledError`` (its batch is not acknowledged)."""
        self._closed = True
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                pool.terminate()

    async def ping(self) -> None:
        """Raise unless PostgreSQL answers."""
        pool = await self._ensure_pool()
        await pool.fetchval("SELECT 1")

    async def write(self, rows: Sequence[Row]) -> dict[str, int]:
        """Write ``rows`` in one transaction; returns rows inserted or updated per table."""
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            by_table.setdefault(row.table, []).append(row.values)
        written: dict[str, int] = {}
        pool = await self._ensure_pool()
        async with pool.acquire() as conn, conn.transaction():
            for name in ("requests", "results", "events", "dead_letters"):
                values = by_table.get(name)
                if not values:
                    continue
                await conn.copy_records_to_table(
                    f"gw_stage_{name}", records=values, columns=_STAGING[name][0]
                )
                table, sql = _MERGES[name]
                status = await conn.execute(sql)
                written[table] = written.get(table, 0) + int(status.split()[-1])
        return written

    async def write_until_done(self, rows: Sequence[Row]) -> dict[str, int]:
        """Write ``rows``, waiting out PostgreSQL outages with backoff; never raises but
        ``asyncio.CancelledError`` (on stop), after which the caller must not acknowledge
        the batch."""
        delay = 0.1
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                written = await self.write(rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = kind(exc)
                self.metrics.write_failures.labels(failure).inc()
                if failure == "data":
                    if len(rows) > 1:
                        log.warning("PostgreSQL refused a batch of %d rows (%r); isolating the "
                                    "bad ones", len(rows), exc)
                        return await self._isolate(rows)
                    return await self._refused(rows[0], exc)
                if failure == "conflict":  # a deadlock with another sink process: just again
                    await asyncio.sleep(random.uniform(0.01, 0.1))
                    continue
                failures += 1
                self.problem = f"{type(exc).__name__}: {exc}"
                if failures == 1 or failures % 20 == 0:
                    log.warning("audit write failed (%s); retrying, %d rows wait in Kafka",
                                self.problem, len(rows))
                await self._drop_pool_if_broken(exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._max_backoff_s)
                continue
            if failures:
                log.info("audit writes work again after %d failed attempts", failures)
            self.problem = None
            self.metrics.write_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_rows.observe(len(rows))
            for table, count in written.items():
                self.metrics.rows_written.labels(table).inc(count)
            return written

    async def _drop_pool_if_broken(self, exc: BaseException) -> None:
        if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.PostgresConnectionError):
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.terminate()

    async def _isolate(self, rows: Sequence[Row]) -> dict[str, int]:
        """Write each half of a refused batch on its own (recursively): the good rows go in
        with few transactions (a batch of n with one bad row: 2*log2(n) more), and a single
        row PostgreSQL refuses becomes a dead letter."""
        middle = len(rows) // 2
        total: dict[str, int] = {}
        for half in (rows[:middle], rows[middle:]):
            for table, count in (await self.write_until_done(half)).items():
                total[table] = total.get(table, 0) + count
        return total

    async def _refused(self, row: Row, exc: BaseException) -> dict[str, int]:
        if row.table == "dead_letters" and row.values[3] == "audit":
            # our own dead letter of this record was refused too: nothing left to try
            log.error("PostgreSQL refused the dead letter of %s (%s); it stays only in Kafka",
                      row.record.source, exc)
            return {}
        reason = f"{row.record.topic}: PostgreSQL refused the row ({type(exc).__name__}: {exc})"
        return await self.write_until_done([rejected(row.record, reason)])
