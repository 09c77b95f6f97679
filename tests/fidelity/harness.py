"""The differential fidelity harness: run a graph as LangGraph does and through graphwire, compare.

A test builds one small graph and a list of :class:`Turn` (an input, or a command: resume by
interrupt id, update, goto), then:

- :func:`direct` runs the turns on one thread with ``graph.astream`` (``InMemorySaver``,
  ``InMemoryStore``) and derives the graphwire events that run *should* produce from LangGraph's
  raw chunks, with a mapping of its own (the spec; it does not import graphwire's translation);
- :func:`through_worker` produces the same turns as requests to a real runner (broker, Redis,
  PostgreSQL) and reads what came back: the results, the events of each request, and the
  thread's state as LangGraph's own ``AsyncPostgresSaver`` reads it from graphwire's checkpoints;
- :func:`normalise` makes both comparable with ``==``: JSON round trip, ids replaced by
  ``#<n>`` in order of first appearance, the events of one superstep as a sorted list.

Why steps are compared as sorted lists: parallel tasks of one superstep (a ``Send`` fan-out)
finish in any order, so their ``node``/``custom``/``interrupt`` events may come in any order
within the step, never across steps. The direct side also streams LangGraph's ``debug`` mode
(not turned into events): every debug chunk carries its ``step``, so each event belongs to the
step of the last debug chunk before it, and the direct events come grouped by step. graphwire's
events carry no step: the worker's flat list is cut into consecutive slices of the direct
steps' sizes and each slice is sorted. That accepts exactly the worker sequences that are a
concatenation of some order of each step's events (a slice holding another step's event no
longer equals that step's sorted events, and a different count fails as a whole).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, Interrupt
from pydantic import BaseModel

from tests.kafka_helpers import Collector, encode, produce, request

Resume = Any | Callable[[list[dict[str, Any]]], Any]
"""A resume value, or a function of the pending interrupts (``[{"id", "value"}]``, this side's
ids) that returns it, e.g. ``{id: answer}`` for several interrupts."""

HIDDEN_EVENTS = {"run_started", "run_finished", "effect"}
"""graphwire's own events, which have no LangGraph counterpart."""


@dataclass(frozen=True)
class Turn:
    """One request on the thread: ``input``, or a command (``resume``/``update``/``goto``)."""

    input: Any = None
    resume: Resume = None
    update: Any = None
    goto: Any = None
    is_command: bool = False

    @classmethod
    def command(cls, *, resume: Resume = None, update: Any = None, goto: Any = None) -> Turn:
        """A ``Command`` turn; ``resume`` may be a function of the pending interrupts."""
        return cls(resume=resume, update=update, goto=goto, is_command=True)

    def fields(self, pending: list[dict[str, Any]]) -> dict[str, Any]:
        """graphwire's ``command`` field (resume resolved against ``pending``)."""
        resume = self.resume(pending) if callable(self.resume) else self.resume
        spec = {"resume": resume, "update": self.update, "goto": self.goto}
        return {k: v for k, v in spec.items() if v is not None}


def resume_each(answer: Callable[[Any], Any]) -> Callable[[list[dict[str, Any]]], Any]:
    """Resume every pending interrupt by id: ``{id: answer(value)}``."""
    return lambda pending: {i["id"]: answer(i["value"]) for i in pending}


@dataclass
class TurnOutcome:
    """What one turn ended with, on either side."""

    status: str
    """``success``, ``interrupted`` or ``error``."""
    state: Any
    """The thread's state values after the turn (``aget_state(...).values``)."""
    output: Any
    """The final state on ``success`` (what ``ainvoke`` returns), else None."""
    interrupts: list[dict[str, Any]]
    """The pending interrupts, ``{"id", "value"}`` each."""
    error: str | None
    """The error's type name on ``error``."""
    events: list[list[tuple[str, str | None, list[str], Any]]] = field(default_factory=list)
    """``(type, node, ns, data)``: grouped by superstep on the direct side; one flat group on
    the worker side (:func:`normalise` cuts it like the direct side's)."""


def jsonable(value: Any) -> Any:
    """``value`` as JSON would carry it: pydantic models (LangChain messages) by their
    ``model_dump(mode="json")``, dataclasses and tuples as orjson writes them."""

    def default(obj: Any) -> Any:
        if isinstance(obj, BaseModel):
            return obj.model_dump(mode="json")
        if isinstance(obj, set | frozenset):
            return sorted(obj)
        raise TypeError(f"no JSON for {type(obj).__name__}")

    return orjson.loads(orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS))


def message_fields(message: Any) -> dict[str, Any]:
    """A message chunk as LangChain serializes it (every field it carries)."""
    if isinstance(message, BaseMessage):
        return dict(jsonable(message))
    return {"content": jsonable(message)}


def _interrupt(item: Any) -> dict[str, Any]:
    if isinstance(item, Interrupt):
        return {"id": item.id, "value": item.value}
    return {"id": None, "value": item}


def expected_events(
    mode: str, chunk: Any, ns: Sequence[str]
) -> list[tuple[str, str | None, list[str], Any]]:
    """The graphwire events one LangGraph stream chunk should become (the spec)."""
    where = [str(segment) for segment in ns]
    if mode == "updates":
        out: list[tuple[str, str | None, list[str], Any]] = []
        for node, update in chunk.items():
            if node == "__interrupt__":
                out += [("interrupt", None, where, _interrupt(i)) for i in update or ()]
            elif node != "__metadata__":
                out.append(("node", node, where, update))
        return out
    if mode == "custom":
        return [("custom", None, where, chunk)]
    if mode == "values":
        return [("values", None, where, chunk)]
    if mode == "messages":
        message, meta = chunk
        return [("message", meta.get("langgraph_node"), where, message_fields(message))]
    return []


def _direct_config(thread: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """A request's ``config`` field as the ``RunnableConfig`` LangGraph takes."""
    config = dict(config or {})
    configurable = {**config.pop("configurable", {}), "thread_id": thread}
    return {"configurable": configurable, **config}


async def direct(
    graph: Any,
    turns: Sequence[Turn],
    *,
    stream: Sequence[str] = ("updates",),
    subgraphs: bool = False,
    config: dict[str, Any] | None = None,
    durability: str | None = None,
    thread: str | None = None,
) -> list[TurnOutcome]:
    """Run ``turns`` on one thread of ``graph`` (given ``InMemorySaver`` and ``InMemoryStore``
    unless it has its own) with ``astream(stream + debug, subgraphs=...)``, as a user would."""
    updates: dict[str, Any] = {}
    if graph.checkpointer is None:
        updates["checkpointer"] = InMemorySaver()
    if graph.store is None:
        updates["store"] = InMemoryStore()
    graph = graph.copy(update=updates) if updates else graph
    cfg = _direct_config(thread or f"direct-{uuid.uuid4().hex}", config)
    extra: dict[str, Any] = {"durability": durability} if durability else {}
    modes = [*stream, "debug"]
    outcomes: list[TurnOutcome] = []
    pending: list[dict[str, Any]] = []
    for turn in turns:
        payload: Any = turn.input
        if turn.is_command:
            payload = Command(**turn.fields(pending))
        steps: list[list[tuple[str, str | None, list[str], Any]]] = []
        step: int | None = None
        status, error = "success", None
        try:
            async for item in graph.astream(payload, cfg, stream_mode=modes,
                                            subgraphs=subgraphs, **extra):
                ns, mode, chunk = item if subgraphs else ((), *item)
                if mode == "debug":
                    if not ns and chunk["step"] != step:
                        step = chunk["step"]
                        steps.append([])
                    continue
                if not steps:
                    steps.append([])
                steps[-1] += expected_events(mode, chunk, ns)
        except Exception as exc:  # the graph's failure is the turn's outcome
            status, error = "error", type(exc).__name__
        snapshot = await graph.aget_state(cfg)
        pending = [_interrupt(i) for i in snapshot.interrupts]
        if status == "success" and pending:
            status = "interrupted"
        outcomes.append(TurnOutcome(
            status=status, state=snapshot.values,
            output=snapshot.values if status == "success" else None,
            interrupts=pending, error=error, events=[s for s in steps if s],
        ))
    return outcomes


@dataclass
class Worker:
    """A running runner of the module, what it serves and what came back from it."""

    bootstrap: str
    requests_topic: str
    results_topic: str
    events_topic: str
    registry: Any
    collector: Collector
    saver: Any
    """LangGraph's ``AsyncPostgresSaver`` on the runner's checkpoint schema."""

    def result(self, request_id: str) -> dict[str, Any] | None:
        """The result of ``request_id``, if it came."""
        for value in self.collector.values(self.results_topic):
            if value["request_id"] == request_id:
                return dict(value)
        return None

    def events(self, request_id: str) -> list[dict[str, Any]]:
        """The events of ``request_id``, in seq order (graphwire's own included)."""
        found = [v for v in self.collector.values(self.events_topic)
                 if v["request_id"] == request_id]
        return sorted(found, key=lambda v: v["seq"])


def _worker_event(event: dict[str, Any]) -> tuple[str, str | None, list[str], Any]:
    data, node = event["data"], event["node"]
    if event["type"] == "interrupt":
        # compared on id and value; the raiser (``node``, ``data.node``/``ns``) and the
        # ``response_schema`` are checked in test_breakpoints.py and test_streaming.py
        data, node = {"id": data["id"], "value": data["value"]}, None
    return (event["type"], node, list(event.get("ns", [])), data)


async def through_worker(
    worker: Worker,
    graph_name: str,
    turns: Sequence[Turn],
    *,
    stream: Sequence[str] = ("updates",),
    config: dict[str, Any] | None = None,
    durability: str | None = None,
    thread: str | None = None,
    subgraphs: bool = False,
    timeout: float = 60.0,
) -> list[TurnOutcome]:
    """Produce ``turns`` as requests on one thread to ``worker`` (each after the last one's
    result) and read back results, events and the checkpointed state. ``subgraphs`` sets the
    request flag ``subgraphs: true`` (left out when False: requests without it run today)."""
    thread = thread or f"worker-{uuid.uuid4().hex}"
    graph = worker.registry.get(graph_name).copy(update={"checkpointer": worker.saver})
    outcomes: list[TurnOutcome] = []
    pending: list[dict[str, Any]] = []
    for turn in turns:
        rid = f"{thread}-{len(outcomes)}"
        fields: dict[str, Any] = {"thread_id": thread, "stream": list(stream)}
        if turn.is_command:
            fields.update(input=None, command=turn.fields(pending))
        else:
            fields["input"] = turn.input
        if config:
            fields["config"] = config
        if durability:
            fields["durability"] = durability
        if subgraphs:
            fields["subgraphs"] = True
        body = request(rid, graph_name, **fields)
        await produce(worker.bootstrap, worker.requests_topic, [(thread.encode(), encode(body))])
        await worker.collector.wait_until(
            lambda: worker.result(rid) is not None  # noqa: B023 (awaited in this iteration)
            and any(e["type"] == "run_finished" for e in worker.events(rid)),  # noqa: B023
            timeout,
        )
        result = worker.result(rid)
        assert result is not None
        snapshot = await graph.aget_state({"configurable": {"thread_id": thread}})
        pending = [{"id": i["id"], "value": i["value"]} for i in result["interrupts"]]
        events = [_worker_event(e) for e in worker.events(rid) if e["type"] not in HIDDEN_EVENTS]
        outcomes.append(TurnOutcome(
            status=result["status"], state=snapshot.values, output=result["output"],
            interrupts=pending, error=(result["error"] or {}).get("type"), events=[events],
        ))
    return outcomes


_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # uuids: task, message, run
    r"|(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])"  # interrupt ids (xxh3-128 hex)
)


class _Ids:
    """Replaces ids by ``#<n>`` in order of first appearance."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def _one(self, match: re.Match[str]) -> str:
        return self.seen.setdefault(match.group(0), f"#{len(self.seen)}")

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return _ID.sub(self._one, value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        return value


def _masked(value: Any) -> bytes:
    """A sort key that ignores ids (their numbering must not decide the order)."""
    return orjson.dumps(_ID.sub("#", orjson.dumps(value).decode()))


def normalise(
    outcomes: Sequence[TurnOutcome], like: Sequence[TurnOutcome] | None = None
) -> list[dict[str, Any]]:
    """``outcomes`` as JSON that compares with ``==``: events split into steps (as in ``like``,
    the direct side's, when given), each step sorted; ids numbered by first appearance; the
    pending interrupts sorted by value."""
    ids = _Ids()
    out = []
    for i, outcome in enumerate(outcomes):
        steps = [jsonable(s) for s in outcome.events]
        if like is not None and i < len(like):
            flat = [event for step in steps for event in step]
            steps = _cut(flat, [len(s) for s in like[i].events])
        steps = [sorted(step, key=_masked) for step in steps]
        interrupts = sorted(jsonable(outcome.interrupts), key=_masked)
        out.append(ids({
            "status": outcome.status,
            "error": outcome.error,
            "events": steps,
            "interrupts": interrupts,
            "state": jsonable(outcome.state),
            "output": jsonable(outcome.output),
        }))
    return out


def _cut(flat: list[Any], sizes: list[int]) -> list[list[Any]]:
    """``flat`` in consecutive slices of ``sizes``; one slice when the counts differ."""
    if sum(sizes) != len(flat):
        return [flat]
    steps, at = [], 0
    for size in sizes:
        steps.append(flat[at:at + size])
        at += size
    return steps


async def differential(
    worker: Worker,
    name: str,
    make: Callable[[], Any],
    turns: Sequence[Turn],
    **options: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Register ``make()`` as ``name`` on ``worker``, run ``turns`` on a fresh ``make()``
    directly and through the worker; both sides normalised (direct first)."""
    worker.registry.register(name, make())
    want = await direct(make(), turns, **options)
    got = await through_worker(worker, name, turns, **options)
    return normalise(want), normalise(got, like=want)
