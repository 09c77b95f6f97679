"""``chat`` with its model streaming at an LLM's pace, for the streaming-latency benchmark.

The shipped ``chat`` model yields its tokens as fast as the CPU makes them, so 100 concurrent
streams of it are 100 runs competing for the worker's core, and an event's latency is mostly
its wait for that core. A real model yields a token every few tens of milliseconds; this one
waits ``SECONDS_PER_TOKEN`` before each, so the worker has the headroom it has in production.

    GRAPHWIRE_GRAPHS=chat_paced=bench.paced_chat:graph    (with the repository on PYTHONPATH)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from graphwire.graphs.chat import ScriptedChatModel, build_chat

SECONDS_PER_TOKEN = 0.02
"""50 tokens per second, a hosted model's streaming pace."""


class PacedChatModel(ScriptedChatModel):
    """``ScriptedChatModel`` that waits ``SECONDS_PER_TOKEN`` before each streamed token."""

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
            await asyncio.sleep(SECONDS_PER_TOKEN)
            yield chunk


graph = build_chat(PacedChatModel())
