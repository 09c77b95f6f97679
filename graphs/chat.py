"""``chat``: a small tool-calling agent on a deterministic fake chat model.

The model streams its answer token by token (``message`` events) and calls an ``add`` tool when
asked to add two numbers; the tool reports progress through the stream writer (``custom``
events). A real provider is configuration: swap ``ScriptedChatModel`` for any LangChain chat
model with tool calling.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

# Linear time: each operand is 1-18 ASCII digits (a sum that fits in an int64), not
# preceded or followed by another digit, so no start position backtracks over a long run of
# digits; and only the first _ADDITION_SCAN characters of a message are searched. The former
# ``(-?\d+)\s*\+\s*(-?\d+)`` was quadratic: 200,000 digits held the GIL for about 10 minutes.
_ADDITION = re.compile(
    r"(?<![0-9])(-?[0-9]{1,18})(?![0-9])[ \t]{0,8}\+[ \t]{0,8}(-?[0-9]{1,18})(?![0-9])"
)
_ADDITION_SCAN = 1000
_DIGITS = frozenset("0123456789")


def parse_addition(text: str) -> tuple[int, int] | None:
    """The first ``a + b`` in the first 1,000 characters of ``text`` (each 1-18 digits)."""
    match = _ADDITION.search(text, 0, _ADDITION_SCAN)
    if match is None or text[match.end() : match.end() + 1] in _DIGITS:  # cut inside a number
        return None
    return int(match[1]), int(match[2])


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    get_stream_writer()({"tool": "add", "a": a, "b": b})
    return a + b


class ScriptedChatModel(BaseChatModel):
    """A deterministic chat model: asks the ``add`` tool to add, then states the sum.

    Rules, on the last message: a tool result -> "The answer is N."; a human message with
    ``a + b`` and tools bound -> a tool call; anything else -> "You said: ...".
    """

    model_name: str = "graphwire-scripted"

    @property
    def _llm_type(self) -> str:
        return "graphwire-scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        """Bind tools by name; the script only knows ``add``."""
        names = [getattr(t, "name", str(t)) for t in tools]
        return self.bind(tool_names=names, **kwargs)

    def _reply(self, messages: list[BaseMessage], tool_names: list[str]) -> AIMessage:
        last = messages[-1]
        usage = UsageMetadata(
            input_tokens=sum(len(str(m.content).split()) for m in messages),
            output_tokens=0,
            total_tokens=0,
        )
        if isinstance(last, ToolMessage):
            text = f"The answer is {last.content}."
        else:
            operands = parse_addition(str(last.content)) if "add" in tool_names else None
            if operands is not None:
                call = {
                    "name": "add",
                    "args": {"a": operands[0], "b": operands[1]},
                    "id": f"call_{len(messages)}",
                    "type": "tool_call",
                }
                usage["output_tokens"] = 1
                usage["total_tokens"] = usage["input_tokens"] + 1
                return AIMessage(content="", tool_calls=[call], usage_metadata=usage)
            text = f"You said: {last.content}"
        usage["output_tokens"] = len(text.split())
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        return AIMessage(content=text, usage_metadata=usage)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._reply(messages, kwargs.get("tool_names", []))
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def _chunks(self, reply: AIMessage) -> Iterator[ChatGenerationChunk]:
        if reply.tool_calls:
            call = reply.tool_calls[0]
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        {
                            "name": call["name"],
                            "args": orjson.dumps(call["args"]).decode(),
                            "id": call["id"],
                            "index": 0,
                            "type": "tool_call_chunk",
                        }
                    ],
                    usage_metadata=reply.usage_metadata,
                )
            )
            return
        words = str(reply.content).split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=word if last else word + " ",
                    usage_metadata=reply.usage_metadata if last else None,
                )
            )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._reply(messages, kwargs.get("tool_names", []))):
            if run_manager:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._reply(messages, kwargs.get("tool_names", []))):
            if run_manager:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk


def build_chat(
    model: BaseChatModel | None = None, tools: Sequence[Any] | None = None
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """An ``agent`` node calling the model, a ``tools`` node running ``add`` (or ``tools``: an
    effectful tool wrapped in ``once_tool`` runs once per tool call), looping until done."""
    tools = list(tools or [add])
    llm = (model or ScriptedChatModel()).bind_tools(tools)

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(name="chat")
