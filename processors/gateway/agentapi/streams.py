"""graphwire's events as the Agent Server's server-sent events, and the ``wait``/``join`` body.

Pure (no I/O): a route feeds a run's events (dicts as on the events topic, or ``Event``
models) in position order to a ``RunStream`` and writes the frames it returns; at the end it
gives the run's ``Result`` to ``finish``. The framing is the Agent Server's::

    event: <name>\\r\\ndata: <one-line JSON>\\r\\nid: <seq>\\r\\n\\r\\n

Each frame's ``id`` is the position (``seq``) of the graphwire event it came from, so a client
that reconnects with ``Last-Event-ID: N`` gets what came after N, and ``-1`` replays the run.

graphwire event → frame (when the client asked for the mode):

- ``run_started`` → ``metadata`` ``{"run_id", "attempt"}`` (always);
- ``node`` → ``updates`` ``{node: update}`` (+ ``"__metadata__": {"cached": true}``);
- consecutive ``interrupt`` events of one ``ns`` → one ``updates``
  ``{"__interrupt__": [...]}``; without ``updates``, a ``values`` frame of it (as the Agent
  Server forwards interrupts); a ``run_finished`` at a breakpoint → ``updates``
  ``{"__interrupt__": []}``;
- ``values`` → ``values``; ``custom``, ``task``, ``checkpoint``, ``debug`` → ``custom``,
  ``tasks``, ``checkpoints``, ``debug``;
- ``message`` → ``messages`` ``[message, metadata]`` (``messages-tuple``), or
  ``messages/metadata`` (once per message id), ``messages/partial`` (the whole message so far)
  and ``messages/complete`` (a message that did not stream) for ``messages``;
- a result ``error``/``timeout``/``cancelled``/``rejected`` → ``error``
  ``{"error": type, "message": ...}``.

A subgraph's frames are named ``mode|ns1|ns2`` (the ``messages/*`` frames keep their names, as
the Agent Server sends them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.messages import (
    AIMessageChunk,
    BaseMessageChunk,
    ChatMessageChunk,
    FunctionMessageChunk,
    HumanMessageChunk,
    SystemMessageChunk,
    ToolMessageChunk,
    message_chunk_to_message,
)
from pydantic import BaseModel, ValidationError

from graphwire.processors.gateway.agentapi.errors import Unprocessable
from graphwire.topics.codec import dumps
from graphwire.topics.models import Result

HEARTBEAT = b": heartbeat\r\n\r\n"
"""A comment frame the SDK ignores; send one every few seconds of silence."""
KEEPALIVE = b"\n"
"""What a ``wait``/``join`` body sends while it waits (JSON parsers skip leading space)."""
HEARTBEAT_S = 5.0
"""The Agent Server's heartbeat interval (the SDK gives up after 300 s of silence)."""
FAILED = ("error", "timeout", "cancelled", "rejected")
"""Result statuses that end a stream with an ``error`` frame."""

_CHUNKS: dict[str, type[BaseMessageChunk]] = {
    cls.model_fields["type"].default: cls
    for cls in (AIMessageChunk, HumanMessageChunk, SystemMessageChunk, ToolMessageChunk,
                ChatMessageChunk, FunctionMessageChunk)
}


def frame(event: str, data: Any, event_id: int | str | None = None) -> bytes:
    """One SSE frame: ``event``, ``data`` as single-line JSON and, when given, ``id``."""
    name = event.replace("\r", " ").replace("\n", " ").encode()
    out = b"event: " + name + b"\r\ndata: " + dumps(data) + b"\r\n"
    if event_id is not None:
        out += b"id: " + str(event_id).encode() + b"\r\n"
    return out + b"\r\n"


def metadata_frame(run_id: str, attempt: int = 1, event_id: int | str | None = None) -> bytes:
    """The ``metadata`` frame that opens a run's stream."""
    return frame("metadata", {"run_id": run_id, "attempt": attempt}, event_id)


def parse_last_event_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` header: None when absent or empty, ``-1`` (or ``-``) for the whole
    run, else the position to resume after. 422 for anything else."""
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if text in ("-1", "-"):
        return -1
    if text.isdigit():
        return int(text)
    raise Unprocessable("Invalid last-event-id: must be an event id from this stream, or -1 "
                        "to replay the run")


def error_data(result: Result) -> dict[str, str]:
    """The ``error`` frame's data (and a ``wait`` body's ``__error__``) for a failed run."""
    if result.error is not None:
        return {"error": result.error.type, "message": result.error.message}
    return {"error": str(result.status).title(), "message": f"the run ended {result.status}"}


def interrupt_item(data: Any) -> dict[str, Any]:
    """An ``interrupt`` event's data as LangGraph's ``Interrupt`` serializes it:
    ``{"value", "id", "response_schema"}``."""
    if not isinstance(data, Mapping):
        return {"value": data, "id": None, "response_schema": None}
    return {"value": data.get("value"), "id": data.get("id"),
            "response_schema": data.get("response_schema")}


def wait_body(result: Result, last_values: Any = None) -> Any:
    """The final JSON of ``wait`` and ``join``: ``{"__error__": {error, message}}`` for a
    failed run; the state with ``__interrupt__`` for one waiting on interrupts (the state is
    ``last_values``, the last top-level ``values``); else the final state (the result's
    output, else ``last_values``, else ``{}``)."""
    if result.status in FAILED:
        return {"__error__": error_data(result)}
    if result.status == "interrupted":
        state = dict(last_values) if isinstance(last_values, Mapping) else {}
        interrupts = _unique([interrupt_item(i) for i in result.interrupts])
        if interrupts:
            state["__interrupt__"] = interrupts
        return state
    if result.output is not None:
        return result.output
    return last_values if last_values is not None else {}


class RunStream:
    """One client's SSE stream of one run (pure: events in, frames out).

    Feed every event of the run from its first, in position order (copies and older
    positions are skipped), so the ``messages/partial`` accumulation and the interrupt
    grouping are whole; frames of events at or before ``after`` (a ``Last-Event-ID``) are
    withheld. ``modes`` are the client's stream modes (``RunCreate.modes``).
    """

    def __init__(self, run_id: str, modes: Iterable[str], *, after: int | None = None) -> None:
        self.run_id = run_id
        self.modes = frozenset(modes)
        self.after = after
        self.last_values: Any = None
        """The state of the last top-level ``values`` event (for ``wait_body``)."""
        self.last_seq = -1
        """The position of the last event fed."""
        self._messages: dict[Any, Any] = {}
        self._interrupts: list[dict[str, Any]] = []
        self._interrupt_ns: list[str] = []
        self._interrupt_seq = -1
        self._finished_seq: int | None = None

    def feed(self, event: Mapping[str, Any] | BaseModel) -> list[bytes]:
        """The frames for one graphwire event (none for a copy or an event not asked for)."""
        ev = event.model_dump() if isinstance(event, BaseModel) else event
        seq = int(ev["seq"])
        if seq <= self.last_seq:
            return []
        self.last_seq = seq
        kind = str(ev["type"])
        ns = [str(segment) for segment in ev.get("ns") or ()]
        out: list[bytes] = []
        if kind == "interrupt":
            if self._interrupts and ns != self._interrupt_ns:
                out += self._flush_interrupts()
            self._interrupts.append(interrupt_item(ev.get("data")))
            self._interrupt_ns, self._interrupt_seq = ns, seq
            return out
        out += self._flush_interrupts()
        for name, data in self._translate(kind, ev, ns):
            out += self._emit(name, data, seq)
        return out

    def finish(self, result: Result | None) -> list[bytes]:
        """The last frames: pending interrupts, then ``error`` when the run failed."""
        out = self._flush_interrupts()
        if result is not None and result.status in FAILED:
            out += self._emit("error", error_data(result), self._finished_seq)
        return out

    def _emit(self, name: str, data: Any, seq: int | None) -> list[bytes]:
        if seq is not None and self.after is not None and seq <= self.after:
            return []
        return [frame(name, data, seq)]

    def _flush_interrupts(self) -> list[bytes]:
        if not self._interrupts:
            return []
        items, self._interrupts = self._interrupts, []
        mode = "updates" if "updates" in self.modes else "values"
        return self._emit(_named(mode, self._interrupt_ns), {"__interrupt__": items},
                          self._interrupt_seq)

    def _translate(self, kind: str, ev: Mapping[str, Any], ns: list[str]) -> list[tuple[str, Any]]:
        data = ev.get("data")
        if kind == "run_started":
            attempt = data.get("attempt") if isinstance(data, Mapping) else None
            return [("metadata", {"run_id": self.run_id,
                                  "attempt": attempt if isinstance(attempt, int) else 1})]
        if kind == "run_finished":
            self._finished_seq = int(ev["seq"])
            at_breakpoint = isinstance(data, Mapping) and data.get("breakpoint") is not None
            if at_breakpoint and "updates" in self.modes:
                return [("updates", {"__interrupt__": []})]
            return []
        if kind == "values" and not ns:
            self.last_values = data
        if kind == "message":
            return self._message(ev, ns)
        mode = _MODE_OF.get(kind)
        if mode is None or mode not in self.modes:
            return []
        if kind == "node":
            update: dict[str, Any] = {str(ev.get("node")): data}
            if ev.get("cached"):
                update["__metadata__"] = {"cached": True}
            data = update
        elif kind == "debug":
            data = debug_payload(data)
        return [(_named(mode, ns), data)]

    def _message(self, ev: Mapping[str, Any], ns: list[str]) -> list[tuple[str, Any]]:
        data = ev.get("data")
        meta = ev.get("langgraph") or {}
        if "messages-tuple" in self.modes:
            return [(_named("messages", ns), [data, meta])]
        if "messages" not in self.modes:
            return []
        out: list[tuple[str, Any]] = []
        message_id = data.get("id") if isinstance(data, Mapping) else None
        chunk = _chunk(data)
        if message_id not in self._messages:
            out.append(("messages/metadata", {message_id: {"metadata": meta}}))
            self._messages[message_id] = chunk if chunk is not None else data
        elif chunk is not None and isinstance(self._messages[message_id], BaseMessageChunk):
            self._messages[message_id] = self._messages[message_id] + chunk
        else:
            self._messages[message_id] = chunk if chunk is not None else data
        if chunk is None:
            return [*out, ("messages/complete", [data])]
        whole = message_chunk_to_message(self._messages[message_id])
        return [*out, ("messages/partial", [whole.model_dump()])]


_MODE_OF = {"node": "updates", "values": "values", "custom": "custom", "task": "tasks",
            "checkpoint": "checkpoints", "debug": "debug"}


def _named(mode: str, ns: list[str]) -> str:
    return "|".join([mode, *ns]) if ns else mode


def _chunk(data: Any) -> BaseMessageChunk | None:
    """The LangChain chunk a ``message`` event carries, or None for a whole message."""
    if not isinstance(data, Mapping):
        return None
    cls = _CHUNKS.get(str(data.get("type")))
    if cls is None:
        return None
    try:
        return cls.model_validate(dict(data))
    except ValidationError:
        return None


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[Any] = set()
    out = []
    for item in items:
        key = item.get("id") or id(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def debug_payload(data: Any) -> Any:
    """A ``debug`` event's data as the Agent Server sends it: a checkpoint's payload gains
    ``checkpoint`` and ``parent_checkpoint`` (``{thread_id, checkpoint_ns, checkpoint_id,
    checkpoint_map}``), and each task's ``state`` config becomes its ``checkpoint``."""
    if not isinstance(data, Mapping) or data.get("type") != "checkpoint":
        return data
    payload = data.get("payload")
    if not isinstance(payload, Mapping):
        return data
    tasks = [_debug_task(task) for task in payload.get("tasks") or []]
    return {**data, "payload": {
        **payload,
        "checkpoint": _config_checkpoint(payload.get("config")),
        "parent_checkpoint": _config_checkpoint(payload.get("parent_config")),
        "tasks": tasks,
    }}


def _debug_task(task: Any) -> Any:
    if not isinstance(task, Mapping):
        return task
    state = task.get("state")
    if not isinstance(state, Mapping) or not state.get("configurable"):
        return task
    out = {k: v for k, v in task.items() if k != "state"}
    out["checkpoint"] = state["configurable"]
    return out


def _config_checkpoint(config: Any) -> dict[str, Any] | None:
    configurable = config.get("configurable") if isinstance(config, Mapping) else None
    if (not isinstance(configurable, Mapping) or not configurable.get("thread_id")
            or not configurable.get("checkpoint_id")):
        return None
    out = {"checkpoint_id": configurable["checkpoint_id"], "thread_id": configurable["thread_id"]}
    if "checkpoint_ns" in configurable:
        out["checkpoint_ns"] = configurable["checkpoint_ns"] or ""
    if "checkpoint_map" in configurable:
        out["checkpoint_map"] = configurable["checkpoint_map"]
    return out
