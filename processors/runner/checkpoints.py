"""Checkpoints: LangGraph's PostgreSQL checkpointer over a connection pool.

With checkpoints, a request redelivered after a crash resumes from its last finished step:
nodes that completed (and the LLM calls in them) are not paid for twice. The thread id is the
request's ``thread_id``, else its ``request_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Self

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from graphwire.topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x67_77_63_6B  # "gwck": graphwire checkpoint migrations


async def _try_lock(conn: AsyncConnection[Any]) -> bool:
    cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_MIGRATION_LOCK,))
    row = await cursor.fetchone()
    return bool(row and row["ok"])


class _Unlocked:
    """An async context manager that does not serialize anything."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class PooledPostgresSaver(AsyncPostgresSaver):
    """``AsyncPostgresSaver`` without its instance-wide lock.

    The upstream saver holds one ``asyncio.Lock`` around every database call, so 200 runs in
    flight take turns on a single checkpoint write at a time, whatever the pool size. Over a
    connection pool every call gets its own connection, so the lock protects nothing: drop it.
    On this 2-core machine the worker is CPU-bound either way; the lock matters where each call
    waits on a network round trip to PostgreSQL (it caps a worker at one call per round trip).
    """

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        super().__init__(pool)
        self.lock = _Unlocked()  # type: ignore[assignment]


class CheckpointStore:
    """Owns the pool and the ``AsyncPostgresSaver``; ``setup()`` creates its tables."""

    def __init__(
        self, database_url: str, *, schema: str | None = None, pool_size: int = 20
    ) -> None:
        self._url = database_url
        self._schema = schema
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self.saver: AsyncPostgresSaver | None = None
        self.forget_interval_s = 1.0
        self._forget: set[str] = set()
        self._forgetter: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the pool, create the schema (if named) and the checkpoint tables."""
        if self._pool is not None:
            return
        kwargs: dict[str, object] = {
            "autocommit": True,
            "prepare_threshold": 0,
            "row_factory": dict_row,
            # a server that stops answering must not hang a run or the shutdown
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        options = "-c statement_timeout=30000"
        if self._schema:
            options += f" -c search_path={self._schema}"
        kwargs["options"] = options
        pool = AsyncConnectionPool(
            self._url, min_size=1, max_size=self._pool_size, kwargs=kwargs, open=False
        )
        try:
            await pool.open(wait=True, timeout=10)
        except Exception as exc:
            await pool.close()
            raise DependencyUnavailable(
                f"PostgreSQL for checkpoints does not answer ({type(exc).__name__}: {exc}); "
                "check GRAPHWIRE_DATABASE_URL or set GRAPHWIRE_CHECKPOINTS=false"
            ) from exc
        saver = PooledPostgresSaver(pool)
        try:
            # Replicas start together: one migrates at a time (session advisory lock). Try and
            # poll rather than wait in the lock: a session waiting inside a query would block
            # the migration's CREATE INDEX CONCURRENTLY, which waits for every open query.
            async with pool.connection() as conn:
                while not await _try_lock(conn):
                    await asyncio.sleep(0.2)
                try:
                    if self._schema:
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                    await saver.setup()
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        except Exception as exc:
            await pool.close()
            raise DependencyUnavailable(
                f"could not create the checkpoint tables ({type(exc).__name__}: {exc}); "
                "check that the GRAPHWIRE_DATABASE_URL user may create tables"
            ) from exc
        self._pool, self.saver = pool, saver

    async def stop(self) -> None:
        """Delete what is waiting to be forgotten, close the pool. Idempotent."""
        if self._forgetter is not None:
            self._forgetter.cancel()
            await asyncio.gather(self._forgetter, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush_forgotten(), timeout=10)
        if self._pool is not None:
            await self._pool.close(timeout=5)
            self._pool, self.saver = None, None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def ping(self) -> None:
        """Raise ``DependencyUnavailable`` unless PostgreSQL answers."""
        assert self._pool is not None
        try:
            async with self._pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:
            raise DependencyUnavailable(f"PostgreSQL does not answer ({exc})") from exc

    def forget_later(self, thread_id: str) -> None:
        """Delete a finished stateless run's checkpoints in the next batch (about a second).

        Batching keeps a DELETE per table per second off each run's path (measured: +20% runs/s
        on ``slow``). A crash can leave a batch behind: ``graphwire checkpoints prune`` removes
        what is older than the retention.
        """
        self._forget.add(thread_id)
        if self._forgetter is None or self._forgetter.done():
            self._forgetter = asyncio.create_task(self._forget_soon())

    async def _forget_soon(self) -> None:
        await asyncio.sleep(self.forget_interval_s)
        await self.flush_forgotten()

    async def flush_forgotten(self) -> None:
        """Delete the checkpoints of every thread handed to ``forget_later`` so far."""
        if not self._forget or self._pool is None:
            return
        batch, self._forget = list(self._forget), set()
        try:
            async with self._pool.connection(timeout=5) as conn, conn.transaction():
                for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
                    await conn.execute(f"DELETE FROM {table} WHERE thread_id = ANY(%s)", (batch,))
        except Exception as exc:  # results are out; leftovers only cost space until pruned
            log.warning("could not delete checkpoints of %d finished runs: %s", len(batch), exc)

    async def prune(self, older_than_s: float) -> int:
        """Delete every thread whose newest checkpoint is older than ``older_than_s``."""
        assert self._pool is not None
        cutoff_sql = """
            SELECT thread_id FROM checkpoints
            GROUP BY thread_id
            HAVING max((checkpoint->>'ts')::timestamptz) < now() - make_interval(secs => %s)
        """
        async with self._pool.connection() as conn, conn.transaction():
            rows = await (await conn.execute(cutoff_sql, (older_than_s,))).fetchall()
            threads = [row["thread_id"] for row in rows]  # type: ignore[call-overload]
            for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
                await conn.execute(f"DELETE FROM {table} WHERE thread_id = ANY(%s)", (threads,))
        return len(threads)
