"""ResultCache: opt-in reuse of results of identical requests (Redis), with stampede protection.

The key is the graph's name and version and the canonical JSON of input and config. When N
identical requests arrive together, one computes (it holds ``<key>:lock``) and the others wait
for its result, up to ``wait_s``; then they compute themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from graphwire.topics.errors import DependencyUnavailable

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def cache_key(namespace: str, graph: str, version: str, input: Any, config: Any) -> str:
    """A stable key: same graph, version, input and config give the same key."""
    canonical = orjson.dumps(
        {"graph": graph, "version": version, "input": input, "config": config},
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
    )
    return f"{namespace}:cache:{hashlib.sha256(canonical).hexdigest()}"


class ResultCache:
    """Cached outputs in Redis; ``lookup_or_lock`` is the stampede-safe entry point."""

    def __init__(self, redis: Redis, *, lock_ms: int = 60_000, wait_s: float = 30.0) -> None:
        self._redis = redis
        self.lock_ms = lock_ms
        self.wait_s = wait_s
        self._release = redis.register_script(_RELEASE)

    async def lookup_or_lock(self, key: str, owner: str) -> tuple[bool, Any]:
        """``(True, output)`` on a hit; ``(False, None)`` when the caller should compute
        (it then holds the lock if it could take it, and must ``store`` or ``unlock``)."""
        deadline = time.monotonic() + self.wait_s
        delay = 0.02
        try:
            while True:
                cached = await self._redis.get(key)
                if cached is not None:
                    return True, orjson.loads(cached)
                if await self._redis.set(f"{key}:lock", owner, nx=True, px=self.lock_ms):
                    cached = await self._redis.get(key)  # filled between GET and SET?
                    if cached is not None:
                        await self.unlock(key, owner)
                        return True, orjson.loads(cached)
                    return False, None
                if time.monotonic() >= deadline:  # the computing worker is slow: compute too
                    return False, None
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.25)
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(f"Redis cache lookup failed: {exc}") from exc

    async def store(self, key: str, owner: str, output_json: bytes, ttl_s: float) -> None:
        """Cache an output and release the lock."""
        try:
            await self._redis.set(key, output_json, px=int(ttl_s * 1000))
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(f"Redis cache write failed: {exc}") from exc
        await self.unlock(key, owner)

    async def unlock(self, key: str, owner: str) -> None:
        """Release the lock if we hold it (the computation failed or was not cacheable)."""
        try:
            await self._release(keys=[f"{key}:lock"], args=[owner])
        except (RedisError, OSError):
            pass  # it expires by itself
