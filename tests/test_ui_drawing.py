"""The run inspector's drawing of a graph (from LangGraph's ``get_graph()``) and its timeline:
pure geometry, no I/O."""

from __future__ import annotations

from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from graphwire.graphs.builtin import build_pipeline
from graphwire.graphs.chat import build_chat
from graphwire.processors.gateway.ui.drawing import bars, draw
from graphwire.processors.gateway.ui.models import EventRow


class Counter(TypedDict):
    n: int


def looping() -> object:
    builder = StateGraph(Counter)
    builder.add_node("step", lambda s: {"n": s["n"] + 1})
    builder.add_node("done", lambda s: s)
    builder.add_node("unused", lambda s: s)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", lambda s: "done" if s["n"] > 2 else "step",
                                  ["step", "done"])
    builder.add_edge("done", END)
    return builder.compile()


def test_a_straight_graph_is_drawn_top_down_with_the_path_taken() -> None:
    """pipeline: one node per row from __start__ to __end__; every edge of a finished run is
    taken and each node carries its position in the run."""
    drawn = draw(build_pipeline(), ["normalize", "tokenize", "count"], finished=True)
    assert [(n.id, n.y, n.order, n.visited) for n in drawn.nodes] == [
        ("__start__", 20.0, [], True), ("normalize", 110.0, [1], True),
        ("tokenize", 200.0, [2], True), ("count", 290.0, [3], True),
        ("__end__", 380.0, [], True)]
    assert all(e.taken and not e.conditional for e in drawn.edges)
    assert drawn.height == 380.0 + 34 + 20
    unfinished = draw(build_pipeline(), ["normalize"], finished=False)
    assert [(e.source, e.target) for e in unfinished.edges if e.taken] == [
        ("__start__", "normalize")]
    assert [n.id for n in unfinished.nodes if n.visited] == ["__start__", "normalize"]


def test_loops_conditional_edges_and_unreachable_nodes() -> None:
    """A node run twice has both positions; its self-loop is taken; conditional edges are
    marked; an unreachable node sits above __end__ with no empty row between."""
    drawn = draw(looping(), ["step", "step", "done"], finished=True)
    rows = {n.id: n.y for n in drawn.nodes}
    assert rows == {"__start__": 20.0, "step": 110.0, "done": 200.0, "unused": 290.0,
                    "__end__": 380.0}
    assert {n.id: n.order for n in drawn.nodes}["step"] == [1, 2]
    edges = {(e.source, e.target): (e.taken, e.conditional) for e in drawn.edges}
    assert edges == {("__start__", "step"): (True, False), ("step", "step"): (True, True),
                     ("step", "done"): (True, True), ("done", "__end__"): (True, False)}
    chat = draw(build_chat(), ["agent", "tools", "agent"], finished=True)
    back = next(e for e in chat.edges if (e.source, e.target) == ("tools", "agent"))
    assert back.taken and back.path.startswith("M") and " C" in back.path


def test_timeline_bars_scale_node_time_to_the_width() -> None:
    """Each node event is a bar from the event before it; the run's span fills 600 units."""
    from datetime import UTC, datetime

    def event(i: int, type_: str, node: str | None, at: float, took: float | None) -> EventRow:
        return EventRow(seq=i, attempt=1, try_index=0, type=type_, node=node,
                        ts=datetime.now(UTC), offset_ms=at, duration_ms=took)

    events = [event(0, "run_started", None, 0, None), event(1, "node", "a", 100, 100),
              event(2, "node", "b", 400, 300), event(3, "run_finished", None, 500, None)]
    assert [(b.label, b.x, b.width, b.y) for b in bars(events, 500)] == [
        ("a", 0.0, 120.0, 0.0), ("b", 120.0, 360.0, 28.0)]
