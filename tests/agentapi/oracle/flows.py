"""The SDK flows run against both servers, each returning its transcript (un-normalised).

A flow is ``async def flow(side) -> dict``: it drives one server with the official
``langgraph_sdk`` (and ``httpx`` where a status code or a header is the point) and records the
answers by step name. tests/agentapi/test_oracle.py runs each flow on ``langgraph dev`` and on
graphwire and compares the two transcripts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from langgraph.pregel.remote import RemoteGraph
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import APIStatusError

PIPELINE_INPUT = {"text": "  Hello Kafka World "}
PIPELINE_VALUES = {"text": "hello kafka world", "tokens": ["hello", "kafka", "world"], "count": 3}
CHAT_INPUT = {"messages": [{"role": "user", "content": "what is 2 + 3?", "id": "msg-user-1"}]}

Flow = Callable[["Side"], Awaitable[dict[str, Any]]]
RunOnKafka = Callable[[str, str, Any], Awaitable[Any]]


@dataclass
class Side:
    """One server under test: its SDK client and a raw HTTP client on the same base URL.

    ``run_on_kafka`` (graphwire only, while it has no runs routes) runs a graph on a thread by
    producing the request to Kafka; otherwise runs go through ``runs.wait``."""

    name: str
    client: LangGraphClient
    http: httpx.AsyncClient
    run_on_kafka: RunOnKafka | None = None

    async def run(self, graph: str, thread_id: str, input: Any) -> Any:
        """Run ``graph`` on the thread to its end; its output."""
        if self.run_on_kafka is not None:
            return await self.run_on_kafka(graph, thread_id, input)
        return await self.client.runs.wait(thread_id, graph, input=input)


async def outcome(call: Awaitable[Any]) -> Any:
    """What an SDK call gave: its answer, or ``{"status", "body"}`` of the error it raised."""
    try:
        return await call
    except APIStatusError as error:
        return {"status": error.response.status_code, "body": worded(error.response.json())}


def answer(response: httpx.Response, *headers: str) -> dict[str, Any]:
    """A raw HTTP answer: status, JSON body (None when empty; an error's ``detail`` as
    ``<detail>``: the wording is each server's) and the named headers."""
    body = response.json() if response.content else None
    return {"status": response.status_code, "body": worded(body),
            **{h: response.headers.get(h) for h in headers}}


def worded(body: Any) -> Any:
    """An error body ``{"detail": str}`` as ``{"detail": "<detail>"}``."""
    if isinstance(body, dict) and list(body) == ["detail"] and isinstance(body["detail"], str):
        return {"detail": "<detail>"}
    return body


def run_record(run: Any) -> dict[str, Any]:
    """A Run as compared: its fields, and of its ``kwargs`` (each server's internals) the key
    set and the input, command and stream modes."""
    kwargs = run.get("kwargs") or {}
    return {**{k: v for k, v in run.items() if k != "kwargs"},
            "kwargs keys": sorted(kwargs),
            "kwargs": {k: kwargs.get(k) for k in ("input", "command", "stream_mode")}}


async def assistants(side: Side) -> dict[str, Any]:
    """``assistants.search`` (the system assistants by graph id), ``get`` by graph name and
    by id, ``get_graph`` (plain and ``xray``), ``get_schemas``, an unknown assistant."""
    c = side.client
    found = await c.assistants.search(metadata={"created_by": "system"}, sort_by="graph_id",
                                      sort_order="asc")
    pipeline_id = next(a["assistant_id"] for a in found if a["graph_id"] == "pipeline")
    page = await side.http.post("/assistants/search", json={
        "metadata": {"created_by": "system"}, "limit": 2, "sort_by": "graph_id",
        "sort_order": "asc"})
    return {
        "search": found,
        "search page": answer(page, "x-pagination-next", "x-pagination-total"),
        "get by name": await outcome(c.assistants.get("pipeline")),
        "get by id": await c.assistants.get(pipeline_id),
        "get_graph": await c.assistants.get_graph("pipeline"),
        "get_graph chat xray": await c.assistants.get_graph("chat", xray=True),
        "get_schemas": await c.assistants.get_schemas(pipeline_id),
        "get_schemas by name": await outcome(c.assistants.get_schemas("pipeline")),
        "get unknown": await outcome(c.assistants.get(str(uuid.uuid4()))),
    }


async def threads(side: Side) -> dict[str, Any]:
    """``threads.create`` (with an id and metadata; again: 409; ``do_nothing``), ``get``,
    ``update``, ``search`` by metadata with pagination headers, ``count``, an unknown thread,
    a bad thread id, ``delete``."""
    c = side.client
    marker = str(uuid.uuid4())
    given = str(uuid.uuid4())
    made = await c.threads.create(thread_id=given, metadata={"marker": marker})
    again = await outcome(c.threads.create(thread_id=given))
    same = await c.threads.create(thread_id=given, if_exists="do_nothing")
    other = await c.threads.create(metadata={"marker": marker, "n": 2})
    page = await side.http.post("/threads/search", json={
        "metadata": {"marker": marker}, "limit": 1, "sort_by": "created_at", "sort_order": "asc"})
    return {
        "create": made,
        "create again": again,
        "create do_nothing": same,
        "get": await c.threads.get(given),
        "update": await c.threads.update(given, metadata={"n": 1}),
        "search": await c.threads.search(metadata={"marker": marker}, sort_by="created_at",
                                         sort_order="asc"),
        "search page": answer(page, "x-pagination-next", "x-pagination-total"),
        "count": await c.threads.count(metadata={"marker": marker}),
        "get unknown": await outcome(c.threads.get(str(uuid.uuid4()))),
        "get bad id": await outcome(c.threads.get("not-a-uuid")),
        "delete": answer(await side.http.delete(f"/threads/{other['thread_id']}")),
        "get deleted": await outcome(c.threads.get(other["thread_id"])),
    }


async def state(side: Side) -> dict[str, Any]:
    """A ``pipeline`` thread: state before anything ran, then after a run (``get_state``,
    the thread record, ``get_history`` newest first, the state at the first checkpoint,
    RemoteGraph's ``aget_state``), ``update_state`` as ``count`` and the state and thread
    after it."""
    c = side.client
    thread = await c.threads.create(graph_id="pipeline")
    tid = thread["thread_id"]
    empty = await c.threads.get_state(tid)
    output = await side.run("pipeline", tid, PIPELINE_INPUT)
    after = await c.threads.get_state(tid)
    history = await c.threads.get_history(tid)
    remote = await RemoteGraph("pipeline", client=c).aget_state(
        {"configurable": {"thread_id": tid}})
    updated = await c.threads.update_state(tid, {"count": 7}, as_node="count")
    return {
        "create": thread,
        "state before": empty,
        "output": output,
        "thread after run": await c.threads.get(tid),
        "state": after,
        "history": history,
        "state at first checkpoint": await c.threads.get_state(
            tid, checkpoint_id=history[-1]["checkpoint"]["checkpoint_id"]),
        "state at checkpoint": await c.threads.get_state(tid, checkpoint=after["checkpoint"]),
        "remote get_state": {"values": remote.values, "next": list(remote.next),
                             "config": remote.config, "parent_config": remote.parent_config},
        "update_state": updated,
        "state after update": await c.threads.get_state(tid),
        "thread after update": await c.threads.get(tid),
    }


# -- runs (graphwire: once the runs routes are merged) ---------------------------------------

async def stream_chat(side: Side) -> dict[str, Any]:
    """``runs.stream`` on ``chat`` with ``values``, ``updates``, ``messages-tuple`` and
    ``custom``: every event in order (name and data), then the thread's state."""
    c = side.client
    thread = await c.threads.create()
    events = [[part.event, part.data] async for part in c.runs.stream(
        thread["thread_id"], "chat", input=CHAT_INPUT,
        stream_mode=["values", "updates", "messages-tuple", "custom"])]
    return {"events": events,
            "state": await c.threads.get_state(thread["thread_id"]),
            "thread": await c.threads.get(thread["thread_id"])}


async def wait_pipeline(side: Side) -> dict[str, Any]:
    """``runs.wait`` on ``pipeline`` (with the raw answer's headers), then ``runs.list``,
    ``runs.get`` and the thread record."""
    c = side.client
    thread = await c.threads.create()
    tid = thread["thread_id"]
    raw = await side.http.post(f"/threads/{tid}/runs/wait", json={
        "assistant_id": "pipeline", "input": PIPELINE_INPUT})
    runs = await c.runs.list(tid)
    return {
        "wait": answer(raw, "content-type"),
        "wait location": (raw.headers.get("location") or "").replace(tid, "<thread>"),
        "sdk wait": await c.runs.wait(tid, "pipeline", input={"text": "A b"}),
        "runs": [run_record(r) for r in runs],
        "get run": run_record(await c.runs.get(tid, runs[-1]["run_id"])),
        "thread": await c.threads.get(tid),
    }


async def interrupt_resume(side: Side) -> dict[str, Any]:
    """``approval`` stops at its ``review`` interrupt (the wait answer, the thread and its
    state), then ``Command(resume=...)`` finishes it (the stream's events and the state)."""
    c = side.client
    thread = await c.threads.create()
    tid = thread["thread_id"]
    stopped = await c.runs.wait(tid, "approval", input={"topic": "graphwire"})
    interrupted = await c.threads.get(tid)
    paused = await c.threads.get_state(tid)
    resumed = [[part.event, part.data] async for part in c.runs.stream(
        tid, "approval", command={"resume": {"approved": True, "comment": "ok"}},
        stream_mode=["values", "updates"])]
    return {
        "wait": stopped,
        "thread interrupted": interrupted,
        "state interrupted": paused,
        "resume events": resumed,
        "state": await c.threads.get_state(tid),
        "thread": await c.threads.get(tid),
    }


async def cancel(side: Side) -> dict[str, Any]:
    """A running ``slow`` run (5 s) cancelled with ``wait``: the run's status, the thread's;
    then a run queued behind another, cancelled without ``wait`` (202, empty)."""
    c = side.client
    thread = await c.threads.create()
    tid = thread["thread_id"]
    running = await c.runs.create(tid, "slow", input={"seconds": 5})
    await wait_for_status(c, tid, running["run_id"], "running")
    cancelled = await side.http.post(f"/threads/{tid}/runs/{running['run_id']}/cancel?wait=1")
    first = await c.runs.create(tid, "slow", input={"seconds": 2})
    queued = await c.runs.create(tid, "slow", input={"seconds": 0.1})
    pending = await c.runs.get(tid, queued["run_id"])
    no_wait = await side.http.post(f"/threads/{tid}/runs/{queued['run_id']}/cancel")
    await c.runs.join(tid, first["run_id"])
    return {
        "created": run_record(running),
        "cancel with wait": answer(cancelled),
        "cancelled run": run_record(await c.runs.get(tid, running["run_id"])),
        "pending run": run_record(pending),
        "cancel pending": answer(no_wait),
        "cancelled pending run": run_record(
            await wait_for_status(c, tid, queued["run_id"], "interrupted")),
        "thread": await c.threads.get(tid),
    }


async def reject(side: Side) -> dict[str, Any]:
    """While a ``slow`` run is busy on a thread, a run with ``multitask_strategy="reject"`` is
    a 409 with the server's detail; the first run still succeeds."""
    c = side.client
    thread = await c.threads.create()
    tid = thread["thread_id"]
    busy = await c.runs.create(tid, "slow", input={"seconds": 2})
    refused = await side.http.post(f"/threads/{tid}/runs", json={
        "assistant_id": "slow", "input": {"seconds": 0.1}, "multitask_strategy": "reject"})
    await c.runs.join(tid, busy["run_id"])
    return {"reject": answer(refused),
            "first run": run_record(await c.runs.get(tid, busy["run_id"]))}


async def remote_graph(side: Side) -> dict[str, Any]:
    """``RemoteGraph("pipeline").ainvoke`` on a thread, ``astream`` of updates, and its
    ``aget_state`` after."""
    c = side.client
    thread = await c.threads.create()
    config = {"configurable": {"thread_id": thread["thread_id"]}}
    remote = RemoteGraph("pipeline", client=c)
    invoked = await remote.ainvoke(PIPELINE_INPUT, config)
    streamed = [chunk async for chunk in remote.astream({"text": "X y"}, config,
                                                        stream_mode="updates")]
    got = await remote.aget_state(config)
    return {"invoke": invoked, "astream updates": streamed,
            "get_state": {"values": got.values, "next": list(got.next),
                          "metadata step": (got.metadata or {}).get("step")}}


async def store(side: Side) -> dict[str, Any]:
    """``store.put_item`` twice, ``get_item``, ``search_items`` by namespace prefix and
    filter, ``list_namespaces``, ``delete_item``."""
    c = side.client
    ns = ["oracle", str(uuid.uuid4())]
    await c.store.put_item(ns, "a", {"kind": "x", "n": 1})
    await c.store.put_item([*ns, "deep"], "b", {"kind": "y", "n": 2})
    got = await c.store.get_item(ns, "a")
    found = await c.store.search_items(ns)
    filtered = await c.store.search_items(ns, filter={"kind": "y"})
    spaces = await c.store.list_namespaces(prefix=ns)
    await c.store.delete_item(ns, "a")
    return {"get": got, "search": found, "search filtered": filtered, "namespaces": spaces,
            "get deleted": await outcome(c.store.get_item(ns, "a"))}


async def wait_for_status(client: LangGraphClient, thread_id: str, run_id: str,
                          status: str, timeout: float = 30) -> dict[str, Any]:
    """Poll ``runs.get`` until the run has ``status``; the run."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = await client.runs.get(thread_id, run_id)
        if run["status"] == status or asyncio.get_running_loop().time() > deadline:
            return dict(run)
        await asyncio.sleep(0.05)
