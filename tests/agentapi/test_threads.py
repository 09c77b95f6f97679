"""``/threads`` through the official ``langgraph_sdk`` against a real gateway: records (create,
get, update, search, count, copy, delete), ownership, bad ids and bodies of any content type;
state and history through the checkpointer after a run on Kafka."""

from __future__ import annotations

import uuid

import orjson
import pytest
from langgraph.pregel.remote import RemoteGraph
from langgraph_sdk import get_client
from langgraph_sdk.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    UnprocessableEntityError,
)

from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import KEY_A, KEY_ECHO, A, gateway_settings, serve_app
from tests.helpers.runners import StartRunner

pytestmark = pytest.mark.integration


async def test_thread_records_are_created_found_changed_copied_and_deleted(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """A thread is created idle from the SDK's ``{}`` (and with a given id, once: 409 the
    second time, itself with ``do_nothing``); ``update`` merges metadata; ``search`` by
    metadata finds it with pagination headers and ``count`` counts it; ``copy`` makes a second
    thread with the same metadata; ``delete`` answers 204 and the thread is then a 404."""
    marker = str(uuid.uuid4())
    given = str(uuid.uuid4())
    async with (serve_app(gateway_settings(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY_A) as client):
        blank = await client.threads.create()
        made = await client.threads.create(thread_id=given, metadata={"marker": marker})
        with pytest.raises(ConflictError):
            await client.threads.create(thread_id=given)
        same = await client.threads.create(thread_id=given, if_exists="do_nothing")
        changed = await client.threads.update(given, metadata={"n": 1})
        got = await client.threads.get(given)
        copied = await client.threads.copy(given)
        found = await client.threads.search(metadata={"marker": marker}, sort_by="created_at",
                                            sort_order="asc")
        page = await http.post("/threads/search", headers=A, json={
            "metadata": {"marker": marker}, "limit": 1, "select": ["thread_id", "status"]})
        counted = await client.threads.count(metadata={"marker": marker})
        await client.threads.delete(given)
        deleted = await http.delete(f"/threads/{copied['thread_id']}", headers=A)
        with pytest.raises(NotFoundError):
            await client.threads.get(given)
        after = await client.threads.count(metadata={"marker": marker})
    assert ({k: blank[k] for k in ("metadata", "status", "values", "interrupts", "config")}
            == {"metadata": {}, "status": "idle", "values": None, "interrupts": {}, "config": {}})
    assert uuid.UUID(blank["thread_id"]).version == 4
    assert blank["created_at"].endswith("+00:00")
    assert (made["thread_id"], made["metadata"]) == (given, {"marker": marker})
    assert same == made
    assert changed["metadata"] == got["metadata"] == {"marker": marker, "n": 1}
    assert copied["thread_id"] != given
    assert (copied["metadata"], copied["status"]) == ({"marker": marker, "n": 1}, "idle")
    assert [t["thread_id"] for t in found] == [given, copied["thread_id"]]
    assert (page.json(), page.headers["X-Pagination-Total"],
            page.headers["X-Pagination-Next"]) == (
        [{"thread_id": copied["thread_id"], "status": "idle"}], "2", "1")
    assert counted == 2
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert after == 0


async def test_threads_are_private_ids_are_uuids_and_bodies_any_content_type(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """Another caller's key gets 404 for a thread (get, update, state, delete) and does not
    find it by search; a thread id that is not a UUID is 422 "Invalid thread ID: must be a
    UUID"; a JSON body sent as ``text/plain`` (LangGraph Studio) is read; a malformed one is a
    422 naming it."""
    marker = str(uuid.uuid4())
    async with (serve_app(gateway_settings(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY_A) as client,
                get_client(url=str(http.base_url), api_key=KEY_ECHO) as other):
        mine = await client.threads.create(metadata={"marker": marker})
        tid = mine["thread_id"]
        refused = []
        for call in (other.threads.get(tid), other.threads.update(tid, metadata={"x": 1}),
                     other.threads.get_state(tid), other.threads.delete(tid)):
            with pytest.raises(NotFoundError) as error:
                await call
            refused.append(error.value.response.json())
        theirs = await other.threads.search(metadata={"marker": marker})
        with pytest.raises(UnprocessableEntityError) as bad:
            await client.threads.get("not-a-uuid")
        plain = await http.post("/threads", headers={**A, "Content-Type": "text/plain"},
                                content=orjson.dumps({"metadata": {"marker": marker}}))
        broken = await http.post("/threads", headers={**A, "Content-Type": "application/json"},
                                 content=b"{not json")
        listed = await client.threads.count(metadata={"marker": marker})
    assert refused == [{"detail": f"Thread {tid} not found"}] * 4
    assert theirs == []
    assert bad.value.response.json() == {"detail": "Invalid thread ID: must be a UUID"}
    assert (plain.status_code, plain.json()["metadata"]) == (200, {"marker": marker})
    assert broken.status_code == 422
    assert broken.json()["detail"].startswith("the request body is not valid JSON")
    assert listed == 2


async def test_state_and_history_after_a_run_and_an_update(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """After a ``pipeline`` run on Kafka with the thread's UUID as ``thread_id``, ``get_state``
    has its final values, no next node and a checkpoint of that thread; the history has the
    run's 5 checkpoints newest first (each one's parent the next); the state at the first
    checkpoint has the input; RemoteGraph's ``aget_state``/``aget_state_history`` read the same.
    ``update_state`` as ``count`` returns the new checkpoint, then ``get_state`` and the
    thread's ``values`` show the update; copying the thread copies it."""
    await start_runner()
    async with (serve_app(gateway_settings(worker_env)) as (app, http),
                get_client(url=str(http.base_url), api_key=KEY_A) as client):
        thread = await client.threads.create(graph_id="pipeline")
        tid = thread["thread_id"]
        empty = await client.threads.get_state(tid)
        result = await app.state.gateway.client.invoke(
            "pipeline", {"text": "  Hello Kafka World "}, thread_id=tid, wait_timeout=60)
        state = await client.threads.get_state(tid)
        history = await client.threads.get_history(tid)
        got_history = await http.get(f"/threads/{tid}/history?limit=2", headers=A)
        first = await client.threads.get_state(tid, checkpoint_id=history[-1]["checkpoint"][
            "checkpoint_id"])
        at = await client.threads.get_state(tid, checkpoint=state["checkpoint"])
        remote = RemoteGraph("pipeline", client=client)
        remote_state = await remote.aget_state({"configurable": {"thread_id": tid}})
        remote_history = [s async for s in remote.aget_state_history(
            {"configurable": {"thread_id": tid}}, limit=3)]
        updated = await client.threads.update_state(tid, {"count": 7}, as_node="count")
        after = await client.threads.get_state(tid)
        record = await client.threads.get(tid)
        copy = await client.threads.copy(tid)
        copied_state = await client.threads.get_state(copy["thread_id"])
    values = {"text": "hello kafka world", "tokens": ["hello", "kafka", "world"], "count": 3}
    assert (empty["values"], empty["next"], empty["checkpoint"]) == ({}, [], None)
    assert (result.status, result.output) == ("success", values)
    assert (state["values"], state["next"], state["tasks"], state["interrupts"]) == (
        values, [], [], [])
    assert state["checkpoint"]["thread_id"] == tid
    assert state["checkpoint"]["checkpoint_ns"] == ""
    assert state["metadata"]["step"] == 3
    assert state["created_at"].endswith("+00:00")
    assert [h["metadata"]["step"] for h in history] == [3, 2, 1, 0, -1]
    assert [h["parent_checkpoint"] for h in history[:-1]] == [
        h["checkpoint"] for h in history[1:]]
    assert [h["checkpoint"] for h in got_history.json()] == [
        h["checkpoint"] for h in history[:2]]
    assert (first["values"], first["next"]) == ({}, ["__start__"])
    assert at == state
    assert (remote_state.values, remote_state.next, remote_state.config["configurable"]) == (
        values, (), {"thread_id": tid, "checkpoint_ns": "",
                     "checkpoint_id": state["checkpoint"]["checkpoint_id"],
                     "checkpoint_map": {}})
    assert [s.metadata["step"] for s in remote_history] == [3, 2, 1]
    assert list(updated) == ["checkpoint", "configurable", "checkpoint_id"]
    assert updated["configurable"] == updated["checkpoint"]
    assert updated["checkpoint_id"] == updated["checkpoint"]["checkpoint_id"]
    assert updated["checkpoint"]["thread_id"] == tid
    assert after["checkpoint"] == updated["checkpoint"]
    assert (after["values"], after["next"], after["metadata"]["source"]) == (
        {**values, "count": 7}, [], "update")
    assert (record["values"], record["status"]) == ({**values, "count": 7}, "idle")
    assert (copied_state["values"], copy["values"], copy["metadata"]) == (
        {**values, "count": 7}, {**values, "count": 7}, {"graph_id": "pipeline"})


async def test_state_updates_need_the_threads_graph(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """A thread without ``metadata.graph_id`` has an empty state and history, and
    ``update_state`` on it is a 400 saying to set ``graph_id``; a thread created with
    ``graph_id`` and ``supersteps`` starts with that state (``next`` the node after ``as_node``,
    so ``interrupted``)."""
    async with (serve_app(gateway_settings(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY_A) as client):
        bare = await client.threads.create()
        state = await client.threads.get_state(bare["thread_id"])
        history = await client.threads.get_history(bare["thread_id"])
        with pytest.raises(BadRequestError) as refused:
            await client.threads.update_state(bare["thread_id"], {"text": "x"})
        seeded = await client.threads.create(graph_id="pipeline", supersteps=[
            {"updates": [{"values": {"text": "a b"}, "as_node": "normalize"}]}])
        seeded_state = await client.threads.get_state(seeded["thread_id"])
    assert (state["values"], state["next"], state["tasks"], history) == ({}, [], [], [])
    assert refused.value.response.json() == {"detail": (
        f"Thread {bare['thread_id']} has no metadata.graph_id, so the graph to update is "
        "unknown: create the thread with graph_id (or PATCH its metadata), or run it first")}
    assert (seeded["values"], seeded["status"]) == ({"text": "a b"}, "interrupted")
    assert (seeded_state["values"], seeded_state["next"]) == ({"text": "a b"}, ["tokenize"])


async def test_operator_sees_every_callers_threads(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """With ``GRAPHWIRE_GATEWAY_AUTH=false`` everyone is the operator: a thread another caller
    created through an authenticating gateway is found, read and counted there."""
    marker = str(uuid.uuid4())
    async with (serve_app(gateway_settings(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY_A) as client):
        theirs = await client.threads.create(metadata={"marker": marker})
    async with (serve_app(gateway_settings(worker_env, gateway_auth=False)) as (_app, open_http),
                get_client(url=str(open_http.base_url), api_key=None) as operator):
        found = await operator.threads.search(metadata={"marker": marker})
        got = await operator.threads.get(theirs["thread_id"])
        counted = await operator.threads.count(metadata={"marker": marker})
    assert [t["thread_id"] for t in found] == [theirs["thread_id"]]
    assert (got, counted) == (theirs, 1)
