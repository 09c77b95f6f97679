"""Graphs used by tests only (loaded through GRAPHWIRE_GRAPHS like a user's own)."""

from __future__ import annotations

from typing import TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    text: str


def _explode(state: State) -> State:
    raise ValueError(f"cannot handle {state.get('text')!r}: send a shorter text")


failing_builder = StateGraph(State)
failing_builder.add_node("explode", _explode)
failing_builder.add_edge(START, "explode")
failing_builder.add_edge("explode", END)

failing = failing_builder  # a StateGraph: the registry compiles it


def make_upper():  # a factory: the registry calls it
    def upper(state: State) -> State:
        return {"text": state["text"].upper()}

    builder = StateGraph(State)
    builder.add_node("upper", upper)
    builder.add_edge(START, "upper")
    builder.add_edge("upper", END)
    return builder.compile()
