"""Built-in deterministic graphs: no network, no model weights, same output every time."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph


class TextState(TypedDict):
    """State of ``echo``: one text field."""

    text: str


class PipelineState(TypedDict, total=False):
    """State of ``pipeline``: text in, normalised text, tokens and their count out."""

    text: str
    tokens: list[str]
    count: int


class SlowState(TypedDict, total=False):
    """State of ``slow``: how many seconds the one node waits."""

    seconds: float


def build_echo() -> CompiledStateGraph[Any, Any, Any, Any]:
    """One node, ``echo``: the output equals the input ``{"text": ...}``."""

    def echo(state: TextState) -> TextState:
        return {"text": state["text"]}

    builder = StateGraph(TextState)
    builder.add_node("echo", echo)
    builder.add_edge(START, "echo")
    builder.add_edge("echo", END)
    return builder.compile(name="echo")


def build_pipeline() -> CompiledStateGraph[Any, Any, Any, Any]:
    """``normalize`` (lower-case, strip) -> ``tokenize`` (split) -> ``count``."""

    def normalize(state: PipelineState) -> PipelineState:
        return {"text": state.get("text", "").strip().lower()}

    def tokenize(state: PipelineState) -> PipelineState:
        return {"tokens": state["text"].split()}

    def count(state: PipelineState) -> PipelineState:
        return {"count": len(state["tokens"])}

    builder = StateGraph(PipelineState)
    builder.add_node("normalize", normalize)
    builder.add_node("tokenize", tokenize)
    builder.add_node("count", count)
    builder.add_edge(START, "normalize")
    builder.add_edge("normalize", "tokenize")
    builder.add_edge("tokenize", "count")
    builder.add_edge("count", END)
    return builder.compile(name="pipeline")


def build_slow() -> CompiledStateGraph[Any, Any, Any, Any]:
    """One node, ``wait``, that sleeps ``seconds`` (default 0.2): an LLM call's stand-in."""

    async def wait(state: SlowState) -> SlowState:
        seconds = float(state.get("seconds", 0.2))
        await asyncio.sleep(seconds)
        return {"seconds": seconds}

    builder = StateGraph(SlowState)
    builder.add_node("wait", wait)
    builder.add_edge(START, "wait")
    builder.add_edge("wait", END)
    return builder.compile(name="slow")
