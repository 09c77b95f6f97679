"""Graphs with side effects, for tests/test_effects.py (loaded through GRAPHWIRE_GRAPHS).

Their effect is a POST to the test's HTTP server (``url`` in the input, or EFFECT_SERVER_URL for
the chat tool) carrying the call's idempotency key.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, TypedDict

import httpx
import orjson
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph

from graphwire import effect_key, once, once_tool
from graphwire.graphs.chat import ScriptedChatModel, build_chat


async def post(url: str, key: str, body: dict[str, Any]) -> Any:
    """POST ``body`` with ``Idempotency-Key: key``; the server's JSON answer."""
    async with httpx.AsyncClient(timeout=120) as http:
        response = await http.post(url, json=body, headers={"Idempotency-Key": key})
        response.raise_for_status()
        return response.json()


async def pause(base: str) -> None:
    """Sleep as long as the server's ``/pause`` says (long the first time: a window to kill
    the worker in; 0 after)."""
    async with httpx.AsyncClient(timeout=10) as http:
        seconds = (await http.get(f"{base}/pause")).json()["seconds"]
    await asyncio.sleep(seconds)


class ChargeState(TypedDict, total=False):
    url: str
    amount: int
    retry_in_doubt: bool
    receipt: Any
    done: bool


def make_charge():  # type: ignore[no-untyped-def]
    """``charge`` (one once() POST, then a pause: the window to kill in) -> ``finish``."""

    async def charge(state: ChargeState) -> ChargeState:
        receipt = await once(
            "charge", post, f"{state['url']}/charge", effect_key("charge"),
            {"amount": state["amount"]}, retry_in_doubt=state.get("retry_in_doubt", False),
        )
        await pause(state["url"])
        return {"receipt": receipt}

    def finish(state: ChargeState) -> ChargeState:
        return {"done": True}

    builder = StateGraph(ChargeState)
    builder.add_node("charge", charge)
    builder.add_node("finish", finish)
    builder.add_edge(START, "charge")
    builder.add_edge("charge", "finish")
    builder.add_edge("finish", END)
    return builder.compile()


@tool
async def add(a: int, b: int) -> int:
    """Add two integers (on the test's server, which records the call)."""
    base = os.environ["EFFECT_SERVER_URL"]
    answer = await post(f"{base}/add", effect_key(), {"a": a, "b": b})
    return int(answer["sum"])


@tool
async def wait() -> str:
    """Wait as long as the server says (not an effect: runs again on a re-run)."""
    await pause(os.environ["EFFECT_SERVER_URL"])
    return "waited"


class WaitThenAddModel(ScriptedChatModel):
    """The scripted model, but each tool call comes with a ``wait`` call before it: the tools
    node runs both at once, so the worker can be killed after ``add`` and before the node ends."""

    def _reply(self, messages: list[BaseMessage], tool_names: list[str]) -> AIMessage:
        reply = super()._reply(messages, tool_names)
        if not reply.tool_calls:
            return reply
        waiting = {"name": "wait", "args": {}, "id": f"wait_{len(messages)}",
                   "type": "tool_call"}
        return AIMessage(content="", tool_calls=[waiting, *reply.tool_calls],
                         usage_metadata=reply.usage_metadata)

    def _chunks(self, reply: AIMessage) -> Any:
        if not reply.tool_calls:
            yield from super()._chunks(reply)
            return
        chunks: Any = [
            {"name": c["name"], "args": orjson.dumps(c["args"]).decode(), "id": c["id"],
             "index": i, "type": "tool_call_chunk"}
            for i, c in enumerate(reply.tool_calls)
        ]
        yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=chunks))


def make_effect_chat():  # type: ignore[no-untyped-def]
    """The built-in ``chat`` agent with an effectful ``add`` tool made once by once_tool."""
    return build_chat(WaitThenAddModel(), tools=[wait, once_tool(add)])


FAILED_ONCE: set[str] = set()


def make_flaky_charge():  # type: ignore[no-untyped-def]
    """``charge`` whose node raises ConnectionError (retriable) after its effect, the first
    time per request: the runner retries it in the same process."""

    async def charge(state: ChargeState, config: RunnableConfig) -> ChargeState:
        receipt = await once(
            "charge", post, f"{state['url']}/charge", effect_key("charge"),
            {"amount": state["amount"]},
        )
        request_id = config["metadata"]["graphwire_request_id"]
        if request_id not in FAILED_ONCE:
            FAILED_ONCE.add(request_id)
            raise ConnectionError("the connection dropped after the charge")
        return {"receipt": receipt}

    builder = StateGraph(ChargeState)
    builder.add_node("charge", charge)
    builder.add_edge(START, "charge")
    builder.add_edge("charge", END)
    return builder.compile()
