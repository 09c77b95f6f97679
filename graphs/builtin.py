"""Built-in deterministic graphs: no network, no model weights, same output every time."""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import interrupt
from typing_extensions import TypedDict  # pydantic derives JSON schemas (Python < 3.12)

QUICK_SYNC_NODES = {"graphwire": {"sync_nodes": "inline"}}
"""Metadata of the built-ins whose sync nodes are microsecond string functions: the worker runs
them on its event loop rather than a thread (``GraphOptions.sync_nodes``)."""


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
    return builder.compile(name="echo").with_config(metadata=QUICK_SYNC_NODES)


def pipeline_steps(normalize: Any, tokenize: Any, count: Any) -> StateGraph[Any]:
    """``pipeline``'s wiring around its three steps (the benchmark's baseline wires the same
    steps written as ``async def``)."""
    builder = StateGraph(PipelineState)
    builder.add_node("normalize", normalize)
    builder.add_node("tokenize", tokenize)
    builder.add_node("count", count)
    builder.add_edge(START, "normalize")
    builder.add_edge("normalize", "tokenize")
    builder.add_edge("tokenize", "count")
    builder.add_edge("count", END)
    return builder


def build_pipeline() -> CompiledStateGraph[Any, Any, Any, Any]:
    """``normalize`` (lower-case, strip) -> ``tokenize`` (split) -> ``count``."""

    def normalize(state: PipelineState) -> PipelineState:
        return {"text": state.get("text", "").strip().lower()}

    def tokenize(state: PipelineState) -> PipelineState:
        return {"tokens": state["text"].split()}

    def count(state: PipelineState) -> PipelineState:
        return {"count": len(state["tokens"])}

    builder = pipeline_steps(normalize, tokenize, count)
    return builder.compile(name="pipeline").with_config(metadata=QUICK_SYNC_NODES)


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


class ApprovalState(TypedDict, total=False):
    """State of ``approval``: a topic in, a draft, a reviewer's decision, the outcome."""

    topic: str
    draft: str
    approved: bool
    comment: str | None
    published: bool


def build_approval() -> CompiledStateGraph[Any, Any, Any, Any]:
    """``draft`` -> ``review`` (asks a person via ``interrupt``) -> ``publish``.

    Resume with ``{"approved": bool, "comment": str (optional)}`` on the same thread.
    Needs a checkpointer (the worker attaches PostgreSQL's).
    """

    def draft(state: ApprovalState) -> ApprovalState:
        return {"draft": f"Announcing {state['topic']}: a short post, ready for review."}

    def review(state: ApprovalState) -> ApprovalState:
        decision = interrupt(
            {
                "draft": state["draft"],
                "question": 'publish this draft? resume with {"approved": true|false, '
                '"comment": "..."}',
            }
        )
        if not isinstance(decision, dict) or not isinstance(decision.get("approved"), bool):
            raise ValueError(
                'the resume value must be {"approved": true|false, "comment": "..."}; '
                f"got {decision!r}"
            )
        return {"approved": decision["approved"], "comment": decision.get("comment")}

    def publish(state: ApprovalState) -> ApprovalState:
        return {"published": state["approved"]}

    builder = StateGraph(ApprovalState)
    builder.add_node("draft", draft)
    builder.add_node("review", review)
    builder.add_node("publish", publish)
    builder.add_edge(START, "draft")
    builder.add_edge("draft", "review")
    builder.add_edge("review", "publish")
    builder.add_edge("publish", END)
    return builder.compile(name="approval")
