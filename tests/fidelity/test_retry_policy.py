"""Fidelity: a node's own ``RetryPolicy`` is the retry for its errors; the runner adds none.

Each graph runs directly (``ainvoke``) and through a real runner (broker, Redis, PostgreSQL,
``max_attempts`` 3); the status and the number of calls of the failing node must match. A node
without a policy still gets the runner's run-level retries.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
from langgraph.graph import START, StateGraph
from langgraph.types import RetryPolicy
from typing_extensions import TypedDict

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.helpers import runner_for
from tests.kafka_helpers import Collector, encode, produce, request

pytestmark = pytest.mark.integration

CALLS: collections.Counter[str] = collections.Counter()
"""Calls of the nodes below, by the run's tag (its input)."""

QUICK = {"initial_interval": 0.01, "jitter": False}


class Tagged(TypedDict, total=False):
    tag: str
    done: bool


async def keeps_failing(state: Tagged) -> dict[str, Any]:
    CALLS[state["tag"]] += 1
    raise ConnectionError(f"service down ({state['tag']})")


async def fails_once(state: Tagged) -> dict[str, Any]:
    CALLS[state["tag"]] += 1
    if CALLS[state["tag"]] == 1:
        raise ConnectionError("first call fails")
    return {"done": True}


def one_node(fn: Any, policy: RetryPolicy | None = None, *, default: bool = False) -> Any:
    """A one-node graph: ``policy`` on the node, or as the builder's node default."""
    builder = StateGraph(Tagged)
    if default:
        builder.set_node_defaults(retry_policy=policy)
    builder.add_node("work", fn, retry_policy=None if default else policy)
    builder.add_edge(START, "work")
    return builder.compile()


def nested(policy: RetryPolicy) -> Any:
    """A subgraph node ``child`` (no policy of its own) whose inner node has ``policy``."""
    inner = StateGraph(Tagged)
    inner.add_node("inner", keeps_failing, retry_policy=policy)
    inner.add_edge(START, "inner")
    outer = StateGraph(Tagged)
    outer.add_node("child", inner.compile())
    outer.add_edge(START, "child")
    return outer.compile()


GRAPHS = {
    "policy3": one_node(keeps_failing, RetryPolicy(max_attempts=3, **QUICK)),
    "default2": one_node(keeps_failing, RetryPolicy(max_attempts=2, **QUICK), default=True),
    "nested2": nested(RetryPolicy(max_attempts=2, **QUICK)),
    "plain": one_node(keeps_failing),
    "flaky": one_node(fails_once, RetryPolicy(max_attempts=3, **QUICK)),
}


async def _direct(graph: Any, tag: str) -> str:
    """The status of ``graph`` run directly, as a user would."""
    try:
        await graph.ainvoke({"tag": tag})
    except ConnectionError:
        return "error"
    return "success"


async def test_a_nodes_retry_policy_is_its_only_retry_and_other_failures_get_the_runners(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Calls and status, directly and through a runner with max_attempts 3: a node with
    RetryPolicy(max_attempts=3) that keeps failing, 3 and error both ways (not 9); a builder
    default RetryPolicy(max_attempts=2), 2 and error; a subgraph's node with max_attempts=2,
    2 and error; a node without a policy, 1 directly and 3 through the runner (its run-level
    retries), error; a node with a policy that succeeds on its 2nd call, 2 and success."""
    CALLS.clear()
    direct = {name: await _direct(graph, f"direct-{name}") for name, graph in GRAPHS.items()}
    assert direct == {"policy3": "error", "default2": "error", "nested2": "error",
                      "plain": "error", "flaky": "success"}
    assert CALLS == {"direct-policy3": 3, "direct-default2": 2, "direct-nested2": 2,
                     "direct-plain": 1, "direct-flaky": 2}

    CALLS.clear()
    registry = GraphRegistry.from_sources(builtins=False)
    for name, graph in GRAPHS.items():
        registry.register(name, graph)
    async with runner_for(settings, registry, max_attempts=3, retry_backoff_s=0.01):
        await produce(bootstrap, topics.requests, [
            (name.encode(), encode(request(name, name, input={"tag": name}))) for name in GRAPHS
        ])
        async with Collector(bootstrap, topics.results) as out:
            await out.wait_count(topics.results, len(GRAPHS), timeout=60)
    through = {r["request_id"]: (r["status"], r["attempts"]) for r in out.values(topics.results)}
    assert through == {"policy3": ("error", 1), "default2": ("error", 1), "nested2": ("error", 1),
                       "plain": ("error", 3), "flaky": ("success", 1)}
    assert CALLS == {"policy3": 3, "default2": 2, "nested2": 2, "plain": 3, "flaky": 2}
