"""Checkpoints: LangGraph's PostgreSQL checkpointer over a connection pool.

With checkpoints, a request redelivered after a crash resumes from its last finished step:
nodes that completed (and the LLM calls in them) are not paid for twice. The thread id is the
request's ``thread_id``, else its ``request_id``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x67_77_63_6B  # "gwck": graphwire checkpoint migrations


async def _try_lock(conn: AsyncConnection[Any]) -> bool:
    cursor = await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_MIGRATION_LOCK,))
    row = await cursor.fetchone()
    return bool(row and row["ok"])


class CheckpointStore:
    """Owns the pool and the ``AsyncPostgresSaver``; ``setup()`` creates its tables."""

    def __init__(
        self, database_url: str, *, schema: str | None = None, pool_size: int = 10
    ) -> None:
        self._url = database_url
        self._schema = schema
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self.saver: AsyncPostgresSaver | None = None

    async def start(self) -> None:
        """Open the pool, create the schema (if named) and the checkpoint tables."""
        if self._pool is not None:
            return
        kwargs: dict[str, object] = {
            "autocommit": True,
            "prepare_threshold": 0,
            "row_factory": dict_row,
        }
        if self._schema:
            kwargs["options"] = f"-c search_path={self._schema}"
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
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
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
        """Close the pool. Idempotent."""
        if self._pool is not None:
            await self._pool.close()
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

    async def forget(self, thread_id: str) -> None:
        """Delete a finished stateless run's checkpoints (threads keep theirs)."""
        if self.saver is not None:
            await self.saver.adelete_thread(thread_id)
