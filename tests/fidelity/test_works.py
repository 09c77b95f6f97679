"""Fidelity: LangGraph features that already work through graphwire stay working.

Each test builds one small graph, runs the same turns directly (``astream``, ``InMemorySaver``)
and through the module's runner (broker, Redis, PostgreSQL), and compares per turn the status,
the pending interrupts, the final state and the events (``tests.fidelity.harness``).
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, Literal

import pytest
from langchain_core.tools import tool
from langgraph.channels import DeltaChannel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Command, Overwrite, Send, interrupt
from typing_extensions import TypedDict

from tests.fidelity.harness import (
    Turn,
    Worker,
    differential,
    direct,
    normalise,
    resume_each,
    through_worker,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


class Fan(TypedDict):
    topics: list[str]
    results: Annotated[list[str], operator.add]


def _fan_out(state: Fan) -> list[Send]:
    return [Send("shout", {"topic": t}) for t in state["topics"]]


class Topic(TypedDict):
    topic: str


def shout(state: Topic) -> dict[str, Any]:
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
    final = {"topics": ["a", "b", "c"], "results": ["A", "B", "C", "3 done"]}
    assert want == [{
        "status": "success", "error": None, "interrupts": [], "state": final, "output": final,
        "events": [
            [["values", None, [], {"topics": ["a", "b", "c"], "results": []}]],
            [["node", "shout", [], {"results": ["A"]}], ["node", "shout", [], {"results": ["B"]}],
             ["node", "shout", [], {"results": ["C"]}],
             ["values", None, [], {"topics": ["a", "b", "c"], "results": ["A", "B", "C"]}]],
            [["node", "summarise", [], {"results": ["3 done"]}], ["values", None, [], final]],
        ],
    }]
    assert got == want


# -- Command(update=..., goto=...) from a node, and from a request --------------------------


class Route(TypedDict):
    n: int
    path: Annotated[list[str], operator.add]


def decide(state: Route) -> Command[Literal["big", "small"]]:
    return Command(update={"path": ["decide"]}, goto="big" if state["n"] > 5 else "small")


def big(state: Route) -> dict[str, Any]:
    return {"path": ["big"]}


def small(state: Route) -> dict[str, Any]:
    return {"path": ["small"]}


def route_graph() -> Any:
    builder = StateGraph(Route)
    builder.add_node("decide", decide)
    builder.add_node("big", big)
    builder.add_node("small", small)
    builder.add_edge(START, "decide")
    builder.add_edge("big", END)
    builder.add_edge("small", END)
    return builder.compile()


async def test_command_update_and_goto_from_a_node_and_a_request(
    fidelity_worker: Worker,
) -> None:
    """A node returning ``Command(update=..., goto="big")`` goes to ``big``; a second turn's
    ``command: {update: {n: 1}, goto: "small"}`` runs ``small`` on the finished thread. Both
    ways: two ``success`` turns, path decide, big then small, n 1, the same events."""
    want, got = await differential(
        fidelity_worker, "route", route_graph,
        [Turn(input={"n": 7, "path": []}), Turn.command(update={"n": 1}, goto="small")],
    )
    assert [(t["status"], t["state"], t["events"]) for t in want] == [
        ("success", {"n": 7, "path": ["decide", "big"]},
         [[["node", "decide", [], {"path": ["decide"]}]],
          [["node", "big", [], {"path": ["big"]}]]]),
        ("success", {"n": 1, "path": ["decide", "big", "small"]},
         [[["node", "small", [], {"path": ["small"]}]]]),
    ]
    assert got == want


def inner(state: Route) -> Command[Any]:
    return Command(graph=Command.PARENT, goto="after", update={"path": ["inner"]})


def after(state: Route) -> dict[str, Any]:
    return {"path": [f"after:{len(state['path'])}"]}


def parent_graph() -> Any:
    sub = StateGraph(Route)
    sub.add_node("inner", inner)
    sub.add_edge(START, "inner")
    builder = StateGraph(Route)
    builder.add_node("sub", sub.compile(), destinations=("after",))
    builder.add_node("after", after)
    builder.add_edge(START, "sub")
    builder.add_edge("after", END)
    return builder.compile()


async def test_command_to_the_parent_graph_from_a_subgraph_node(fidelity_worker: Worker) -> None:
    """A subgraph node returning ``Command(graph=Command.PARENT, goto="after", update=...)``
    updates the parent's state and sends the parent to ``after``: both ways ``success`` with
    path inner, after:1, and the same events."""
    want, got = await differential(
        fidelity_worker, "parent", parent_graph, [Turn(input={"n": 0, "path": []})],
    )
    assert want[0]["status"] == "success"
    assert want[0]["state"] == {"n": 0, "path": ["inner", "after:1"]}
    assert want[0]["events"][-1] == [["node", "after", [], {"path": ["after:1"]}]]
    assert got == want


# -- interrupts: inside a subgraph; several in one step, resumed by id ------------------------


class Asking(TypedDict):
    n: int
    path: Annotated[list[str], operator.add]
    answer: str


class AskState(TypedDict):
    n: int
    answer: str


def ask(state: AskState) -> dict[str, Any]:
    return {"answer": interrupt({"question": f"go on at {state['n']}?"})}


def prepare(state: Route) -> dict[str, Any]:
    return {"path": ["prepare"], "n": state["n"] + 1}


def finish(state: Asking) -> dict[str, Any]:
    return {"path": [f"finish:{state.get('answer')}"]}


def asking_parent_graph() -> Any:
    sub = StateGraph(AskState)
    sub.add_node("ask", ask)
    sub.add_edge(START, "ask")
    builder = StateGraph(Asking)
    builder.add_node("prepare", prepare)
    builder.add_node("sub", sub.compile())
    builder.add_node("finish", finish)
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "sub")
    builder.add_edge("sub", "finish")
    return builder.compile()


async def test_an_interrupt_inside_a_subgraph_is_resumed(fidelity_worker: Worker) -> None:
    """An ``interrupt()`` in a subgraph's node stops the parent run (``interrupted``, one
    interrupt asking "go on at 1?", one ``interrupt`` event); ``resume: "yes"`` finishes it:
    answer yes, path prepare, finish:yes; the resume's events are the state it resumes from,
    the subgraph node's output with the state after it, then finish. The same both ways."""
    want, got = await differential(
        fidelity_worker, "subask", asking_parent_graph,
        [Turn(input={"n": 0, "path": []}), Turn.command(resume="yes")],
        stream=["updates", "values"],
    )
    assert [(t["status"], t["interrupts"]) for t in want] == [
        ("interrupted", [{"id": "#0", "value": {"question": "go on at 1?"}}]), ("success", []),
    ]
    assert want[1]["state"] == {"n": 1, "path": ["prepare", "finish:yes"], "answer": "yes"}
    assert want[1]["events"] == [
        [["values", None, [], {"n": 1, "path": ["prepare"]}]],
        [["node", "sub", [], {"n": 1, "answer": "yes"}],
         ["values", None, [], {"n": 1, "path": ["prepare"], "answer": "yes"}]],
        [["node", "finish", [], {"path": ["finish:yes"]}],
         ["values", None, [], want[1]["state"]]],
    ]
    assert got == want


class Pair(TypedDict):
    answers: Annotated[list[str], operator.add]


def left(state: Pair) -> dict[str, Any]:
    return {"answers": [f"left:{interrupt('left?')}"]}


def right(state: Pair) -> dict[str, Any]:
    return {"answers": [f"right:{interrupt('right?')}"]}


def join(state: Pair) -> dict[str, Any]:
    return {"answers": [f"joined {len(state['answers'])}"]}


def pair_graph() -> Any:
    builder = StateGraph(Pair)
    builder.add_node("left", left)
    builder.add_node("right", right)
    builder.add_node("join", join)
    builder.add_edge(START, "left")
    builder.add_edge(START, "right")
    builder.add_edge(["left", "right"], "join")
    return builder.compile()


async def test_several_interrupts_in_one_step_resumed_by_id(fidelity_worker: Worker) -> None:
    """Two parallel nodes each call ``interrupt()``: the run ends ``interrupted`` with two
    interrupts (left?, right?) and two ``interrupt`` events in one step; one resume mapping
    each interrupt id (each side's own) to an answer finishes both nodes and the join: answers
    left:L, right:R, joined 2. The same both ways."""
    want, got = await differential(
        fidelity_worker, "pair", pair_graph,
        [Turn(input={"answers": []}), Turn.command(resume=resume_each(lambda v: v[0].upper()))],
    )
    assert [(t["status"], t["interrupts"]) for t in want] == [
        ("interrupted", [{"id": "#0", "value": "left?"}, {"id": "#1", "value": "right?"}]),
        ("success", []),
    ]
    assert want[0]["events"] == [[["interrupt", None, [], {"id": "#0", "value": "left?"}],
                                  ["interrupt", None, [], {"id": "#1", "value": "right?"}]]]
    assert sorted(want[1]["state"]["answers"][:2]) == ["left:L", "right:R"]
    assert want[1]["state"]["answers"][2] == "joined 2"
    assert got == want


# -- a prebuilt ToolNode whose tool interrupts -----------------------------------------------


@tool
def approve(amount: int) -> str:
    """Ask a person to approve a payment of ``amount``."""
    decision = interrupt({"approve": amount})
    return f"approved={decision}"


def tool_graph() -> Any:
    builder = StateGraph(MessagesState)
    builder.add_node("tools", ToolNode([approve]))
    builder.add_edge(START, "tools")
    return builder.compile()


AI_CALL = {"type": "ai", "content": "", "id": "ai-1", "tool_calls": [
    {"name": "approve", "args": {"amount": 5}, "id": "call-1", "type": "tool_call"}]}


async def test_a_tool_node_whose_tool_interrupts(fidelity_worker: Worker) -> None:
    """A ``ToolNode`` runs a tool call (from an AI message in the input) whose tool calls
    ``interrupt({"approve": 5})``: ``interrupted`` with that value; ``resume: true`` gives a
    tool message "approved=True" for call-1. Status, interrupts, state (messages as LangChain
    serializes them, random ids normalised) and events are the same both ways."""
    want, got = await differential(
        fidelity_worker, "tools", tool_graph,
        [Turn(input={"messages": [AI_CALL]}), Turn.command(resume=True)],
    )
    assert [(t["status"], t["interrupts"]) for t in want] == [
        ("interrupted", [{"id": "#0", "value": {"approve": 5}}]), ("success", []),
    ]
    reply = want[1]["state"]["messages"][1]
    assert (reply["type"], reply["content"], reply["tool_call_id"]) == (
        "tool", "approved=True", "call-1")
    assert got == want


# -- the functional API with object input ----------------------------------------------------


def functional() -> Any:
    @task
    async def double(x: int) -> int:
        return x * 2

    @entrypoint(checkpointer=InMemorySaver())
    async def workflow(inputs: dict[str, Any]) -> dict[str, Any]:
        once = await double(inputs["n"])
        twice = await double(once)
        approved = interrupt({"result": twice})
        return {"result": twice, "approved": approved}

    return workflow


async def test_the_functional_api_with_object_input(fidelity_worker: Worker) -> None:
    """An ``@entrypoint(checkpointer=...)`` taking ``{"n": 3}`` runs two ``@task`` calls (6,
    12) and interrupts with ``{"result": 12}``; ``resume: "ok"`` returns
    ``{"result": 12, "approved": "ok"}`` without running the tasks again. The same status,
    state and events both ways: one ``node`` event per task and the interrupt (the tasks run
    inside the entrypoint's step, so the harness compares them as one unordered step), then
    the entrypoint's own ``node`` event."""
    want, got = await differential(
        fidelity_worker, "functional", functional,
        [Turn(input={"n": 3}), Turn.command(resume="ok")],
    )
    assert [(t["status"], t["output"]) for t in want] == [
        ("interrupted", None), ("success", {"result": 12, "approved": "ok"}),
    ]
    assert [t["events"] for t in want] == [
        [[["interrupt", None, [], {"id": "#0", "value": {"result": 12}}],
          ["node", "double", [], 12], ["node", "double", [], 6]]],
        [[["node", "workflow", [], {"result": 12, "approved": "ok"}]]],
    ]
    assert got == want


# -- Overwrite on a reducer channel ----------------------------------------------------------


class Acc(TypedDict):
    items: Annotated[list[str], operator.add]


def add_x(state: Acc) -> dict[str, Any]:
    return {"items": ["x"]}


def reset(state: Acc) -> dict[str, Any]:
    return {"items": Overwrite(["only"])}


def add_y(state: Acc) -> dict[str, Any]:
    return {"items": ["y"]}


def overwrite_graph() -> Any:
    builder = StateGraph(Acc)
    builder.add_sequence([add_x, reset, add_y])
    builder.add_edge(START, "add_x")
    return builder.compile()


async def test_overwrite_bypasses_the_reducer(fidelity_worker: Worker) -> None:
    """A node returning ``Overwrite(["only"])`` replaces the ``operator.add`` channel
    (a, x becomes only, then y); its ``node`` event carries the Overwrite as JSON
    (``{"value": ["only"], "type": "__overwrite__"}``); a second turn's ``command.update`` with
    ``{"__overwrite__": ["fresh"]}`` replaces it again. The same both ways."""
    want, got = await differential(
        fidelity_worker, "overwrite", overwrite_graph,
        [Turn(input={"items": ["a"]}),
         Turn.command(update={"items": {"__overwrite__": ["fresh"]}})],
    )
    assert [t["state"] for t in want] == [{"items": ["only", "y"]}, {"items": ["fresh"]}]
    assert want[0]["events"][1] == [
        ["node", "reset", [], {"items": {"value": ["only"], "type": "__overwrite__"}}]]
    assert got == want


# -- durability modes ------------------------------------------------------------------------


def checked(state: Route) -> dict[str, Any]:
    return {"path": [f"checked:{interrupt('check?')}"], "n": state["n"] * 10}


def durable_graph() -> Any:
    builder = StateGraph(Route)
    builder.add_sequence([prepare, checked, finish])
    builder.add_edge(START, "prepare")
    return builder.compile()


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
async def test_durability_modes_give_the_same_run(
    fidelity_worker: Worker, durability: str
) -> None:
    """With ``durability`` sync, async and exit, a run that interrupts half way and is resumed
    gives the same turns both ways, and the same as each other: ``interrupted`` at check?,
    then ``success`` with n 10 and path prepare, checked:ok, finish:None."""
    want, got = await differential(
        fidelity_worker, f"durable-{durability}", durable_graph,
        [Turn(input={"n": 0, "path": []}), Turn.command(resume="ok")],
        stream=["updates", "values"], durability=durability,
    )
    assert [(t["status"], t["state"]) for t in want] == [
        ("interrupted", {"n": 1, "path": ["prepare"]}),
        ("success", {"n": 10, "path": ["prepare", "checked:ok", "finish:None"]}),
    ]
    assert got == want


# -- max_concurrency -------------------------------------------------------------------------

_running = {"now": 0, "peak": 0}


async def slow_shout(state: Topic) -> dict[str, Any]:
    _running["now"] += 1
    _running["peak"] = max(_running["peak"], _running["now"])
    await asyncio.sleep(0.05)
    _running["now"] -= 1
    return {"results": [state["topic"].upper()]}


def slow_fan_graph() -> Any:
    builder = StateGraph(Fan)
    builder.add_node("shout", slow_shout)
    builder.add_conditional_edges(START, _fan_out, ["shout"])
    return builder.compile()


async def test_max_concurrency_bounds_parallel_nodes(fidelity_worker: Worker) -> None:
    """``config.max_concurrency: 2`` on a fan-out of six 50 ms nodes: at most two run at once
    (the peak is exactly 2) both ways, and the status, state (A..F) and events are the
    same."""
    peaks = []
    fidelity_worker.registry.register("slowfan", slow_fan_graph())
    turns = [Turn(input={"topics": list("abcdef"), "results": []})]
    config = {"max_concurrency": 2}
    _running["peak"] = 0
    want_raw = await direct(slow_fan_graph(), turns, config=config)
    peaks.append(_running["peak"])
    _running["peak"] = 0
    got_raw = await through_worker(fidelity_worker, "slowfan", turns, config=config)
    peaks.append(_running["peak"])
    want, got = normalise(want_raw), normalise(got_raw, like=want_raw)
    assert peaks == [2, 2]
    assert want[0]["state"] == {"topics": list("abcdef"), "results": list("ABCDEF")}
    assert got == want


# -- DeltaChannel on PostgreSQL --------------------------------------------------------------


def extend(state: list[str], writes: list[list[str]]) -> list[str]:
    return state + [item for write in writes for item in write]


class Log(TypedDict):
    n: int
    log: Annotated[list[str], DeltaChannel(extend, snapshot_frequency=3)]


def tick(state: Log) -> dict[str, Any]:
    return {"n": state["n"] + 1, "log": [f"tick{state['n']}"]}


def _more(state: Log) -> str:
    return "tick" if state["n"] % 4 else END


def delta_graph() -> Any:
    builder = StateGraph(Log)
    builder.add_node("tick", tick)
    builder.add_edge(START, "tick")
    builder.add_conditional_edges("tick", _more, ["tick", END])
    return builder.compile()


async def test_delta_channel_state_is_rebuilt_from_postgres(fidelity_worker: Worker) -> None:
    """A ``DeltaChannel`` list (snapshot every 3 updates) grows by one entry per step over two
    turns of four steps each; the second turn starts from the state rebuilt from the stored
    writes. Both ways: tick0..tick7, the same per-turn state (as LangGraph's own
    ``AsyncPostgresSaver`` reads graphwire's checkpoints) and events."""
    want, got = await differential(
        fidelity_worker, "delta", delta_graph,
        [Turn(input={"n": 0, "log": []}), Turn(input={"n": 4})],
    )
    assert [t["state"] for t in want] == [
        {"n": 4, "log": [f"tick{i}" for i in range(4)]},
        {"n": 8, "log": [f"tick{i}" for i in range(8)]},
    ]
    assert got == want
