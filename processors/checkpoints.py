"""Checkpoints: LangGraph's PostgreSQL checkpointer over a connection pool.

With checkpoints, a request redelivered after a crash resumes from its last finished step:
nodes that completed (and the LLM calls in them) are not paid for twice. The thread id is the
request's ``thread_id``, else its ``request_id``.
"""

from __future__ import annotations

import logging
from typing import Self

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)


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
            if self._schema:
                async with pool.connection() as conn:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
            saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
            await saver.setup()
        except Exception as exc:
            await pool.close()
            raise DependencyUnavailable(
                f"PostgreSQL for checkpoints does not answer ({type(exc).__name__}: {exc}); "
                "check GRAPHWIRE_DATABASE_URL or set GRAPHWIRE_CHECKPOINTS=false"
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

    async def forget(self, thread_id: str) -> None:
        """Delete a finished stateless run's checkpoints (threads keep theirs)."""
        if self.saver is not None:
            await self.saver.adelete_thread(thread_id)
