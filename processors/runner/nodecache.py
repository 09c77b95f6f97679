"""RedisNodeCache: LangGraph's node cache (``CachePolicy``) in Redis, shared by every worker.

A node declared with ``add_node(..., cache_policy=CachePolicy(ttl=...))`` reuses its writes for
an identical input when its graph has a cache. A graph compiled without one gets this cache from
the runner (``NodeCaches.for_graph``); a graph compiled with its own keeps it. A write cached by a
run on one worker is read by a run on any other.

LangGraph's own ``langgraph.cache.redis.RedisCache`` is not used: its async methods call the
sync ones, so on a ``redis.asyncio`` client they iterate an un-awaited coroutine (and on a sync
client they block the event loop); it clears with ``KEYS``, and joins namespace parts with ``:``
unescaped, so clearing ``("a",)`` also clears ``("a", "b")``.

Keys (``<ns>`` is the topic prefix, ``GRAPHWIRE_TOPIC_PREFIX``)::

    <ns>:nodecache:<namespace parts, each %-escaped, joined by "/">:<key, %-escaped>

Escaping leaves no ``:``, ``/`` or glob character in a part, so a namespace is cleared exactly
(``SCAN MATCH <ns>:nodecache:<namespace>:*``). Values are ``<encoding>:<bytes>`` from the cache's
serializer: LangGraph's ``JsonPlusSerializer(pickle_fallback=False)`` (``BaseCache``'s default;
nothing read from Redis is unpickled), or the checkpoints' ``EncryptedSerializer`` when
``GRAPHWIRE_CHECKPOINT_ENCRYPTION_KEY`` is set. Its msgpack types are revived as they are from
the checkpoints: Redis is trusted as PostgreSQL is (``LANGGRAPH_STRICT_MSGPACK=true`` narrows
both).

TTL: ``CachePolicy.ttl`` seconds; no ttl (``None``) or a longer one is capped at ``max_ttl_s``
(``MAX_TTL_S``, 7 days), so that nothing stays in Redis for ever.

A Redis error or an unreadable entry is a miss (``aget``), a Redis error on ``aset`` a skipped
write, logged and counted: the node runs, as it would without a cache, and the run's answer is
the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from langgraph.cache.base import BaseCache, FullKey, Namespace
from langgraph.checkpoint.serde.base import SerializerProtocol
from redis.asyncio import Redis
from redis.exceptions import RedisError

from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.redisbatch import RedisBatcher

log = logging.getLogger(__name__)

MAX_TTL_S = 7 * 24 * 3600
"""The longest a cached write stays (also the TTL of ``CachePolicy(ttl=None)``)."""

_CLEAR_BATCH = 500


def _escape(part: str) -> str:
    return quote(part, safe="")


class RedisNodeCache(BaseCache[Any]):
    """LangGraph's ``BaseCache`` on ``redis.asyncio``: async only (graphwire runs ``astream``).

    ``aget``/``aset`` go through the runner's ``RedisBatcher``, so the cache calls of concurrent
    runs share round trips; ``aclear`` scans (it is an operator's action, not the hot path).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        batcher: RedisBatcher | None = None,
        serde: SerializerProtocol | None = None,
        max_ttl_s: int = MAX_TTL_S,
        metrics: RunnerMetrics | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self._redis = redis
        self._batch = batcher or RedisBatcher(redis)
        self.prefix = f"{namespace}:nodecache:"
        """Every key of this cache starts with it."""
        self.max_ttl_s = max_ttl_s
        self._metrics = metrics

    def key(self, namespace: Namespace, key: str) -> str:
        """The Redis key of one cached write."""
        return f"{self.prefix}{'/'.join(map(_escape, namespace))}:{_escape(key)}"

    def _count(self, outcome: str, n: int = 1) -> None:
        if self._metrics is not None and n:
            self._metrics.node_cache.labels(outcome).inc(n)

    async def aget(self, keys: Sequence[FullKey]) -> dict[FullKey, Any]:
        """The cached values of ``keys`` that are present (one ``MGET``)."""
        if not keys:
            return {}
        try:
            raw = await self._batch.command("MGET", *(self.key(ns, k) for ns, k in keys))
        except (RedisError, OSError) as exc:
            log.warning("node cache read failed, the nodes run uncached: %s", exc)
            self._count("error", len(keys))
            return {}
        assert isinstance(raw, list)
        found: dict[FullKey, Any] = {}
        for full_key, value in zip(keys, raw, strict=True):
            if value is None:
                continue
            encoding, _, data = value.partition(b":")
            try:
                found[full_key] = self.serde.loads_typed((encoding.decode(), data))
            except Exception as exc:  # unreadable (or a planted pickle): the node runs, and
                # its new write replaces the entry
                log.warning("node cache entry %s unreadable, the node runs: %s",
                            self.key(*full_key), exc)
                self._count("error")
        self._count("hit", len(found))
        self._count("miss", sum(value is None for value in raw))
        return found

    async def aset(self, pairs: Mapping[FullKey, tuple[Any, int | None]]) -> None:
        """Store each value for its TTL in seconds (None, or more than ``max_ttl_s``: that)."""
        calls = []
        for (ns, key), (value, ttl) in pairs.items():
            encoding, data = self.serde.dumps_typed(value)
            seconds = self.max_ttl_s if ttl is None else max(1, min(int(ttl), self.max_ttl_s))
            calls.append(self._batch.command(
                "SET", self.key(ns, key), encoding.encode() + b":" + data, "EX", seconds))
        # queued together: one round trip
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, RedisError | OSError):
                log.warning("node cache write failed (the next identical call runs): %s",
                            outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def aclear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        """Delete the writes cached under ``namespaces`` (exactly those), or all of this cache."""
        patterns = ([f"{self.prefix}*"] if namespaces is None else
                    [f"{self.prefix}{'/'.join(map(_escape, ns))}:*" for ns in namespaces])
        for pattern in patterns:
            batch: list[Any] = []
            async for found in self._redis.scan_iter(match=pattern, count=_CLEAR_BATCH):
                batch.append(found)
                if len(batch) >= _CLEAR_BATCH:
                    await self._redis.unlink(*batch)
                    batch = []
            if batch:
                await self._redis.unlink(*batch)

    def get(self, keys: Sequence[FullKey]) -> dict[FullKey, Any]:
        """Not supported: graphwire runs graphs with ``astream``, which uses ``aget``."""
        raise NotImplementedError(_SYNC)

    def set(self, pairs: Mapping[FullKey, tuple[Any, int | None]]) -> None:
        """Not supported: graphwire runs graphs with ``astream``, which uses ``aset``."""
        raise NotImplementedError(_SYNC)

    def clear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        """Not supported: use ``aclear`` (or ``graph.aclear_cache()``)."""
        raise NotImplementedError(_SYNC)


_SYNC = (
    "graphwire's Redis node cache is async only (a sync call would block the worker's event "
    "loop): run the graph with ainvoke/astream, or compile it with a cache of your own"
)


def declares_cache_policy(graph: Any) -> bool:
    """True when ``graph`` has a graph-level or a node ``cache_policy``. (A subgraph reads its
    own ``cache``, never its parent's, in LangGraph: attaching one here would not reach it.)"""
    return graph.cache_policy is not None or any(
        node.cache_policy is not None for node in graph.nodes.values()
    )


class NodeCaches:
    """Which cache the runner attaches to a graph: the shared one, to graphs that declare a
    ``CachePolicy`` and were compiled without a cache; None (logged once) without Redis."""

    def __init__(self, cache: BaseCache[Any] | None) -> None:
        self.cache = cache
        self._told = False

    def for_graph(self, graph: Any) -> BaseCache[Any] | None:
        """The cache to attach to ``graph``, or None (it keeps its own, or needs none)."""
        if graph.cache is not None or not declares_cache_policy(graph):
            return None
        if self.cache is None and not self._told:
            self._told = True
            log.info("graph %s declares a CachePolicy but this worker has no shared node cache "
                     "(GRAPHWIRE_DEDUP=false: no Redis); its nodes run uncached", graph.name)
        return self.cache
