"""Fidelity: a node's ``runtime.store`` (and an injected ``store: BaseStore``) behaves through
graphwire as it does with LangGraph's ``InMemoryStore``, and is shared by every worker.

The graph runs directly (``InMemoryStore`` + ``InMemorySaver``) and through real runners
(broker, Redis, PostgreSQL, graphwire's store in the test's schema); the outputs must match.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from typing_extensions import TypedDict

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.settings import Settings
from graphwire.topics.admin import ensure_topics
from graphwire.topics.specs import TopicNames
from tests.helpers import runner_for
from tests.kafka_helpers import Collector, encode, produce, request

pytestmark = pytest.mark.integration


class Memo(TypedDict, total=False):
    user: str
    fact: str
    facts: list[str]
    visits: int


async def remember(state: Memo, runtime: Runtime) -> dict[str, Any]:
    """Store the turn's fact under the user (any thread), then read back all of theirs."""
    assert runtime.store is not None
    namespace = ("memories", state["user"])
    if state.get("fact"):
        await runtime.store.aput(namespace, state["fact"].replace(" ", "-"),
                                 {"fact": state["fact"]})
    found = await runtime.store.asearch(namespace, limit=50)
    return {"facts": sorted(item.value["fact"] for item in found)}


def count_visit(state: Memo, *, store: BaseStore) -> dict[str, Any]:
    """A sync node (LangGraph runs it in a thread) with the store injected: count the user's
    visits through the sync API."""
    item = store.get(("visits", state["user"]), "count")
    visits = (item.value["n"] if item else 0) + 1
    store.put(("visits", state["user"]), "count", {"n": visits})
    return {"visits": visits}


def memory_graph(checkpointer: Any = None, store: Any = None) -> Any:
    builder = StateGraph(Memo)
    builder.add_node("remember", remember)
    builder.add_node("count_visit", count_visit)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "count_visit")
    builder.add_edge("count_visit", END)
    return builder.compile(checkpointer=checkpointer, store=store)


TURNS = [  # (thread, input): every turn on its own thread; the store carries what they share
    ("t1", {"user": "alice", "fact": "likes tea"}),
    ("t2", {"user": "alice", "fact": "lives in Oslo"}),
    ("t3", {"user": "bob", "fact": "plays chess"}),
    ("t4", {"user": "alice"}),
]


async def test_a_node_using_the_store_gives_what_it_gives_with_langgraphs_in_memory_store(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Four turns on four threads (alice, alice, bob, alice) give, directly with InMemoryStore
    and through a runner with graphwire's store, the same outputs: alice's facts accumulate
    across threads ([tea], [Oslo, tea], bob apart, then [Oslo, tea] again) and the sync node's
    visit counter reads 1, 2, 1, 3. The worker counted 7 puts, 4 searches and 4 gets in
    graphwire_store_operations_total."""
    graph = memory_graph(InMemorySaver(), InMemoryStore())
    direct = [await graph.ainvoke(state, {"configurable": {"thread_id": thread}})
              for thread, state in TURNS]
    assert [(d["facts"], d["visits"]) for d in direct] == [
        (["likes tea"], 1), (["likes tea", "lives in Oslo"], 2), (["plays chess"], 1),
        (["likes tea", "lives in Oslo"], 3),
    ]

    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("memory", memory_graph())
    through = []
    async with runner_for(settings, registry) as runner, \
            Collector(bootstrap, topics.results) as out:
        for i, (thread, state) in enumerate(TURNS):  # one at a time: each reads the last
            await produce(bootstrap, topics.requests, [
                (thread.encode(), encode(request(f"r{i}", "memory", input=state,
                                                 thread_id=thread))),
            ])
            await out.wait_count(topics.results, i + 1, timeout=60)
        through = [r["output"] if r["status"] == "success" else r["error"]
                   for r in out.values(topics.results)]
    assert through == direct
    counted = {kind: runner.metrics.registry.get_sample_value(
        "graphwire_store_operations_total", {"kind": kind}) for kind in ("put", "search", "get")}
    assert counted == {"put": 7.0, "search": 4.0, "get": 4.0}


async def test_what_a_run_on_one_worker_stored_a_run_on_another_worker_reads(
    bootstrap: str, topics: TopicNames, settings: Settings, prefix: str
) -> None:
    """Two workers on one database (each consuming its own requests topic, so which one runs a
    request is known): a run on worker A stores alice's fact, then a run on worker B, another
    process's store object, reads it back: facts == ["likes tea"], visits == 2, and the two
    run_started events name two different workers."""
    other = TopicNames(f"{prefix}-b")
    await ensure_topics(bootstrap, other.specs(1))
    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("memory", memory_graph())
    user = f"alice-{uuid.uuid4().hex[:8]}"
    async with (
        runner_for(settings, registry, worker_id="worker-a"),
        runner_for(settings, registry, worker_id="worker-b", topic_prefix=other.prefix,
                   group_id=f"{other.prefix}-runners"),
        Collector(bootstrap, topics.results, topics.events, other.results, other.events) as out,
    ):
        await produce(bootstrap, topics.requests, [(b"a", encode(request(
            "on-a", "memory", input={"user": user, "fact": "likes tea"}, thread_id="a")))])
        await out.wait_count(topics.results, 1, timeout=60)
        await produce(bootstrap, other.requests, [(b"b", encode(request(
            "on-b", "memory", input={"user": user}, thread_id="b")))])
        await out.wait_count(other.results, 1, timeout=60)
    first, second = out.values(topics.results)[0], out.values(other.results)[0]
    assert (first["status"], first["output"]["facts"], first["output"]["visits"]) == (
        "success", ["likes tea"], 1)
    assert (second["status"], second["output"]["facts"], second["output"]["visits"]) == (
        "success", ["likes tea"], 2)
    workers = [e["data"]["worker"] for t in (topics.events, other.events)
               for e in out.values(t) if e["type"] == "run_started"]
    assert workers == ["worker-a", "worker-b"]
