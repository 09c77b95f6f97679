"""ResultCache: opt-in reuse of results of identical requests (Redis), with stampede protection.

The key is the graph's name and version and the canonical JSON of input and config. When N
identical requests arrive together, one computes (it holds ``<key>:lock``) and the others wait
for its result, up to ``wait_s``; then they compute themselves.

Each step is one script (the lookup and the lock; the store and the unlock), sent through the
runner's ``RedisBatcher``, so the cache calls of concurrent runs share round trips too.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import orjson
from redis.exceptions import RedisError

from graphwire.processors.runner.redisbatch import RedisBatcher
from graphwire.topics.errors import DependencyUnavailable

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: key, lock. ARGV: owner, lock_ms. -> {1, output} a hit | {0, 1} locked | {0, 0} taken
# (atomic: nothing can fill the key between the miss and the lock, so no second GET)
_LOOKUP_OR_LOCK = """
local cached = redis.call('GET', KEYS[1])
if cached then return {1, cached} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, 1} end
return {0, 0}
"""

# KEYS: key, lock. ARGV: output, ttl_ms, owner. Cache the output, then release our lock.
_STORE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
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

    def __init__(
        self, batcher: RedisBatcher, *, lock_ms: int = 60_000, wait_s: float = 30.0
    ) -> None:
        self._batch = batcher
        self.lock_ms = lock_ms
        self.wait_s = wait_s
        batcher.add_script("cache_release", _RELEASE)
        batcher.add_script("cache_lookup_or_lock", _LOOKUP_OR_LOCK)
        batcher.add_script("cache_store", _STORE)

    async def lookup_or_lock(self, key: str, owner: str) -> tuple[bool, Any]:
        """``(True, output)`` on a hit; ``(False, None)`` when the caller should compute
        (it then holds the lock if it could take it, and must ``store`` or ``unlock``)."""
        deadline = time.monotonic() + self.wait_s
        delay = 0.02
        try:
            while True:
                reply = await self._batch.script(
                    "cache_lookup_or_lock", [key, f"{key}:lock"], [owner, self.lock_ms]
                )
                assert isinstance(reply, list)
                if reply[0] == 1:
                    return True, orjson.loads(reply[1])
                if reply[1] == 1:
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
            await self._batch.script(
                "cache_store", [key, f"{key}:lock"], [output_json, int(ttl_s * 1000), owner]
            )
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(f"Redis cache write failed: {exc}") from exc

    async def unlock(self, key: str, owner: str) -> None:
        """Release the lock if we hold it (the computation failed or was not cacheable)."""
        try:
            await self._batch.script("cache_release", [f"{key}:lock"], [owner])
        except (RedisError, OSError):
            pass  # it expires by itself
