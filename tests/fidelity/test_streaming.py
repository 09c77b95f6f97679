"""Fidelity: what a run streams, compared with ``graph.astream`` on the same graph.

Subgraph events with their ``ns``, message chunks as LangChain serializes them with
LangGraph's metadata, the ``tasks``/``checkpoints``/``debug`` modes, node-cache writes marked
``cached``, and interrupts that carry their ``response_schema``.
"""

from __future__ import annotations

import operator
import re
import uuid
from typing import Annotated, Any

import orjson
import pytest
from langchain_core.messages import HumanMessage
from langgraph.cache.memory import InMemoryCache
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import CachePolicy, Command, interrupt
from pydantic import BaseModel
from typing_extensions import TypedDict

from graphwire.graphs.chat import ScriptedChatModel, add
from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.fidelity.turns import Turns
from tests.helpers import runner_for
from tests.kafka_helpers import request

pytestmark = pytest.mark.integration


async def think(state: MessagesState) -> dict[str, Any]:
    get_stream_writer()({"thinking": "2 + 3"})
    model = ScriptedChatModel().bind_tools([add])
    return {"messages": [await model.ainvoke([HumanMessage("2 + 3")])]}


async def say(state: MessagesState) -> dict[str, Any]:
    return {"messages": [await ScriptedChatModel().ainvoke([HumanMessage("hi there")])]}


async def wrap(state: MessagesState) -> dict[str, Any]:
    get_stream_writer()({"done": len(state["messages"])})
    return {}


def agent_in_subgraph(checkpointer: Any = None) -> Any:
    """agent (a subgraph: think -> say, a tool call then tokens) -> wrap."""
    inner = StateGraph(MessagesState)
    inner.add_node("think", think)
    inner.add_node("say", say)
    inner.add_edge(START, "think")
    inner.add_edge("think", "say")
    outer = StateGraph(MessagesState)
    outer.add_node("agent", inner.compile())
    outer.add_node("wrap", wrap)
    outer.add_edge(START, "agent")
    outer.add_edge("agent", "wrap")
    return outer.compile(checkpointer=checkpointer)


class Num(TypedDict):
    x: int
    calls: Annotated[list[int], operator.add]


async def square(state: Num) -> dict[str, Any]:
    return {"x": state["x"] ** 2, "calls": [1]}


def cached_square() -> Any:
    builder = StateGraph(Num)
    builder.add_node("square", square, cache_policy=CachePolicy(ttl=600))
    builder.add_edge(START, "square")
    return builder.compile(cache=InMemoryCache())


class Decision(BaseModel):
    ok: bool


class Asked(TypedDict):
    ok: bool


async def approve(state: Asked) -> dict[str, Any]:
    answer = interrupt("approve?", response_schema=Decision)
    return {"ok": answer.ok}


def approval(checkpointer: Any = None) -> Any:
    builder = StateGraph(Asked)
    builder.add_node("approve", approve)
    builder.add_edge(START, "approve")
    return builder.compile(checkpointer=checkpointer)


def _registry() -> GraphRegistry:
    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("agent-sub", agent_in_subgraph())
    registry.register("cached-square", cached_square())
    registry.register("approval", approval())
    return registry


def _expected(parts: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """graphwire's events for LangGraph's stream parts, by the contract's mapping (the spec,
    written here independently of the runner): ``(type, node, ns, data[, langgraph])``."""
    out: list[tuple[Any, ...]] = []
    for ns, mode, chunk in parts:
        ns = list(ns)
        if mode == "updates":
            out += [("node", node, ns, update) for node, update in chunk.items()
                    if node not in ("__interrupt__", "__metadata__")]
        elif mode == "custom":
            out.append(("custom", None, ns, chunk))
        elif mode == "messages":
            message, meta = chunk
            out.append(("message", meta["langgraph_node"], ns, message.model_dump(),
                        meta["langgraph_step"], meta["langgraph_checkpoint_ns"]))
    return out


def _through(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        row: tuple[Any, ...] = (e["type"], e["node"], e["ns"], e["data"])
        if e["type"] == "message":
            row += (e["langgraph"]["langgraph_step"], e["langgraph"]["langgraph_checkpoint_ns"])
        out.append(row)
    return out


_UUID_TEXT = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_TASK_ID = re.compile(rf"([A-Za-z0-9_-]+):{_UUID_TEXT}")
_RUN_ID = re.compile(rf"lc_run--{_UUID_TEXT}(?:-\d+)?")
_UUID = re.compile(rf'"{_UUID_TEXT}"')


def _normalised(rows: list[tuple[Any, ...]]) -> Any:
    """JSON round trip; subgraph task ids, LangChain run ids and other UUIDs (message ids)
    replaced by their order of first appearance."""
    text = orjson.dumps(rows, default=lambda o: o.model_dump(mode="json")).decode()
    seen: dict[str, str] = {}

    def number(match: re.Match[str]) -> str:
        if match.re is _UUID:
            return seen.setdefault(match.group(0), f'"uuid:#{len(seen)}"')
        name = match.group(1) if match.re is _TASK_ID else "lc_run"
        return seen.setdefault(match.group(0), f"{name}:#{len(seen)}")

    text = _RUN_ID.sub(number, _TASK_ID.sub(number, text))
    return orjson.loads(_UUID.sub(number, text))


async def test_subgraph_events_tokens_and_tool_calls_stream_as_astream_gives_them(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """With ``subgraphs: true`` the events are exactly ``astream(subgraphs=True)``'s parts by
    the contract's mapping, in order: the inner custom event, the tool-call chunk with its
    ``tool_call_chunks`` and usage, each token with LangChain's whole serialization, the inner
    node updates, each with its ``ns`` ("agent:<task>") and LangGraph's step and checkpoint
    ns; then the parent's updates with ``ns: []``. Without the flag: only the top graph's
    parts, every event with ``ns: []``."""
    modes = ["updates", "custom", "messages"]
    graph = agent_in_subgraph(InMemorySaver())
    start = {"messages": [{"type": "human", "content": "go"}]}
    deep = [p async for p in graph.astream(start, {"configurable": {"thread_id": "a"}},
                                           stream_mode=modes, subgraphs=True)]
    flat = [((), mode, chunk) async for mode, chunk in graph.astream(
        start, {"configurable": {"thread_id": "b"}}, stream_mode=modes)]
    expected_deep, expected_flat = _normalised(_expected(deep)), _normalised(_expected(flat))
    inner = [row for row in expected_deep if row[2]]
    assert [(r[0], r[1]) for r in inner][:2] == [("custom", None), ("message", "think")]
    assert inner[1][3]["tool_call_chunks"][0]["name"] == "add"
    assert all(len(row[2]) == 1 and row[2][0].startswith("agent:") for row in inner)

    async with runner_for(settings, _registry()), Turns(bootstrap, topics) as turns:
        _, deep_events = await turns.send(request(
            "sub-1", "agent-sub", input=start, stream=modes, subgraphs=True,
            thread_id=f"s-{uuid.uuid4().hex[:6]}"))
        _, flat_events = await turns.send(request(
            "sub-2", "agent-sub", input=start, stream=modes,
            thread_id=f"s-{uuid.uuid4().hex[:6]}"))
    assert _normalised(_through(deep_events)) == expected_deep
    assert _normalised(_through(flat_events)) == expected_flat
    assert {tuple(e["ns"]) for e in flat_events} == {()}


async def test_tasks_checkpoints_and_debug_modes_carry_langgraphs_payloads(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """``tasks``, ``checkpoints`` and ``debug`` become ``task``, ``checkpoint`` and ``debug``
    events in astream's order with its payloads: each task's name and whether it starts or
    ends, each checkpoint's step, next nodes and values, each debug entry's type and step."""
    modes = ["tasks", "checkpoints", "debug"]
    graph = approval(InMemorySaver())  # one node; stops at its interrupt
    parts = [(mode, chunk) async for mode, chunk in graph.astream(
        {"ok": False}, {"configurable": {"thread_id": "m"}}, stream_mode=modes)]

    def shape(mode: str, data: dict[str, Any]) -> tuple[Any, ...]:
        if mode in ("tasks", "task"):
            return ("task", data["name"], "result" in data, data.get("error"))
        if mode in ("checkpoints", "checkpoint"):
            return ("checkpoint", data["metadata"]["step"], list(data["next"]),
                    data["values"])
        return ("debug", data["type"], data["step"])

    expected = [shape(mode, orjson.loads(orjson.dumps(chunk, default=str)))
                for mode, chunk in parts]
    async with runner_for(settings, _registry()), Turns(bootstrap, topics) as turns:
        result, events = await turns.send(request(
            "modes-1", "approval", input={"ok": False}, stream=modes,
            thread_id=f"m-{uuid.uuid4().hex[:6]}"))
    got = [shape(e["type"], e["data"]) for e in events if e["type"] != "interrupt"]
    assert got == expected
    assert [e["type"] for e in events].count("task") == 1 + 1  # approve starts, then interrupts
    assert result["status"] == "interrupted"


async def test_node_cache_hits_say_cached_and_no_node_is_named_metadata(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """A graph compiled with its own node cache keeps it: the second identical run's update
    comes from the cache both ways (LangGraph's ``__metadata__: {"cached": true}``), and
    through graphwire it is the ``square`` node event with ``cached: true``; no event names a
    node ``__metadata__``."""
    graph = cached_square()
    direct = [[c async for c in graph.astream({"x": 4, "calls": []}, stream_mode="updates")]
              for _ in range(2)]
    assert direct == [[{"square": {"x": 16, "calls": [1]}}],
                      [{"square": {"x": 16, "calls": [1]}, "__metadata__": {"cached": True}}]]
    async with runner_for(settings, _registry()), Turns(bootstrap, topics) as turns:
        runs = [await turns.send(request(f"sq-{i}", "cached-square",
                                         input={"x": 4, "calls": []})) for i in range(2)]
    nodes = [[(e["node"], e["data"], e.get("cached", False)) for e in events
              if e["type"] == "node"] for _result, events in runs]
    assert nodes == [[("square", {"x": 16, "calls": [1]}, False)],
                     [("square", {"x": 16, "calls": [1]}, True)]]
    assert [r["output"] for r, _ in runs] == [{"x": 16, "calls": [1]}] * 2


async def test_an_interrupt_carries_its_schema_and_a_bad_resume_leaves_it_answerable(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """The interrupt (result and event) carries LangGraph's JSON Schema for the answer, its
    node and ns; a resume that fails the schema is ``rejected`` with pydantic's message and a
    dead letter while the thread stays interrupted (as LangGraph leaves it); a valid resume
    then finishes with the state LangGraph reaches."""
    graph = approval(InMemorySaver())
    cfg = {"configurable": {"thread_id": "r"}}
    await graph.ainvoke({"ok": False}, cfg)
    (pending,) = (await graph.aget_state(cfg)).interrupts
    with pytest.raises(Exception, match="Decision"):
        await graph.ainvoke(Command(resume="bad"), cfg)
    still = [i.id for i in (await graph.aget_state(cfg)).interrupts]
    final = await graph.ainvoke(Command(resume={"ok": True}), cfg)
    assert (still, final) == ([pending.id], {"ok": True})

    thread = f"r-{uuid.uuid4().hex[:6]}"
    async with runner_for(settings, _registry()), Turns(bootstrap, topics) as turns:
        asked, asked_events = await turns.send(request("ap-1", "approval", input={"ok": False},
                                                       thread_id=thread))
        bad, _ = await turns.send(request("ap-2", "approval", input=None, thread_id=thread,
                                          command={"resume": "bad"}))
        good, _ = await turns.send(request("ap-3", "approval", input=None, thread_id=thread,
                                           command={"resume": {"ok": True}}))
        dead = turns.dead_letters("ap-2")
    (item,) = asked["interrupts"]
    assert (item["value"], item["node"], item["ns"], item["response_schema"]) == (
        "approve?", "approve", [], pending.response_schema)
    assert [e["data"] for e in asked_events if e["type"] == "interrupt"] == [item]
    assert (bad["status"], bad["error"]["type"]) == ("rejected", "InvalidResume")
    assert bad["error"]["message"] == (
        "the resume value does not match the interrupt's response_schema: value: Input should "
        "be a valid dictionary or instance of Decision; the interrupt is still pending: answer "
        "it again")
    assert len(dead) == 1
    assert (good["status"], good["output"]) == ("success", final)
