"""Fidelity: the recursion limit a graph runs with is the one ``graph.astream`` would use.

Each graph runs directly (``ainvoke``/``astream``, ``InMemorySaver``) and through a real runner
(broker, Redis, PostgreSQL); the status and the final state must match.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphRecursionError
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.helpers import runner_for
from tests.kafka_helpers import Collector, encode, produce, request

pytestmark = pytest.mark.integration


class Loop(TypedDict):
    n: int
    target: int
    seen: Annotated[list[int], operator.add]


async def step(state: Loop) -> dict[str, Any]:
    return {"n": state["n"] + 1, "seen": [state["n"]]}


def _again(state: Loop) -> str:
    return "step" if state["n"] < state["target"] else END


def loop_graph(checkpointer: Any = None) -> Any:
    builder = StateGraph(Loop)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", _again, ["step", END])
    return builder.compile(checkpointer=checkpointer)


async def _direct(
    graph: Any, thread: str, state: dict[str, Any], **config: Any
) -> tuple[str, Any]:
    """(status, final state) of ``graph`` run directly on a thread of its own, as a user would."""
    cfg = {"configurable": {"thread_id": thread}, **config}
    try:
        return "success", await graph.ainvoke(state, cfg)
    except GraphRecursionError:
        return "error", None


async def test_a_30_step_loop_and_a_graphs_own_limit_run_as_langgraph_runs_them(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """A 30-step loop finishes (LangGraph's default limit, not 25), both directly and through
    graphwire, with n == 30 and seen == [0..29]; the same graph bound to
    ``with_config(recursion_limit=10)`` stops with GraphRecursionError both ways; a request's
    own ``config.recursion_limit`` (40) wins over the graph's 10, and 5 stops the 30-step
    loop."""
    start = {"n": 0, "target": 30, "seen": []}
    loop = loop_graph(InMemorySaver())
    bound = loop_graph(InMemorySaver()).with_config(recursion_limit=10)
    direct = {
        "default": await _direct(loop, "t1", start),
        "graph-10": await _direct(bound, "t2", start),
        "request-40": await _direct(bound, "t3", start, recursion_limit=40),
        "request-5": await _direct(loop, "t4", start, recursion_limit=5),
    }
    full = {"n": 30, "target": 30, "seen": list(range(30))}
    assert direct == {"default": ("success", full), "graph-10": ("error", None),
                      "request-40": ("success", full), "request-5": ("error", None)}

    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("loop", loop_graph())
    registry.register("loop10", loop_graph().with_config(recursion_limit=10))
    async with runner_for(settings, registry):
        await produce(bootstrap, topics.requests, [
            (b"default", encode(request("default", "loop", input=start))),
            (b"graph-10", encode(request("graph-10", "loop10", input=start))),
            (b"request-40", encode(request("request-40", "loop10", input=start,
                                           config={"recursion_limit": 40}))),
            (b"request-5", encode(request("request-5", "loop", input=start,
                                          config={"recursion_limit": 5}))),
        ])
        async with Collector(bootstrap, topics.results) as out:
            await out.wait_count(topics.results, 4, timeout=60)
    through = {r["request_id"]: (r["status"], r["output"] if r["status"] == "success" else
                                 r["error"]["type"])
               for r in out.values(topics.results)}
    assert through == {"default": ("success", full), "graph-10": ("error", "GraphRecursionError"),
                       "request-40": ("success", full),
                       "request-5": ("error", "GraphRecursionError")}
