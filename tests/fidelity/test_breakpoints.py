"""Fidelity: breakpoints, null input, any-JSON input, ``context`` and resume refusals.

Each graph runs directly (``InMemorySaver``) and through a real runner (broker, Redis,
PostgreSQL); statuses, final states and where a run stopped must match, and what LangGraph
refuses is ``rejected`` with its reason and a dead letter, the partition going on.
"""

from __future__ import annotations

import operator
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.func import entrypoint
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.runner.threadstate import earlier_attempt
from graphwire.processors.settings import Settings
from graphwire.topics.models import Request
from graphwire.topics.specs import TopicNames
from tests.fidelity.turns import Turns
from tests.helpers import runner_for
from tests.kafka_helpers import request

pytestmark = pytest.mark.integration


class Steps(TypedDict):
    path: Annotated[list[str], operator.add]


def _step(name: str) -> Any:
    async def node(state: Steps) -> dict[str, Any]:
        return {"path": [name]}
    return node


def chain(checkpointer: Any = None, **compile_args: Any) -> Any:
    """a -> b -> c, each appending its name."""
    builder = StateGraph(Steps)
    for name in "abc":
        builder.add_node(name, _step(name))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", "c")
    return builder.compile(checkpointer=checkpointer, **compile_args)


class Asks(TypedDict):
    answers: Annotated[list[Any], operator.add]


def _asker(name: str) -> Any:
    async def node(state: Asks) -> dict[str, Any]:
        return {"answers": [(name, interrupt(f"{name}?"))]}
    return node


def two_questions(checkpointer: Any = None) -> Any:
    """Two parallel nodes, each asking its own question."""
    builder = StateGraph(Asks)
    builder.add_node("p", _asker("p"))
    builder.add_node("q", _asker("q"))
    builder.add_edge(START, "p")
    builder.add_edge(START, "q")
    return builder.compile(checkpointer=checkpointer)


@dataclass
class Who:
    user: str
    lang: str = "en"


class Greeting(TypedDict):
    text: str


async def greet(state: Greeting, runtime: Runtime[Who]) -> dict[str, Any]:
    return {"text": f"{state['text']} {runtime.context.user} ({runtime.context.lang})"}


def greeter(checkpointer: Any = None) -> Any:
    """A node that reads ``runtime.context``."""
    builder = StateGraph(Greeting, context_schema=Who)
    builder.add_node("greet", greet)
    builder.add_edge(START, "greet")
    return builder.compile(checkpointer=checkpointer)


def doubler(checkpointer: Any = None) -> Any:
    """A functional-API entrypoint that takes any JSON value."""
    @entrypoint(checkpointer=checkpointer)
    async def double(value: Any) -> dict[str, Any]:
        return {"result": value * 2}
    return double


def _registry() -> GraphRegistry:
    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("chain", chain())
    registry.register("chain-before-b", chain(interrupt_before=["b"]))
    registry.register("two-questions", two_questions())
    registry.register("greeter", greeter())
    registry.register("doubler", doubler())
    return registry


def _thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": f"{name}-{uuid.uuid4().hex[:8]}"}}


async def test_breakpoints_stop_where_langgraph_stops_and_null_input_continues(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """A compiled ``interrupt_before=["b"]`` stops before b ({"path": ["a"]}, next ["b"]) both
    ways; ``input: null`` on the thread continues to a, b, c as ``invoke(None)`` does. A
    request's ``interrupt_after: ["a"]`` and ``interrupt_before: "*"`` stop where
    ``astream(interrupt_after=...)`` / ``interrupt_before="*"`` stop. Through graphwire the
    result is ``interrupted`` with ``interrupts: []``, ``next`` and ``breakpoint``."""
    compiled = chain(InMemorySaver(), interrupt_before=["b"])
    c1 = _thread("d1")
    first = await compiled.ainvoke({"path": []}, c1)
    first_next = (await compiled.aget_state(c1)).next
    second = await compiled.ainvoke(None, c1)
    plain = chain(InMemorySaver())
    c2, c3 = _thread("d2"), _thread("d3")
    after_a = await plain.ainvoke({"path": []}, c2, interrupt_after=["a"])
    after_next = (await plain.aget_state(c2)).next
    after_rest = await plain.ainvoke(None, c2, interrupt_after=["a"])
    star = await plain.ainvoke({"path": []}, c3, interrupt_before="*")
    star_next = (await plain.aget_state(c3)).next
    assert (first, first_next, second) == (
        {"path": ["a"]}, ("b",), {"path": ["a", "b", "c"]})
    assert (after_a, after_next, after_rest) == (
        {"path": ["a"]}, ("b",), {"path": ["a", "b", "c"]})
    assert (star, star_next) == ({"path": []}, ("a",))

    async with runner_for(settings, _registry()), Turns(bootstrap, topics) as turns:
        t1, t2, t3 = f"t1-{uuid.uuid4().hex[:6]}", f"t2-{uuid.uuid4().hex[:6]}", \
            f"t3-{uuid.uuid4().hex[:6]}"
        r1, _ = await turns.send(request("bp-1", "chain-before-b", input={"path": []},
                                         thread_id=t1))
        r2, events2 = await turns.send(request("bp-2", "chain-before-b", input=None,
                                               thread_id=t1))
        r3, _ = await turns.send(request("bp-3", "chain", input={"path": []}, thread_id=t2,
                                         interrupt_after=["a"]))
        r4, _ = await turns.send(request("bp-4", "chain", input=None, thread_id=t2,
                                         interrupt_after=["a"]))
        r5, _ = await turns.send(request("bp-5", "chain", input={"path": []}, thread_id=t3,
                                         interrupt_before="*"))
    shape = [(r["status"], r["interrupts"], r["next"], r["breakpoint"], r["output"])
             for r in (r1, r2, r3, r4, r5)]
    assert shape == [
        ("interrupted", [], ["b"], "before", None),
        ("success", [], [], None, {"path": ["a", "b", "c"]}),
        ("interrupted", [], ["b"], "after", None),
        ("success", [], [], None, {"path": ["a", "b", "c"]}),
        ("interrupted", [], ["a"], "before", None),
    ]
    assert [(e["type"], e["node"], e["data"]) for e in events2] == [
        ("node", "b", {"path": ["b"]}), ("node", "c", {"path": ["c"]})]


async def test_any_json_input_and_context_reach_the_graph_as_langgraph_passes_them(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """An ``@entrypoint`` takes 3, [1, 2] and "ab" and returns {"result": 6}, [1, 2, 1, 2] and
    "abab" both ways; a node reads ``runtime.context`` from the request's ``context`` (the
    dataclass default fills ``lang``) as ``astream(context=...)`` gives it."""
    direct_double = doubler(InMemorySaver())
    direct = [await direct_double.ainvoke(v, _thread("dbl")) for v in (3, [1, 2], "ab")]
    greeted = await greeter().ainvoke({"text": "hi"}, context={"user": "ann"})
    assert direct == [{"result": 6}, {"result": [1, 2, 1, 2]}, {"result": "abab"}]
    assert greeted == {"text": "hi ann (en)"}

    async with runner_for(settings, _registry()), Turns(bootstrap, topics) as turns:
        outputs = [(await turns.send(request(f"in-{i}", "doubler", input=v)))[0]["output"]
                   for i, v in enumerate((3, [1, 2], "ab"))]
        ctx, _ = await turns.send(request("ctx-1", "greeter", input={"text": "hi"},
                                          context={"user": "ann"}))
    assert outputs == direct
    assert (ctx["status"], ctx["output"]) == ("success", greeted)


async def test_resumes_langgraph_refuses_are_rejected_and_the_thread_stays_answerable(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Directly, one resume value while two interrupts are pending is refused (LangGraph's
    strict resume: ``UnknownInterruptError``, reason ``ambiguous``). Through graphwire it is
    ``rejected`` naming both pending ids, dead-lettered, and the same thread then resumes by
    id to the state LangGraph reaches; a resume on a thread with nothing pending, a null
    resume, and null input on an empty thread are ``rejected`` with their reasons."""
    direct = two_questions(InMemorySaver())
    cfg = _thread("q")
    await direct.ainvoke({"answers": []}, cfg)
    pending = {i.value: i.id for i in (await direct.aget_state(cfg)).interrupts}
    final = await direct.ainvoke(Command(resume={pending["p?"]: "P", pending["q?"]: "Q"}), cfg)
    assert sorted(map(tuple, final["answers"])) == [("p", "P"), ("q", "Q")]

    thread = f"q-{uuid.uuid4().hex[:6]}"
    async with runner_for(settings, _registry()), Turns(bootstrap, topics) as turns:
        asked, _ = await turns.send(request("q-1", "two-questions", input={"answers": []},
                                            thread_id=thread))
        ids = {i["value"]: i["id"] for i in asked["interrupts"]}
        one, _ = await turns.send(request("q-2", "two-questions", input=None, thread_id=thread,
                                          command={"resume": "both"}))
        null, _ = await turns.send(request("q-3", "two-questions", input=None,
                                           thread_id=thread, command={"resume": None}))
        done, _ = await turns.send(request("q-4", "two-questions", input=None, thread_id=thread,
                                           command={"resume": {ids["p?"]: "P", ids["q?"]: "Q"}}))
        again, _ = await turns.send(request("q-5", "two-questions", input=None,
                                            thread_id=thread, command={"resume": "late"}))
        empty, _ = await turns.send(request("q-6", "chain", input=None,
                                            thread_id=f"empty-{uuid.uuid4().hex[:6]}"))
        reasons = {rid: turns.dead_letters(rid) for rid in ("q-2", "q-3", "q-5", "q-6")}
    assert asked["status"] == "interrupted"
    assert sorted((i["value"], i["node"], i["ns"]) for i in asked["interrupts"]) == [
        ("p?", "p", []), ("q?", "q", [])]
    pending_ids = ", ".join(sorted(ids.values()))
    assert (one["status"], one["error"]) == ("rejected", {
        "type": "UnknownInterrupt",
        "message": f"several interrupts are pending ({pending_ids}): resume with a map of "
                   'interrupt id to value, e.g. {"resume": {"<id>": ...}}'})
    assert (null["status"], null["error"]["message"]) == ("rejected", (
        "invalid request: command: command has nothing to do: 'resume' is null and "
        "there is no 'update' or "
        "'goto'; to continue a thread from a breakpoint, send 'input': null without a command"))
    assert (done["status"], sorted(map(tuple, done["output"]["answers"]))) == (
        "success", [("p", "P"), ("q", "Q")])
    assert (again["status"], again["error"]["type"]) == ("rejected", "NothingToResume")
    assert (empty["status"], empty["error"]) == ("rejected", {
        "type": "NothingToContinue",
        "message": f"thread {empty['thread_id']!r} has no state to continue (input null): "
                   "start it with an 'input'"})
    assert {rid: len(r) for rid, r in reasons.items()} == {"q-2": 1, "q-3": 1, "q-5": 1,
                                                          "q-6": 1}


async def test_a_redelivery_reads_a_breakpoint_from_the_checkpoint_and_never_runs_past_it(
) -> None:
    """What a crashed start left at a breakpoint is read back as ``interrupted`` (``next``
    ["b"], ``breakpoint`` "before" for the compiled one, "after" for a request's
    ``interrupt_after: ["a"]``), so the redelivery answers instead of resuming past it; a thread
    whose last run just continued past the breakpoint reads as finished."""
    compiled = chain(InMemorySaver(), interrupt_before=["b"])
    c1 = {**_thread("r1"), "metadata": {"graphwire_request_id": "r-1"}}
    await compiled.ainvoke({"path": []}, c1)
    before = await earlier_attempt(compiled, c1, Request(
        request_id="r-1", graph="chain", input={"path": []}, thread_id="x"))
    plain = chain(InMemorySaver())
    c2 = {**_thread("r2"), "metadata": {"graphwire_request_id": "r-2"}}
    await plain.ainvoke({"path": []}, c2, interrupt_after=["a"])
    after = await earlier_attempt(plain, c2, Request(
        request_id="r-2", graph="chain", input={"path": []}, thread_id="x",
        interrupt_after=["a"]))
    c3 = {**c1, "metadata": {"graphwire_request_id": "r-3"}}
    await compiled.ainvoke(None, c3)
    done = await earlier_attempt(compiled, c3, Request(
        request_id="r-3", graph="chain", input=None, thread_id="x"))
    assert (before.status, before.next, before.breakpoint) == ("interrupted", ["b"], "before")
    assert (after.status, after.next, after.breakpoint) == ("interrupted", ["b"], "after")
    assert (done.status, done.output) == ("success", {"path": ["a", "b", "c"]})
