"""finished_steps rebuilds, from the checkpoints, the node and values events LangGraph streamed
for each step a run finished (LangGraph's in-memory saver: no I/O)."""

from __future__ import annotations

import operator
from typing import Annotated, Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.types import Command, Send, interrupt
from typing_extensions import TypedDict

from graphwire.graphs.replay import finished_steps


class State(TypedDict, total=False):
    done: Annotated[list[str], operator.add]
    n: int


def _step(name: str) -> Any:
    async def run(state: State) -> State:
        return {"done": [name]}

    return run


def _graph() -> Any:
    """a -> (b1 | b2) -> two Sends to ``sent`` -> cmd (a Command) -> last."""
    builder = StateGraph(State)
    builder.add_node("a", _step("a"))
    builder.add_node("b1", _step("b1"))
    builder.add_node("b2", _step("b2"))
    builder.add_node("sent", lambda s: {"done": [f"sent{s['n']}"]})
    builder.add_node("cmd", lambda s: Command(update={"n": 9}, goto="last"))
    builder.add_node("last", _step("last"))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b1")
    builder.add_edge("a", "b2")
    builder.add_conditional_edges("b1", lambda s: [Send("sent", {"n": i}) for i in range(2)])
    builder.add_edge("sent", "cmd")
    return builder.compile(checkpointer=InMemorySaver())


def _config(request_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": "t"}, "metadata": {"graphwire_request_id": request_id}}


async def _live(graph: Any, payload: Any, request_id: str, modes: list[str]) -> list[Any]:
    """The node/values events LangGraph streams for one run, as graphwire emits them."""
    out: list[Any] = []
    async for mode, chunk in graph.astream(payload, _config(request_id), stream_mode=modes):
        if mode == "updates":
            out += [("node", k, v) for k, v in chunk.items()
                    if k not in ("__metadata__", "__interrupt__")]
        else:
            out.append(("values", None, chunk))
    return out


async def test_a_finished_run_replays_exactly_what_langgraph_streamed() -> None:
    """Every step of a finished run: its node events (parallel tasks in task order, Sends, a
    Command's update) and the state after it, equal to the live stream but for the input's
    values event (no step) and the order parallel tasks finished in."""
    graph = _graph()
    live = await _live(graph, {"n": 0}, "r1", ["updates", "values"])
    replayed = await finished_steps(graph, _config("r1"), "r1", {"updates", "values"})
    assert live[0] == ("values", None, {"done": [], "n": 0})
    assert sorted(live[3:5], key=lambda e: e[1]) == [  # in the order they finished
        ("node", "b1", {"done": ["b1"]}), ("node", "b2", {"done": ["b2"]})]
    assert replayed == [
        ("node", "a", {"done": ["a"]}),
        ("values", None, {"done": ["a"], "n": 0}),
        ("node", "b1", {"done": ["b1"]}),
        ("node", "b2", {"done": ["b2"]}),
        ("values", None, {"done": ["a", "b1", "b2"], "n": 0}),
        ("node", "sent", {"done": ["sent0"]}),
        ("node", "sent", {"done": ["sent1"]}),
        ("values", None, {"done": ["a", "b1", "b2", "sent0", "sent1"], "n": 0}),
        ("node", "cmd", {"n": 9}),
        ("values", None, {"done": ["a", "b1", "b2", "sent0", "sent1"], "n": 9}),
        ("node", "last", {"done": ["last"]}),
        ("values", None, {"done": ["a", "b1", "b2", "sent0", "sent1", "last"], "n": 9}),
    ]
    assert live[1:3] + live[5:] == replayed[:2] + replayed[4:]  # all but the parallel pair
    assert await finished_steps(graph, _config("r1"), "r1", {"updates"}) == [
        e for e in replayed if e[0] == "node"]
    assert await finished_steps(graph, _config("r1"), "r1", {"custom", "messages"}) == []
    assert await finished_steps(graph, _config("r1"), "other", {"updates"}) == []


def _asking() -> Any:
    """a -> (ask, which interrupts | side) -> z."""

    def ask(state: State) -> State:
        return {"done": [f"ask:{interrupt('q?')}"]}

    builder = StateGraph(State)
    builder.add_node("a", _step("a"))
    builder.add_node("ask", ask)
    builder.add_node("side", _step("side"))
    builder.add_node("z", _step("z"))
    builder.add_edge(START, "a")
    builder.add_edge("a", "ask")
    builder.add_edge("a", "side")
    builder.add_edge("ask", "z")
    builder.add_edge("side", "z")
    return builder.compile(checkpointer=InMemorySaver())


async def test_an_interrupted_step_is_not_finished_and_its_resume_replays_from_there() -> None:
    """A run stopped at an interrupt replays only the steps before it (side's write waits on
    the unfinished step, which LangGraph re-emits itself on resume); the run that resumes it
    (another request) replays that step, from the checkpoint it continued, then the next."""
    graph = _asking()
    first = await _live(graph, {"done": []}, "r1", ["updates"])
    assert first == [("node", "a", {"done": ["a"]}), ("node", "side", {"done": ["side"]})]
    assert await finished_steps(graph, _config("r1"), "r1", {"updates"}) == [
        ("node", "a", {"done": ["a"]})]
    second = await _live(graph, Command(resume="yes"), "r2", ["updates"])
    assert second == [
        ("node", "side", {"done": ["side"]}),  # LangGraph's own (cached) re-emission
        ("node", "ask", {"done": ["ask:yes"]}),
        ("node", "z", {"done": ["z"]}),
    ]
    assert await finished_steps(graph, _config("r2"), "r2", {"updates"}) == [
        ("node", "ask", {"done": ["ask:yes"]}),
        ("node", "side", {"done": ["side"]}),
        ("node", "z", {"done": ["z"]}),
    ]
