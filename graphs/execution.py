"""Run one graph invocation and turn its stream into (type, node, data) events.

Nothing here knows about Kafka: the caller passes ``emit`` and gets a ``RunOutcome``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables.config import run_in_executor

# RetryPolicy's default predicate: public through langgraph.types, defined privately.
from langgraph._internal._retry import default_retry_on
from langgraph.errors import GraphDrained, GraphRecursionError
from langgraph.pregel import Pregel
from langgraph.runtime import RunControl
from langgraph.types import Command, Interrupt

Emit = Callable[[str, str | None, Any], Awaitable[None]]
"""``emit(event_type, node, data)``: called for each event, in order."""


@dataclass(slots=True)
class RunOutcome:
    """How a run ended."""

    status: str
    """``success``, ``error``, ``timeout``, ``interrupted``, or ``drained`` (stopped at a step
    boundary on request; the checkpoint lets another worker continue)."""
    output: Any = None
    """The final state on ``success``."""
    error: tuple[str, str] | None = None
    """``(type, message)`` on ``error`` and ``timeout``."""
    interrupts: list[Any] = field(default_factory=list)
    """``[{"id": ..., "value": ...}]`` on ``interrupted``."""
    exception: BaseException | None = None
    """The exception the graph raised, for the caller's retry decision."""


class _EmitFailed(Exception):
    """Wraps an error raised by the caller's ``emit`` so it is not taken for a graph failure."""


def is_retriable(exc: BaseException | None) -> bool:
    """An error's own ``retriable`` flag if it has one, else LangGraph's ``default_retry_on``."""
    if exc is None or isinstance(exc, TimeoutError | GraphRecursionError):
        return False
    flag = getattr(exc, "retriable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, Exception) and default_retry_on(exc)


def inline_sync_nodes(graph: Pregel[Any, Any, Any, Any]) -> list[str]:
    """Make ``graph``'s plain sync nodes run on the event loop instead of a worker thread.

    LangGraph wraps a sync node function as ``RunnableCallable(func, afunc=partial(
    run_in_executor, None, func))``, so under ``astream`` every call of it is a hop to the
    default thread pool and back (for a microsecond node, most of its cost). Without an
    ``afunc``, ``RunnableCallable.ainvoke`` calls ``invoke`` directly, in the caller's context,
    with the same callbacks. Only nodes with exactly that wrapper are changed; async nodes,
    subgraphs and other runnables are left alone. Returns the names of the changed nodes.

    Only for graphs whose sync nodes are quick and never block (a blocking node would stall
    every run on the worker): graphs opt in with ``{"graphwire": {"sync_nodes": "inline"}}``.
    """
    changed = []
    for name, node in graph.nodes.items():
        bound = node.bound
        wrapper = getattr(bound, "afunc", None)
        if (
            isinstance(wrapper, functools.partial)
            and wrapper.func is run_in_executor
            and wrapper.args[:1] == (None,)
            and getattr(bound, "func", None) is not None
        ):
            bound.afunc = None  # type: ignore[attr-defined]  # RunnableCallable's own field
            changed.append(name)
    return changed


def message_data(message: Any) -> dict[str, Any]:
    """A compact, JSON-ready view of a LangChain message chunk for ``message`` events."""
    if not isinstance(message, BaseMessage):
        return {"content": message}
    data: dict[str, Any] = {"type": message.type, "content": message.content, "id": message.id}
    chunks = getattr(message, "tool_call_chunks", None)
    if chunks:
        data["tool_call_chunks"] = chunks
    usage = getattr(message, "usage_metadata", None)
    if usage:
        data["usage_metadata"] = usage
    if getattr(message, "tool_call_id", None):
        data["tool_call_id"] = message.tool_call_id  # type: ignore[attr-defined]
    return data


def _interrupts(value: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for item in value:
        if isinstance(item, Interrupt):
            out.append({"id": item.id, "value": item.value})
        else:
            out.append({"id": None, "value": item})
    return out


def _command(spec: dict[str, Any]) -> Command[Any]:
    return Command(resume=spec.get("resume"), update=spec.get("update"), goto=spec.get("goto", ()))


async def run_graph(
    graph: Pregel[Any, Any, Any, Any],
    *,
    input: dict[str, Any] | None,
    command: dict[str, Any] | None,
    config: dict[str, Any],
    stream: Iterable[str],
    timeout_s: float | None,
    emit: Emit,
    durability: str | None = None,
    control: RunControl | None = None,
) -> RunOutcome:
    """Stream ``graph`` and emit ``node``/``custom``/``message``/``values``/``interrupt`` events.

    ``updates`` and ``values`` are always streamed (they give interrupts and the final state);
    only the modes in ``stream`` become events.
    """
    wanted = set(stream)
    modes = ["updates", "values", *sorted(wanted - {"updates", "values"})]
    emit_nodes = "updates" in wanted
    emit_values = "values" in wanted
    payload: Any = _command(command) if command is not None else input
    caller_emit = emit

    async def emit_or_flag(type_: str, node: str | None, data: Any) -> None:
        try:
            await caller_emit(type_, node, data)
        except Exception as exc:  # the caller's failure (publishing), not the graph's
            raise _EmitFailed from exc

    final: Any = None
    interrupts: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout_s):
            stream_modes: Any = modes  # Pregel's overloads want a literal list
            extra: dict[str, Any] = {"durability": durability} if durability else {}
            if control is not None:
                extra["control"] = control
            chunks = graph.astream(payload, config, stream_mode=stream_modes, **extra)  # type: ignore[call-overload]  # config is a plain dict of RunnableConfig keys
            async for mode, chunk in chunks:
                if mode == "updates":
                    for node, update in chunk.items():
                        if node == "__interrupt__":
                            found = _interrupts(update)
                            interrupts.extend(found)
                            for item in found:
                                await emit_or_flag("interrupt", None, item)
                        elif emit_nodes:
                            await emit_or_flag("node", node, update)
                elif mode == "values":
                    final = chunk
                    if emit_values:
                        await emit_or_flag("values", None, chunk)
                elif mode == "messages":
                    message, meta = chunk
                    await emit_or_flag("message", meta.get("langgraph_node"), message_data(message))
                elif mode == "custom":
                    await emit_or_flag("custom", None, chunk)
    except _EmitFailed as exc:
        assert exc.__cause__ is not None
        raise exc.__cause__ from None
    except GraphDrained:
        return RunOutcome(status="drained")
    except TimeoutError as exc:
        return RunOutcome(
            status="timeout",
            error=(
                "Timeout",
                f"the run took longer than timeout_s={timeout_s}; raise timeout_s or make the "
                "graph faster",
            ),
            exception=exc,
        )
    except GraphRecursionError as exc:
        return RunOutcome(
            status="error",
            error=(
                "GraphRecursionError",
                f"{exc}".split("\n")[0] + " Raise config.recursion_limit or fix the graph's loop.",
            ),
            exception=exc,
        )
    except Exception as exc:  # the graph's own failure becomes the result; nothing escapes
        message = str(exc).strip().split("\n")[0] or "the graph raised without a message"
        return RunOutcome(status="error", error=(type(exc).__name__, message), exception=exc)
    if interrupts:
        return RunOutcome(status="interrupted", interrupts=interrupts)
    return RunOutcome(status="success", output=final)
