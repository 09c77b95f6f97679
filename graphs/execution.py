"""Run one graph invocation and turn its stream into (type, node, data) events.

Nothing here knows about Kafka: the caller passes ``emit`` and gets a ``RunOutcome``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables.config import run_in_executor

# RetryPolicy's default predicate: public through langgraph.types, defined privately.
from langgraph._internal._retry import default_retry_on
from langgraph.errors import (
    EmptyInputError,
    GraphDrained,
    GraphRecursionError,
    UnknownInterruptError,
    is_invalid_resume,
)
from langgraph.pregel import Pregel
from langgraph.runtime import RunControl
from langgraph.types import Command, Interrupt, Send

from graphwire.topics.codec import TOP_NS

Emit = Callable[..., Awaitable[None]]
NodeTimer = Callable[[str, float], None]
"""Told each node's name and seconds as its update arrives (``run_graph``'s ``on_node``)."""
"""``emit(event_type, node, data, ns=[], extra=None)``: called for each event, in order;
``ns`` is the LangGraph namespace of the graph it came from, ``extra`` more event fields."""


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
    """``[{"id", "value", "node", "ns", "response_schema"?}]`` on ``interrupted``."""
    next: list[str] = field(default_factory=list)
    """On ``interrupted``: the nodes that run when the thread continues."""
    breakpoint: str | None = None
    """On ``interrupted`` at a breakpoint: ``before`` or ``after``."""
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
    """A message chunk as LangChain serializes it (``model_dump``): ``type``, ``content``,
    ``id``, ``name``, ``tool_calls``, ``tool_call_chunks``, ``invalid_tool_calls``,
    ``response_metadata``, ``usage_metadata``, ``additional_kwargs``, ``chunk_position``."""
    if not isinstance(message, BaseMessage):
        return {"content": message}
    return message.model_dump()


def stream_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """LangGraph's metadata of a ``messages`` chunk as LangGraph gives it (``langgraph_*``,
    ``checkpoint_ns``, ``tags``, ``ls_*``, the run's ``config.metadata``), without graphwire's
    own stamp."""
    return {k: v for k, v in meta.items() if k != "graphwire_request_id"}


def interrupt_dicts(value: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for item in value:
        if isinstance(item, Interrupt):
            found: dict[str, Any] = {"id": item.id, "value": item.value}
            if item.response_schema is not None:
                schema = item.response_schema
                found["response_schema"] = schema if isinstance(schema, dict) else str(schema)
            out.append(found)
        else:
            out.append({"id": None, "value": item})
    return out


def _command(spec: dict[str, Any]) -> Command[Any]:
    """A request's ``command`` as LangGraph's, read as LangGraph's server reads it: a ``goto``
    item ``{"node", "input"}`` is a ``Send``, an ``update`` of ``[key, value]`` pairs is a list
    of tuples (each applied in turn)."""
    update = spec.get("update")
    if isinstance(update, list) and all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) for pair in update
    ):
        update = [tuple(pair) for pair in update]
    goto = spec.get("goto", ())
    if isinstance(goto, dict):
        goto = [goto]
    if isinstance(goto, list) and any(isinstance(item, dict) for item in goto):
        goto = [_send(item) for item in goto]
    return Command(resume=spec.get("resume"), update=update, goto=goto)


def _send(item: Any) -> Any:
    if isinstance(item, dict) and isinstance(item.get("node"), str):
        return Send(item["node"], item.get("input"))
    return item


def _thread_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without a fork's ``checkpoint_id``: the thread's latest state."""
    configurable = {k: v for k, v in config["configurable"].items() if k != "checkpoint_id"}
    return {**config, "configurable": configurable}


def _raisers(snapshot: Any, ns: list[str], found: dict[str, tuple[str, list[str]]]) -> None:
    """Map each pending interrupt's id to the node that raised it and that node's ``ns``
    (the deepest task that lists it), walking the subgraph snapshots."""
    for task in snapshot.tasks:
        for item in task.interrupts:
            found[item.id] = (task.name, ns)
        state = task.state
        if state is not None and not isinstance(state, dict):  # a subgraph's StateSnapshot
            _raisers(state, [*ns, f"{task.name}:{task.id}"], found)


async def where_stopped(
    graph: Pregel[Any, Any, Any, Any],
    config: dict[str, Any],
    interrupts: list[dict[str, Any]],
    interrupt_before: Any,
) -> tuple[list[str], str | None]:
    """After a run stopped: each interrupt gains the ``node`` and ``ns`` that raised it; returns
    the nodes that run next and, at a breakpoint (no interrupt pending), ``before``/``after``."""
    if graph.checkpointer is None:
        return [], None
    snapshot = await graph.aget_state(_thread_config(config), subgraphs=bool(interrupts))  # type: ignore[arg-type]  # a plain dict of RunnableConfig keys
    raisers: dict[str, tuple[str, list[str]]] = {}
    if interrupts:
        _raisers(snapshot, [], raisers)
        for item in interrupts:
            node, ns = raisers.get(item["id"], (None, []))
            item["node"], item["ns"] = node, ns
    next_nodes = list(snapshot.next)
    if interrupts or not next_nodes:
        return next_nodes, None
    before = interrupt_before or graph.interrupt_before_nodes
    at_before = before == "*" or bool(set(next_nodes) & set(before or ()))
    return next_nodes, "before" if at_before else "after"


class _Events:
    """Turns LangGraph's stream parts into graphwire events, in order."""

    __slots__ = ("final", "held", "interrupts", "on_node", "publish", "started", "stopped",
                 "wanted")

    def __init__(self, emit: Emit, wanted: set[str], on_node: NodeTimer | None = None) -> None:
        self.publish = emit
        self.on_node = on_node
        self.started: dict[tuple[str, ...], float] = {(): time.perf_counter()}
        """When each graph's (by ns) current step began: at the run's start, then at each of
        its ``values`` (a step's end is the next one's start)."""
        self.held: list[tuple[Any, ...]] | None = None
        """From the first interrupt on, events wait for the run's end (when the interrupts'
        node and ns are known), then go out in the order LangGraph gave them."""
        self.wanted = wanted
        self.final: Any = None
        self.interrupts: list[dict[str, Any]] = []
        """The top graph's pending interrupts (the result's)."""
        self.stopped = False
        """The top graph stopped at a breakpoint (an empty ``__interrupt__``)."""

    async def emit(self, *event: Any) -> None:
        if self.held is None:
            await self.publish(*event)
        else:
            self.held.append(event)

    async def part(self, ns: list[str], mode: str, chunk: Any) -> None:
        emit = self.emit
        if mode == "updates":
            cached = bool((chunk.get("__metadata__") or {}).get("cached"))
            if self.on_node is not None and not cached:
                now = time.perf_counter()
                began = self.started.get(tuple(ns), now)
                for node in chunk:
                    if node not in ("__interrupt__", "__metadata__"):
                        self.on_node(node, now - began)
            for node, update in chunk.items():
                if node == "__interrupt__":
                    found = interrupt_dicts(update)
                    if not ns:
                        self.interrupts.extend(found)
                        self.stopped = self.stopped or not found
                    if found:
                        if self.held is None:
                            self.held = []
                        self.held += [("interrupt", ns, item) for item in found]
                elif node == "__metadata__":
                    continue
                elif "updates" in self.wanted:
                    if cached:
                        await emit("node", node, update, ns, _CACHED)
                    else:
                        await emit("node", node, update, ns)
        elif mode == "values":
            if self.on_node is not None:
                self.started[tuple(ns)] = time.perf_counter()
            if not ns:
                self.final = chunk
            if "values" in self.wanted:
                await emit("values", None, chunk, ns)
        elif mode == "messages":
            message, meta = chunk
            await emit("message", meta.get("langgraph_node"), message_data(message), ns,
                       {"langgraph": stream_metadata(meta)})
        elif mode == "custom":
            await emit("custom", None, chunk, ns)
        elif mode == "tasks":
            await emit("task", chunk.get("name"), chunk, ns)
        elif mode == "checkpoints":
            await emit("checkpoint", None, chunk, ns)
        elif mode == "debug":
            await emit("debug", None, chunk, ns)

    async def flush(self) -> None:
        """Publish the held events; each interrupt with the node and ns that raised it."""
        held, self.held = self.held or [], None
        by_id = {item["id"]: item for item in self.interrupts}
        for event in held:
            if event[0] != "interrupt":
                await self.publish(*event)
                continue
            _, ns, item = event
            full = by_id.get(item["id"], item)
            await self.publish("interrupt", full.get("node"), {**item, **{
                k: full[k] for k in ("node", "ns") if k in full}}, ns)


_CACHED = {"cached": True}
_TOP = TOP_NS


async def run_graph(
    graph: Pregel[Any, Any, Any, Any],
    *,
    input: Any,
    command: dict[str, Any] | None,
    config: dict[str, Any],
    stream: Iterable[str],
    timeout_s: float | None,
    emit: Emit,
    durability: str | None = None,
    control: RunControl | None = None,
    context: dict[str, Any] | None = None,
    interrupt_before: Any = None,
    interrupt_after: Any = None,
    subgraphs: bool = False,
    on_node: NodeTimer | None = None,
) -> RunOutcome:
    """Stream ``graph`` and emit its events (``node``, ``custom``, ``message``, ``values``,
    ``task``, ``checkpoint``, ``debug``, ``interrupt``), each with its ``ns``.

    ``updates`` and ``values`` are always streamed (they give interrupts and the final state);
    only the modes in ``stream`` become events. With ``subgraphs``, subgraphs' parts too.
    ``on_node`` times each node that ran (not a cached one) from its step's start to its update:
    no LangChain callback per node (a node's update arrives as its task ends; the step starts
    after the previous ``values``).
    """
    wanted = set(stream)
    modes = ["updates", "values", *sorted(wanted - {"updates", "values"})]
    payload: Any = _command(command) if command is not None else input
    caller_emit = emit

    async def emit_or_flag(type_: str, node: str | None, data: Any, ns: list[str] = _TOP,
                           extra: dict[str, Any] | None = None) -> None:
        try:
            await caller_emit(type_, node, data, ns, extra)
        except Exception as exc:  # the caller's failure (publishing), not the graph's
            raise _EmitFailed from exc

    events = _Events(emit_or_flag, wanted, on_node)
    extra: dict[str, Any] = {"durability": durability} if durability else {}
    if control is not None:
        extra["control"] = control
    if context is not None:
        extra["context"] = context
    if interrupt_before is not None:
        extra["interrupt_before"] = interrupt_before
    if interrupt_after is not None:
        extra["interrupt_after"] = interrupt_after
    try:
        async with asyncio.timeout(timeout_s):
            stream_modes: Any = modes  # Pregel's overloads want a literal list
            parts = graph.astream(payload, config, stream_mode=stream_modes,  # type: ignore[call-overload]  # config is a plain dict of RunnableConfig keys
                                  subgraphs=subgraphs, **extra)
            if subgraphs:
                async for ns, mode, chunk in parts:
                    await events.part(list(ns), mode, chunk)
            else:
                async for mode, chunk in parts:
                    await events.part(_TOP, mode, chunk)
            next_nodes: list[str] = []
            breakpoint_: str | None = None
            if events.interrupts or events.stopped:
                next_nodes, breakpoint_ = await where_stopped(
                    graph, config, events.interrupts, interrupt_before)
            await events.flush()
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
    except UnknownInterruptError as exc:
        return RunOutcome(status="rejected", error=("UnknownInterrupt", _unknown_interrupt(exc)),
                          exception=exc)
    except EmptyInputError as exc:
        return RunOutcome(status="rejected", error=("InvalidCommand", (
            f"{exc}: a command needs a non-null 'resume', an 'update' or a 'goto'; to continue "
            "a thread from a breakpoint, send 'input': null")), exception=exc)
    except Exception as exc:  # the graph's own failure becomes the result; nothing escapes
        message = str(exc).strip().split("\n")[0] or "the graph raised without a message"
        if is_invalid_resume(exc):  # the thread stays interrupted and answerable
            return RunOutcome(status="rejected", error=("InvalidResume", (
                f"the resume value does not match the interrupt's response_schema: "
                f"{_validation_message(exc)}; the interrupt is still pending: answer it again")),
                exception=exc)
        return RunOutcome(status="error", error=(type(exc).__name__, message), exception=exc)
    if events.interrupts or events.stopped:
        return RunOutcome(status="interrupted", interrupts=events.interrupts, next=next_nodes,
                          breakpoint=breakpoint_)
    return RunOutcome(status="success", output=events.final)


def _unknown_interrupt(exc: UnknownInterruptError) -> str:
    """The reason a resume that matches no pending interrupt is refused, with the ids."""
    pending = ", ".join(exc.pending_ids) or "none"
    if exc.reason == "ambiguous":
        return (f"several interrupts are pending ({pending}): resume with a map of interrupt id "
                "to value, e.g. {\"resume\": {\"<id>\": ...}}")
    if exc.reason == "empty_map":
        return f"the resume map names no interrupt; pending: {pending}"
    return (f"the resume names interrupts that are not pending "
            f"({', '.join(exc.interrupt_ids)}); pending: {pending}")


def _validation_message(exc: BaseException) -> str:
    """A pydantic ValidationError in one line: each problem's location and message."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())) or 'value'}: {e.get('msg')}"
                for e in errors()
            )
        except Exception:
            pass
    return str(exc).strip().split("\n")[0]
