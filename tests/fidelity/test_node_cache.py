"""Fidelity: a node with a ``CachePolicy`` is served from the cache on an identical second call.

Directly, the graph is compiled with LangGraph's ``InMemoryCache``; through graphwire it is
compiled without a cache and the runner attaches its Redis node cache, shared by every worker.
Both ways: the same final states, and the node function runs once for two identical calls.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
from langgraph.cache.memory import InMemoryCache
from langgraph.graph import START, StateGraph
from langgraph.types import CachePolicy
from redis.asyncio import Redis
from typing_extensions import TypedDict

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_REDIS_URL
from tests.helpers import runner_for
from tests.kafka_helpers import Collector, encode, produce, request

pytestmark = pytest.mark.integration

CALLS: collections.Counter[int] = collections.Counter()
"""Calls of the cached node, by input x."""


class Square(TypedDict, total=False):
    x: int
    y: int


async def square(state: Square) -> dict[str, Any]:
    CALLS[state["x"]] += 1
    return {"y": state["x"] ** 2}


def square_graph(cache: Any = None, node: str = "sq") -> Any:
    builder = StateGraph(Square)
    builder.add_node(node, square, cache_policy=CachePolicy(ttl=120))
    builder.add_edge(START, node)
    return builder.compile(cache=cache)


async def _run(bootstrap: str, topics: TopicNames, out: Collector, rid: str, graph: str,
               x: int) -> dict[str, Any]:
    """Produce one request and wait for its result (results so far + 1)."""
    before = len(out.values(topics.results))
    await produce(bootstrap, topics.requests, [(rid.encode(), encode(
        request(rid, graph, input={"x": x})))])
    await out.wait_count(topics.results, before + 1, timeout=60)
    result = out.values(topics.results)[before]
    assert result["request_id"] == rid
    return {"status": result["status"], "output": result["output"]}


async def test_a_cached_node_runs_once_for_two_identical_calls_directly_and_through_graphwire(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Two identical calls give {"x": 3, "y": 9} both times and call the node once, directly
    (InMemoryCache) and through a runner (its Redis node cache). A graph compiled with its own
    InMemoryCache keeps it: its node's write lands there, and Redis holds only the one entry of
    the graph that had none, under ``<topic prefix>:nodecache:``."""
    CALLS.clear()
    direct = square_graph(InMemoryCache())
    assert [await direct.ainvoke({"x": 3}), await direct.ainvoke({"x": 3})] == [
        {"x": 3, "y": 9}, {"x": 3, "y": 9}]
    assert CALLS == {3: 1}

    CALLS.clear()
    own = InMemoryCache[Any]()
    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("square", square_graph())
    registry.register("own", square_graph(own, node="sq_own"))
    async with runner_for(settings, registry), Collector(bootstrap, topics.results) as out:
        first = await _run(bootstrap, topics, out, "r1", "square", 3)
        second = await _run(bootstrap, topics, out, "r2", "square", 3)
        mine = await _run(bootstrap, topics, out, "r3", "own", 7)
    success = {"status": "success", "output": {"x": 3, "y": 9}}
    assert [first, second, mine] == [success, success,
                                     {"status": "success", "output": {"x": 7, "y": 49}}]
    assert CALLS == {3: 1, 7: 1}
    assert [ns[-1] for ns in own._cache] == ["sq_own"]
    redis = Redis.from_url(TEST_REDIS_URL)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{settings.topic_prefix}:nodecache:*")]
    finally:
        await redis.aclose()
    assert len(keys) == 1 and keys[0].decode().split(":")[-2].endswith("/sq")


async def test_a_write_cached_on_one_worker_is_read_on_another(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Worker w1 runs x=4 and stops; worker w2 then runs the identical request: both results
    are {"x": 4, "y": 16}, the node ran once (on w1), and the run_started events name w1 then
    w2."""
    CALLS.clear()
    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("square", square_graph())
    async with Collector(bootstrap, topics.results, topics.events) as out:
        async with runner_for(settings, registry, worker_id="w1"):
            first = await _run(bootstrap, topics, out, "on-w1", "square", 4)
        async with runner_for(settings, registry, worker_id="w2"):
            second = await _run(bootstrap, topics, out, "on-w2", "square", 4)
    assert first == second == {"status": "success", "output": {"x": 4, "y": 16}}
    assert CALLS == {4: 1}
    started = [(e["request_id"], e["data"]["worker"]) for e in out.values(topics.events)
               if e["type"] == "run_started"]
    assert started == [("on-w1", "w1"), ("on-w2", "w2")]


async def test_without_redis_the_graph_runs_uncached(
    bootstrap: str, topics: TopicNames, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """With GRAPHWIRE_DEDUP=false there is no shared cache: two identical calls both succeed,
    the node runs twice, and the worker says so once in its log."""
    CALLS.clear()
    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("square", square_graph())
    caplog.set_level("INFO", logger="graphwire.processors.runner.nodecache")
    async with runner_for(settings, registry, dedup=False), Collector(
            bootstrap, topics.results) as out:
        results = [await _run(bootstrap, topics, out, rid, "square", 5) for rid in ("a", "b")]
    assert results == [{"status": "success", "output": {"x": 5, "y": 25}}] * 2
    assert CALLS == {5: 2}
    told = [r.getMessage() for r in caplog.records if "no shared node cache" in r.getMessage()]
    assert len(told) == 1
