"""The gateway's PostgreSQL pool, with a bounded wait for a connection.

asyncpg's ``Pool.fetch`` and friends wait for a free connection without limit: with every
connection taken by long polls, status, crons and the inspector would hang for everyone.
``BoundedPool`` waits at most ``GRAPHWIRE_GATEWAY_DB_ACQUIRE_TIMEOUT_S`` and raises ``PoolBusy``,
which the gateway answers with 503 and ``Retry-After``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from graphwire.topics.errors import DependencyUnavailable


class PoolBusy(DependencyUnavailable):
    """Every PostgreSQL connection of this gateway stayed busy for the acquire timeout."""


class BoundedPool:
    """An asyncpg pool whose calls wait at most ``acquire_timeout`` for a connection."""

    def __init__(self, pool: Any, acquire_timeout: float) -> None:
        self._pool = pool
        self._timeout = acquire_timeout

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """A connection of the pool; ``PoolBusy`` when none frees up in time."""
        try:
            conn = await self._pool.acquire(timeout=self._timeout)
        except TimeoutError:
            raise PoolBusy(
                f"all {self._pool.get_max_size()} PostgreSQL connections of this gateway stayed "
                f"busy for {self._timeout:g} s; retry in a few seconds"
            ) from None
        try:
            yield conn
        finally:
            await self._pool.release(conn)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args, timeout=timeout)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args, timeout=timeout)

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args, timeout=timeout)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        async with self.acquire() as conn:
            return await conn.execute(query, *args, timeout=timeout)

    async def executemany(self, query: str, args: Any, timeout: float | None = None) -> Any:
        async with self.acquire() as conn:
            return await conn.executemany(query, args, timeout=timeout)

    async def close(self) -> None:
        await self._pool.close()
