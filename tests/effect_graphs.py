"""Graphs with side effects, for tests/test_effects.py (loaded through GRAPHWIRE_GRAPHS).

Their effect is a POST to the test's HTTP server (``url`` in the input, or EFFECT_SERVER_URL for
the chat tool) carrying the call's idempotency key.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, TypedDict

import httpx
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph

from graphwire import effect_key, once, once_tool
from graphwire.graphs.chat import build_chat


async def post(url: str, key: str, body: dict[str, Any]) -> Any:
    """POST ``body`` with ``Idempotency-Key: key``; the server's JSON answer."""
    async with httpx.AsyncClient(timeout=120) as http:
        response = await http.post(url, json=body, headers={"Idempotency-Key": key})
        response.raise_for_status()
        return response.json()


class ChargeState(TypedDict, total=False):
    url: str
    amount: int
    pause: float
    retry_in_doubt: bool
    receipt: Any
    done: bool


def make_charge():  # type: ignore[no-untyped-def]
    """``charge`` (one once() POST, then a pause: the window to kill in) -> ``finish``."""

    async def charge(state: ChargeState) -> ChargeState:
        receipt = await once(
            "charge", post, state["url"], effect_key("charge"), {"amount": state["amount"]},
            retry_in_doubt=state.get("retry_in_doubt", False),
        )
        await asyncio.sleep(state.get("pause", 0))
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
    answer = await post(os.environ["EFFECT_SERVER_URL"], effect_key(), {"a": a, "b": b})
    await asyncio.sleep(float(os.environ.get("EFFECT_TOOL_PAUSE", "0")))
    return int(answer["sum"])


def make_effect_chat():  # type: ignore[no-untyped-def]
    """The built-in ``chat`` agent whose ``add`` tool is an effect, made once by once_tool."""
    return build_chat(tools=[once_tool(add)])
