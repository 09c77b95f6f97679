"""``/runs`` and ``/threads/{id}/runs`` through the official ``langgraph_sdk`` (and
``RemoteGraph``) against a real gateway, runner, broker, Redis and PostgreSQL: create, stream,
wait, join, join_stream, get, list, cancel, cancel_many, delete and batch."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError, UnprocessableEntityError
from langgraph_sdk.schema import Command
from pydantic import SecretStr

from graphwire.processors.gateway.auth import hash_key
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import KEYS, gateway_settings, serve_app
from tests.helpers.runners import StartRunner
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.integration

KEY = "gw_test_key_runs_0123456789abcd"
"""A key of these tests' own: every graph (``chat`` too)."""
H = {"X-API-Key": KEY}
STEPS = "steps=tests.sample_graphs:thread_steps"
"""step1 -> step2 -> step3 -> step4, each sleeping ``pause`` s and logging ``<label><i>``."""
PIPELINE = {"text": "hello kafka world", "tokens": ["hello", "kafka", "world"], "count": 3}


def settings_for(worker_env: dict[str, str], **overrides: Any) -> Settings:
    """The test gateway's settings with ``KEY`` added to its keys."""
    keys = [*KEYS, {"name": "svc-runs", "key_sha256": hash_key(KEY), "graphs": ["*"]}]
    return gateway_settings(worker_env, gateway_api_keys=SecretStr(orjson.dumps(keys).decode()),
                            **overrides)


def parts(chunks: list[Any]) -> list[tuple[str, Any]]:
    """``(event, data)`` of each SDK stream part."""
    return [(c.event, c.data) for c in chunks]


async def test_stream_a_chat_run_and_wait_for_a_pipeline_run(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``runs.stream`` on a ``chat`` thread with values, updates, messages-tuple and custom
    sends ``metadata`` first (the run id), the model's tokens as ``messages`` in order, the
    tool's ``custom`` event, each node's ``updates`` and the final ``values``; the run's record
    is then ``success`` and the thread ``idle`` with ``metadata.graph_id``. ``runs.wait`` on a
    ``pipeline`` thread answers the final values; ``runs.create`` answers a ``pending`` Run with
    ``Content-Location``, ``join`` its final values, ``get`` its record and ``list`` both runs,
    newest first."""
    await start_runner()
    async with (serve_app(settings_for(worker_env)) as (app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client):
        caps = app.state.gateway.caps
        scope = app.state.gateway.auth.authenticate({"x-api-key": KEY}).scope
        chat = await client.threads.create()
        chunks = [c async for c in client.runs.stream(
            chat["thread_id"], "chat", input={"messages": [
                {"type": "human", "content": "what is 2 + 3?"}]},
            stream_mode=["values", "updates", "messages-tuple", "custom"])]
        chat_runs = await client.runs.list(chat["thread_id"])
        chat_thread = await client.threads.get(chat["thread_id"])
        thread = await client.threads.create()
        tid = thread["thread_id"]
        waited = await client.runs.wait(tid, "pipeline", input={"text": "  Hello Kafka World "})
        created = await http.post(f"/threads/{tid}/runs", headers=H, json={
            "assistant_id": "pipeline", "input": {"text": "A b"}})
        run = created.json()
        joined = await client.runs.join(tid, run["run_id"])
        got = await client.runs.get(tid, run["run_id"])
        listed = await client.runs.list(tid)
        # each run's slot (its UUID names no scope) is given back once its result is seen
        held = await eventually(lambda: caps.runs_held(scope), until=lambda n: n == 0)
    assert held == 0
    events = parts(chunks)
    assert events[0] == ("metadata", {"run_id": chat_runs[0]["run_id"], "attempt": 1})
    tokens = [(data[0]["type"], data[0]["content"], data[1]["langgraph_node"])
              for name, data in events if name == "messages"]
    assert tokens == [
        ("AIMessageChunk", "", "agent"), ("AIMessageChunk", "", "agent"), ("tool", "5", "tools"),
        ("AIMessageChunk", "The ", "agent"), ("AIMessageChunk", "answer ", "agent"),
        ("AIMessageChunk", "is ", "agent"), ("AIMessageChunk", "5.", "agent"),
        ("AIMessageChunk", "", "agent")]
    assert [name for name, _ in events] == [
        "metadata", "values", "messages", "messages", "updates", "values", "custom", "messages",
        "updates", "values", "messages", "messages", "messages", "messages", "messages",
        "updates", "values"]
    assert [data for name, data in events if name == "custom"] == [
        {"tool": "add", "a": 2, "b": 3}]
    assert [list(data) for name, data in events if name == "updates"] == [
        ["agent"], ["tools"], ["agent"]]
    final = [data for name, data in events if name == "values"][-1]
    assert [m["content"] for m in final["messages"]] == [
        "what is 2 + 3?", "", "5", "The answer is 5."]
    assert [r["status"] for r in chat_runs] == ["success"]
    assert (chat_thread["status"], chat_thread["metadata"]["graph_id"]) == ("idle", "chat")
    assert waited == PIPELINE
    assert created.status_code == 200
    assert created.headers["Content-Location"] == f"/threads/{tid}/runs/{run['run_id']}"
    assert uuid.UUID(run["run_id"]).version == 7
    default = str(uuid.uuid5(uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8"), "pipeline"))
    # a run's metadata as the Agent Server records it: its assistant's, then the graph's ids
    assert (run["status"], run["thread_id"], run["multitask_strategy"], run["metadata"]) == (
        "pending", tid, "enqueue",
        {"created_by": "system", "graph_id": "pipeline", "assistant_id": default})
    assert (run["assistant_id"], run["langsmith_session_name"]) == (default, None)
    assert (run["kwargs"]["stream_mode"], run["kwargs"]["durability"]) == (["values"], "async")
    assert joined == {"text": "a b", "tokens": ["a", "b"], "count": 2}
    assert got["status"] == "success"
    assert [r["run_id"] for r in listed] == [run["run_id"], listed[1]["run_id"]]
    assert [r["status"] for r in listed] == ["success", "success"]


async def test_interrupt_resume_update_state_and_continue(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``runs.wait`` on ``approval`` stops at ``review``'s interrupt: the body is the state so
    far with ``__interrupt__`` and the thread is ``interrupted`` with that interrupt; a
    ``Command(resume=...)`` through ``runs.stream`` finishes it (final ``values``). On a
    ``pipeline`` thread, ``get_state``/``get_history`` show the run's checkpoints;
    ``update_state`` as ``normalize`` then a run with input None continues from it."""
    await start_runner()
    async with (serve_app(settings_for(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client):
        tid = (await client.threads.create())["thread_id"]
        asked = await client.runs.wait(tid, "approval", input={"topic": "graphwire"})
        paused = await client.threads.get(tid)
        resumed = [c async for c in client.runs.stream(
            tid, "approval", command=Command(resume={"approved": True, "comment": "ok"}))]
        done = await client.threads.get(tid)
        pid = (await client.threads.create())["thread_id"]
        await client.runs.wait(pid, "pipeline", input={"text": "A b"})
        history = await client.threads.get_history(pid)
        await client.threads.update_state(pid, {"text": "x y z"}, as_node="normalize")
        pending = await client.threads.get_state(pid)
        continued = await client.runs.wait(pid, "pipeline", input=None)
        state = await client.threads.get_state(pid)
    draft = "Announcing graphwire: a short post, ready for review."
    interrupt = asked["__interrupt__"]
    assert {k: v for k, v in asked.items() if k != "__interrupt__"} == {
        "topic": "graphwire", "draft": draft}
    assert [i["value"]["draft"] for i in interrupt] == [draft]
    assert paused["status"] == "interrupted"
    assert [i["id"] for items in paused["interrupts"].values() for i in items] == [
        interrupt[0]["id"]]
    assert [name for name, _ in parts(resumed)] == ["metadata", "values", "values", "values"]
    assert parts(resumed)[-1][1] == {"topic": "graphwire", "draft": draft, "approved": True,
                                     "comment": "ok", "published": True}
    assert (done["status"], done["interrupts"], done["values"]["published"]) == (
        "idle", {}, True)
    assert [h["metadata"]["step"] for h in history] == [3, 2, 1, 0, -1]
    assert (pending["values"], pending["next"]) == (
        {"text": "x y z", "tokens": ["a", "b"], "count": 2}, ["tokenize"])
    assert continued == state["values"] == {"text": "x y z", "tokens": ["x", "y", "z"],
                                            "count": 3}


async def _wait_status(client: Any, tid: str, rid: str, status: str) -> None:
    async def reached() -> bool:
        return (await client.runs.get(tid, rid))["status"] == status

    await eventually(reached, 30, what=f"run {rid} {status}")


async def test_cancel_running_and_pending_runs_and_reject_on_a_busy_thread(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """A ``steps`` run (four steps of 1 s) is ``running``; a second run on its thread waits
    ``pending``; a third with ``multitask_strategy="reject"`` is a 409 at once and the thread
    is ``busy``. ``cancel`` of the pending one answers 202 with an empty body;
    ``cancel(wait=True)`` of the running one answers its join body, a ``Cancelled`` error
    (graphwire stops a running run at its next step boundary: ``slow``'s one node cannot be
    stopped midway, so a four-step graph stands in). Both runs end ``interrupted``, the steps
    the first finished stay on the thread, which is no longer busy: ``interrupted``, its next
    step pending (as LangGraph's server derives a thread's status from its checkpoint)."""
    await start_runner(graphs=STEPS)
    async with (serve_app(settings_for(worker_env, graphs=STEPS)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client):
        tid = (await client.threads.create())["thread_id"]
        running = await client.runs.create(tid, "steps", input={"label": "A", "pause": 1})
        await _wait_status(client, tid, running["run_id"], "running")
        queued = await client.runs.create(tid, "steps", input={"label": "B", "pause": 1})
        with pytest.raises(ConflictError) as refused:
            await client.runs.create(tid, "steps", input={"label": "C"},
                                     multitask_strategy="reject")
        busy = await client.threads.get(tid)
        cancelled = await http.post(f"/threads/{tid}/runs/{queued['run_id']}/cancel", headers=H)
        waited = await client.runs.cancel(tid, running["run_id"], wait=True)
        await _wait_status(client, tid, queued["run_id"], "interrupted")
        first = await client.runs.get(tid, running["run_id"])
        runs = await client.runs.list(tid)
        idle = await client.threads.get(tid)
    assert refused.value.response.json() == {"detail": (
        "Thread is already running a task. Wait for it to finish or choose a different "
        "multitask strategy.")}
    assert (queued["status"], busy["status"]) == ("pending", "busy")
    assert (cancelled.status_code, cancelled.content) == (202, b"")
    assert list(waited) == ["__error__"]
    assert waited["__error__"]["error"] == "Cancelled"
    assert first["status"] == "interrupted"
    assert [r["run_id"] for r in runs] == [queued["run_id"], running["run_id"]]
    assert [r["status"] for r in runs] == ["interrupted", "interrupted"]
    assert idle["status"] == "interrupted"
    assert idle["values"]["log"] == [f"A{i}" for i in range(1, len(idle["values"]["log"]) + 1)]
    assert 1 <= len(idle["values"]["log"]) < 4


async def test_join_stream_after_a_disconnect_resumes_after_the_last_event(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """A client that drops a ``chat`` stream after 4 parts and joins it with
    ``Last-Event-ID`` of the last one gets every later part once: the two halves make the
    whole stream, ids strictly increasing. ``Last-Event-ID: -1`` replays the whole run."""
    await start_runner()
    modes = ["values", "updates", "messages-tuple", "custom"]
    names = ["metadata", "values", "messages", "messages", "updates", "values", "custom",
             "messages", "updates", "values", "messages", "messages", "messages", "messages",
             "messages", "updates", "values"]
    async with (serve_app(settings_for(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client):
        tid = (await client.threads.create())["thread_id"]
        first: list[Any] = []
        async for part in client.runs.stream(tid, "chat", input={"messages": [
                {"type": "human", "content": "what is 2 + 3?"}]}, stream_mode=modes):
            first.append(part)
            if len(first) == 4:
                break
        rid = first[0].data["run_id"]
        rest = [p async for p in client.runs.join_stream(
            tid, rid, last_event_id=first[-1].id, stream_mode=modes)]
        replay = [p async for p in client.runs.join_stream(
            tid, rid, last_event_id="-1", stream_mode=modes)]
    ids = [int(p.id) for p in first[1:] + rest]
    assert [p.event for p in first + rest] == names
    assert ids == sorted(set(ids))
    assert [p.event for p in replay] == names
    assert [p.id for p in replay[1:]] == [p.id for p in first[1:] + rest]


async def test_remote_graph_invokes_streams_reads_state_and_nests(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``RemoteGraph("pipeline", url=..., api_key=...)``: ``ainvoke`` (stateless) answers the
    final state; ``astream`` on a thread gives each node's update in order; ``aget_state``
    reads that thread's final values; used as a node of a local graph it runs remotely and its
    output becomes the local state."""
    from langgraph.graph import START, StateGraph
    from langgraph.pregel.remote import RemoteGraph

    from graphwire.graphs.builtin import PipelineState

    await start_runner()
    async with serve_app(settings_for(worker_env)) as (_app, http):
        remote = RemoteGraph("pipeline", url=str(http.base_url), api_key=KEY)
        invoked = await remote.ainvoke({"text": "  Hello Kafka World "})
        tid = str(uuid.uuid4())
        config = {"configurable": {"thread_id": tid}}
        streamed = [c async for c in remote.astream({"text": "A b"}, config,
                                                    stream_mode="updates")]
        state = await remote.aget_state(config)
        builder = StateGraph(PipelineState)
        builder.add_node("remote", remote)
        builder.add_edge(START, "remote")
        nested = await builder.compile().ainvoke({"text": "X Y"})
        await remote.client.aclose()  # RemoteGraph made it from the url
        remote.sync_client.close()
    assert invoked == PIPELINE
    assert streamed == [{"normalize": {"text": "a b"}}, {"tokenize": {"tokens": ["a", "b"]}},
                        {"count": {"count": 2}}]
    assert state.values == {"text": "a b", "tokens": ["a", "b"], "count": 2}
    assert nested == {"text": "x y", "tokens": ["x", "y"], "count": 2}


async def test_refusals_name_the_field_and_ids_are_checked(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """A run-create field graphwire cannot honour (``feedback_keys``) is a 422 naming it, as is
    an unknown field; a thread id that is not a UUID is 422 "Invalid thread ID: must be a
    UUID"; an unknown assistant is 404 (stateless: naming it; on a thread: "Thread or assistant
    not found."); a missing thread is 404 unless ``if_not_exists="create"``, which creates it
    stamped with the graph; listing the runs of a missing thread is 404."""
    async with (serve_app(settings_for(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client):
        tid = (await client.threads.create())["thread_id"]
        feedback = await http.post(f"/threads/{tid}/runs/stream", headers=H, json={
            "assistant_id": "pipeline", "feedback_keys": ["score"]})
        unknown_field = await http.post(f"/threads/{tid}/runs", headers=H, json={
            "assistant_id": "pipeline", "colour": "red"})
        with pytest.raises(UnprocessableEntityError) as bad_id:
            await client.runs.create("not-a-uuid", "pipeline", input={})
        with pytest.raises(NotFoundError) as stateless:
            await client.runs.create(None, "nope", input={})
        with pytest.raises(NotFoundError) as on_thread:
            await client.runs.create(tid, "nope", input={})
        missing = str(uuid.uuid4())
        with pytest.raises(NotFoundError) as no_thread:
            await client.runs.create(missing, "pipeline", input={})
        made = await client.runs.create(missing, "pipeline", input={"text": "a"},
                                        if_not_exists="create")
        created = await client.threads.get(missing)
        with pytest.raises(NotFoundError):
            await client.runs.list(str(uuid.uuid4()))
        runs = await client.runs.list(tid)
    assert (feedback.status_code, feedback.json()) == (422, {"detail": (
        "feedback_keys is not supported: graphwire has no LangSmith feedback URLs; leave it out")})
    assert (unknown_field.status_code, unknown_field.json()) == (422, {"detail": (
        "unknown run field 'colour': graphwire does not know it; leave it out")})
    assert bad_id.value.response.json() == {"detail": "Invalid thread ID: must be a UUID"}
    assert stateless.value.response.json() == {"detail": "Assistant nope not found"}
    assert on_thread.value.response.json() == no_thread.value.response.json() == {
        "detail": "Thread or assistant not found."}
    assert made["thread_id"] == missing
    assert created["metadata"] == {"graph_id": "pipeline", "assistant_id": made["assistant_id"]}
    assert runs == []


async def test_idempotency_key_batch_and_cancel_many(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """Two creates with the same ``Idempotency-Key`` answer one run (one record, one result);
    another key makes another run. ``/runs/batch`` creates stateless runs in order, each joined
    to its final state. ``cancel_many`` of a thread's runs by id answers 204 and both end
    ``interrupted``."""
    await start_runner(graphs=STEPS)
    async with (serve_app(settings_for(worker_env, graphs=STEPS)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client):
        tid = (await client.threads.create())["thread_id"]
        key = {"Idempotency-Key": str(uuid.uuid4())}
        one = await client.runs.create(tid, "pipeline", input={"text": "A"}, headers=key)
        two = await client.runs.create(tid, "pipeline", input={"text": "A"}, headers=key)
        joined = await client.runs.join(tid, one["run_id"])
        other = await client.runs.create(tid, "pipeline", input={"text": "B"},
                                         headers={"Idempotency-Key": str(uuid.uuid4())})
        await client.runs.join(tid, other["run_id"])
        runs = await client.runs.list(tid)
        batch = await client.runs.create_batch([
            {"assistant_id": "pipeline", "input": {"text": "C d"}},
            {"assistant_id": "pipeline", "input": {"text": "E"}}])
        batch_results = [(await http.get(f"/runs/{r['run_id']}/join", headers=H)).json()
                         for r in batch]
        busy = (await client.threads.create())["thread_id"]
        first = await client.runs.create(busy, "steps", input={"label": "A", "pause": 1})
        second = await client.runs.create(busy, "steps", input={"label": "B", "pause": 1})
        await _wait_status(client, busy, first["run_id"], "running")
        response = await http.post("/runs/cancel", headers=H, json={
            "thread_id": busy, "run_ids": [first["run_id"], second["run_id"]]})
        await _wait_status(client, busy, second["run_id"], "interrupted")
        ended = [r["status"] for r in await client.runs.list(busy)]
    assert two == one
    assert joined == {"text": "a", "tokens": ["a"], "count": 1}
    assert [r["run_id"] for r in runs] == [other["run_id"], one["run_id"]]
    assert [(r["thread_id"], r["status"]) for r in batch] == [(None, "pending")] * 2
    assert len({r["run_id"] for r in batch}) == 2
    assert batch_results == [{"text": "c d", "tokens": ["c", "d"], "count": 2},
                             {"text": "e", "tokens": ["e"], "count": 1}]
    assert (response.status_code, response.content) == (204, b"")
    assert ended == ["interrupted", "interrupted"]


async def test_on_disconnect_cancel_stops_the_run_when_the_client_goes(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """A ``runs.stream`` with ``on_disconnect="cancel"`` that the client drops after its first
    ``values`` part cancels the run: it ends ``interrupted`` before its four steps ran, while the
    same stream with the default (``continue``) runs to ``success``."""
    await start_runner(graphs=STEPS)
    async with (serve_app(settings_for(worker_env, graphs=STEPS)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client):
        ended = []
        for on_disconnect in ("cancel", "continue"):
            tid = (await client.threads.create())["thread_id"]
            async for part in client.runs.stream(tid, "steps", input={"label": "A", "pause": 0.5},
                                                 on_disconnect=on_disconnect):
                if part.event == "values":
                    rid = (await client.runs.list(tid))[0]["run_id"]
                    break
            await client.runs.join(tid, rid)
            run = await client.runs.get(tid, rid)
            state = await client.threads.get_state(tid)
            ended.append((run["status"], len(state["values"]["log"]) < 4))
    assert ended == [("interrupted", True), ("success", False)]


async def test_a_stateless_wait_answers_before_its_record_is_booked_and_a_read_waits_for_it(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """While another session locks ``agent_runs`` against writes (the run's record cannot be
    set to ``success``), a stateless ``runs.wait`` of a 1 s ``slow`` run still answers its
    values, and a ``GET /runs/{id}`` then waits for the booking: it answers ``success`` only
    after the lock goes."""
    await start_runner()
    async with serve_app(settings_for(worker_env)) as (app, http):
        db = app.state.gateway.agent.records()
        marker = uuid.uuid4().hex
        waiting = asyncio.create_task(http.post("/runs/wait", headers=H, json={
            "assistant_id": "slow", "input": {"seconds": 1.0}, "metadata": {"t": marker}}))
        run_id = await eventually(lambda: db.fetchval(
            "SELECT run_id FROM agent_runs WHERE metadata->>'t' = $1", marker),
            until=lambda found: found is not None)
        async with db.acquire() as conn:
            lock = conn.transaction()
            await lock.start()
            await conn.execute("LOCK TABLE agent_runs IN EXCLUSIVE MODE")
            answer = await asyncio.wait_for(waiting, 20)
            reading = asyncio.create_task(http.get(f"/runs/{run_id}", headers=H))
            await asyncio.sleep(0.5)
            read_while_locked = reading.done()
            await lock.rollback()
        got = await asyncio.wait_for(reading, 20)
    assert (answer.status_code, answer.json()) == (200, {"seconds": 1.0})
    assert answer.headers["Content-Location"] == f"/runs/{run_id}"
    assert read_while_locked is False
    assert (got.status_code, got.json()["status"]) == (200, "success")
