"""RedisNodeCache on a real Redis: values, key layout, TTLs, exact clears, no pickle, outages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.nodecache import MAX_TTL_S, RedisNodeCache
from graphwire.processors.runner.redisbatch import RedisBatcher
from tests.conftest import TEST_REDIS_URL

WRITES = [["sq", {"y": 9}], ["log", ["a", "b"]]]
NS = ("__pregel_ns_writes", "tests.graphs:sq", "sq")


def _lookups(metrics: RunnerMetrics, outcome: str) -> float:
    return metrics.node_cache.labels(outcome)._value.get()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client of the test Redis."""
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def namespace() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def metrics() -> RunnerMetrics:
    """The metrics the cache counts its lookups in."""
    return RunnerMetrics()


@pytest.fixture
async def cache(
    redis: Redis, namespace: str, metrics: RunnerMetrics
) -> AsyncIterator[RedisNodeCache]:
    """A cache under this test's prefix (its keys deleted at the end)."""
    made = RedisNodeCache(redis, namespace=namespace, metrics=metrics)
    yield made
    await made.aclear()


async def test_a_set_value_reads_back_exactly_and_a_missing_key_is_absent(
    cache: RedisNodeCache, redis: Redis, namespace: str, metrics: RunnerMetrics
) -> None:
    """aset then aget returns the stored writes exactly (tuples as lists, as LangGraph's own
    caches give them) and nothing for a key never set; the lookups count 2 hits and 1 miss;
    the Redis key is ``<ns>:nodecache:<escaped namespace>:<key>`` holding ``msgpack:...``."""
    await cache.aset({(NS, "k1"): (WRITES, 60), (("other",), "k2"): ([("x", 1)], None)})
    got = await cache.aget([(NS, "k1"), (("other",), "k2"), (NS, "absent")])
    assert got == {(NS, "k1"): WRITES, (("other",), "k2"): [["x", 1]]}
    assert (_lookups(metrics, "hit"), _lookups(metrics, "miss")) == (2, 1)
    key = f"{namespace}:nodecache:__pregel_ns_writes/tests.graphs%3Asq/sq:k1"
    assert cache.key(NS, "k1") == key
    raw = await redis.get(key)
    assert raw is not None and raw.startswith(b"msgpack:")
    assert await cache.aget([]) == {}


async def test_ttl_is_the_policys_seconds_and_none_or_longer_is_capped(
    redis: Redis, namespace: str
) -> None:
    """A ttl of 30 s gives the key a TTL of 30 s; ttl None and a ttl beyond the cap both get
    the cap (here 100 s; MAX_TTL_S by default, 7 days); a 1 s ttl is gone after 1.5 s."""
    assert MAX_TTL_S == 7 * 24 * 3600
    cache = RedisNodeCache(redis, namespace=namespace, max_ttl_s=100)
    try:
        await cache.aset({(NS, "a"): (WRITES, 30), (NS, "none"): (WRITES, None),
                          (NS, "long"): (WRITES, 10**9), (NS, "short"): (WRITES, 1)})
        ttls = [await redis.ttl(cache.key(NS, k)) for k in ("a", "none", "long")]
        assert ttls == [30, 100, 100]
        await asyncio.sleep(1.5)
        assert await cache.aget([(NS, "a"), (NS, "short")]) == {(NS, "a"): WRITES}
    finally:
        await cache.aclear()


async def test_clear_deletes_exactly_the_namespaces_named(
    cache: RedisNodeCache, redis: Redis, namespace: str
) -> None:
    """aclear([("a",)]) deletes the keys of namespace ("a",) only, not ("a", "b") nor ("a:b",)
    nor ("a*",); aclear() deletes every key of this cache and none of another prefix."""
    spaces = [("a",), ("a", "b"), ("a:b",), ("a*",)]
    await cache.aset({(ns, "k"): (WRITES, 60) for ns in spaces})
    neighbour = RedisNodeCache(redis, namespace=f"{namespace}x")
    await neighbour.aset({(("a",), "k"): (WRITES, 60)})
    try:
        await cache.aclear([("a",)])
        left = await cache.aget([(ns, "k") for ns in spaces])
        assert sorted(left) == sorted((ns, "k") for ns in spaces[1:])
        await cache.aclear()
        assert await cache.aget([(ns, "k") for ns in spaces]) == {}
        assert await neighbour.aget([(("a",), "k")]) == {(("a",), "k"): WRITES}
    finally:
        await neighbour.aclear()


async def test_a_pickled_value_in_redis_is_a_miss_never_unpickled(
    cache: RedisNodeCache, redis: Redis, metrics: RunnerMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    """The serializer's pickle fallback is off: an entry of encoding ``pickle`` (as someone with
    Redis access could plant) is not loaded; the lookup is a miss counted as error, the log
    names LangGraph's refusal, and the node's next write replaces the entry."""
    assert cache.serde.pickle_fallback is False  # type: ignore[attr-defined]
    await redis.set(cache.key(NS, "planted"), b"pickle:cos\nsystem\n(S'true'\ntR.", ex=60)
    assert await cache.aget([(NS, "planted")]) == {}
    assert (_lookups(metrics, "error"), _lookups(metrics, "miss")) == (1, 0)
    assert "Unknown serialization type: pickle" in caplog.text
    await cache.aset({(NS, "planted"): (WRITES, 60)})
    assert await cache.aget([(NS, "planted")]) == {(NS, "planted"): WRITES}


async def test_sync_calls_say_the_cache_is_async_only(cache: RedisNodeCache) -> None:
    """get, set and clear raise NotImplementedError naming ainvoke/astream."""
    for call in (lambda: cache.get([(NS, "k")]), lambda: cache.set({(NS, "k"): (WRITES, 1)}),
                 lambda: cache.clear()):
        with pytest.raises(NotImplementedError, match="ainvoke/astream"):
            call()


async def test_redis_down_is_a_miss_and_a_skipped_write(
    namespace: str, metrics: RunnerMetrics
) -> None:
    """With Redis unreachable, aget returns {} (2 lookups counted as error) and aset returns
    without raising: the node runs as it would uncached."""
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    cache = RedisNodeCache(down, namespace=namespace, metrics=metrics)
    try:
        assert await cache.aget([(NS, "a"), (NS, "b")]) == {}
        await cache.aset({(NS, "a"): (WRITES, 60)})
        assert _lookups(metrics, "error") == 2
    finally:
        await down.aclose()


async def test_a_set_of_several_writes_and_a_lookup_take_one_round_trip_each(
    redis: Redis, namespace: str
) -> None:
    """Through the runner's RedisBatcher: aset of 3 writes is 1 pipeline of 3 commands, and
    aget of the 3 keys is 1 more pipeline of 1 command (MGET)."""
    batcher = RedisBatcher(redis)
    cache = RedisNodeCache(redis, namespace=namespace, batcher=batcher)
    try:
        await cache.aset({(NS, k): (WRITES, 60) for k in ("a", "b", "c")})
        assert (batcher.round_trips, batcher.calls) == (1, 3)
        assert len(await cache.aget([(NS, k) for k in ("a", "b", "c")])) == 3
        assert (batcher.round_trips, batcher.calls) == (2, 4)
    finally:
        await cache.aclear()
