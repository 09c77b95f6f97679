"""Fidelity: LangGraph features that already work through graphwire stay working.

Each test builds one small graph, runs the same turns directly (``astream``, ``InMemorySaver``)
and through the module's runner (broker, Redis, PostgreSQL), and compares per turn the status,
the pending interrupts, the final state and the events (``tests.fidelity.harness``).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any

import pytest
from langgraph.graph import START, StateGraph
from langgraph.types import Send
from typing_extensions import TypedDict

from tests.fidelity.harness import Turn, Worker, differential

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


class Fan(TypedDict):
    topics: list[str]
    results: Annotated[list[str], operator.add]


def _fan_out(state: Fan) -> list[Send]:
    return [Send("shout", {"topic": t}) for t in state["topics"]]


def shout(state: dict[str, Any]) -> dict[str, Any]:
    return {"results": [state["topic"].upper()]}


def summarise(state: Fan) -> dict[str, Any]:
    return {"results": [f"{len(state['results'])} done"]}


def fan_graph() -> Any:
    builder = StateGraph(Fan)
    builder.add_node("shout", shout)
    builder.add_node("summarise", summarise)
    builder.add_conditional_edges(START, _fan_out, ["shout"])
    builder.add_edge("shout", "summarise")
    return builder.compile()


async def test_send_fan_out_reduces_as_langgraph(fidelity_worker: Worker) -> None:
    """A ``Send`` fan-out over three topics, reduced with ``operator.add``, then a summary node:
    both ways ``success``, the state's results are A, B, C (in send order) and "3 done", and
    the events are three ``shout`` node events (any order within their step) then one
    ``summarise`` event and the ``values`` after each step."""
    want, got = await differential(
        fidelity_worker, "send", fan_graph,
        [Turn(input={"topics": ["a", "b", "c"], "results": []})], stream=["updates", "values"],
    )
    assert want[0]["status"] == "success"
    assert want[0]["state"] == {"topics": ["a", "b", "c"], "results": ["A", "B", "C", "3 done"]}
    assert got == want
