"""``/assistants`` through the official ``langgraph_sdk`` against a real gateway: the default
assistants of the registered graphs, their drawings and schemas, and a caller's own versioned
assistants."""

from __future__ import annotations

import uuid

import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import ConflictError, NotFoundError

from graphwire.processors.gateway.agentapi.ids import default_assistant_id
from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import KEY_A, KEY_ECHO, gateway_settings, serve_app

pytestmark = pytest.mark.integration

PIPELINE_ID = "024bfc19-7d06-5d5c-92b5-cec6be8620ae"
"""LangGraph's default assistant id of a graph named ``pipeline`` (uuid5, its namespace)."""
PIPELINE_DRAWING = {
    "nodes": [
        {"id": "__start__", "type": "runnable", "data": {"name": "__start__"}},
        {"id": "normalize", "type": "runnable", "data": {"name": "normalize"}},
        {"id": "tokenize", "type": "runnable", "data": {"name": "tokenize"}},
        {"id": "count", "type": "runnable", "data": {"name": "count"}},
        {"id": "__end__"},
    ],
    "edges": [
        {"source": "__start__", "target": "normalize"},
        {"source": "normalize", "target": "tokenize"},
        {"source": "tokenize", "target": "count"},
        {"source": "count", "target": "__end__"},
    ],
}


async def test_default_assistants_are_found_drawn_and_described(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """``assistants.search`` lists one system assistant per graph the key may run (4, paged
    2 by 2 with ``X-Pagination-Next`` "2"); ``get`` by graph name and by LangGraph's uuid5 give
    the same assistant; ``get_graph`` is the drawing without class paths (``xray`` too);
    ``get_schemas`` names the state's fields; an unknown assistant is a 404."""
    async with (serve_app(gateway_settings(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY_A) as client):
        system = await client.assistants.search(metadata={"created_by": "system"},
                                                sort_by="graph_id", sort_order="asc")
        first = await client.assistants.search(metadata={"created_by": "system"}, limit=2,
                                               sort_by="graph_id", sort_order="asc",
                                               response_format="object")
        last = await client.assistants.search(metadata={"created_by": "system"}, limit=2,
                                              offset=2, sort_by="graph_id", sort_order="asc",
                                              response_format="object")
        by_name = await client.assistants.get("pipeline")
        by_id = await client.assistants.get(PIPELINE_ID)
        drawing = await client.assistants.get_graph("pipeline")
        xray = await client.assistants.get_graph(PIPELINE_ID, xray=True)
        schemas = await client.assistants.get_schemas("pipeline")
        subgraphs = await client.assistants.get_subgraphs("pipeline")
        counted = await client.assistants.count(metadata={"created_by": "system"})
        with pytest.raises(NotFoundError) as unknown:
            await client.assistants.get("no-such-graph")
        bad_xray = await http.get(f"/assistants/{PIPELINE_ID}/graph?xray=-1",
                                  headers={"X-API-Key": KEY_A})
    assert [a["graph_id"] for a in system] == ["approval", "echo", "pipeline", "slow"]
    assert [a["assistant_id"] for a in system] == [
        default_assistant_id(g) for g in ("approval", "echo", "pipeline", "slow")]
    assert ([a["graph_id"] for a in first["assistants"]], first["next"]) == (
        ["approval", "echo"], "2")
    assert ([a["graph_id"] for a in last["assistants"]], last["next"]) == (
        ["pipeline", "slow"], None)
    assert by_name == by_id
    assert {k: by_id[k] for k in ("assistant_id", "graph_id", "name", "metadata", "version",
                                  "config", "context", "description")} == {
        "assistant_id": PIPELINE_ID, "graph_id": "pipeline", "name": "pipeline",
        "metadata": {"created_by": "system"}, "version": 1, "config": {}, "context": {},
        "description": None}
    assert by_id["created_at"].endswith("+00:00")
    assert drawing == PIPELINE_DRAWING
    assert xray == PIPELINE_DRAWING
    assert schemas["graph_id"] == "pipeline"
    assert list(schemas["input_schema"]["properties"]) == ["text", "tokens", "count"]
    assert list(schemas["state_schema"]["properties"]) == ["text", "tokens", "count"]
    assert (schemas["config_schema"], schemas["context_schema"]) == ({}, None)
    assert subgraphs == {}
    assert counted == 4
    assert (unknown.value.response.status_code,
            unknown.value.response.json()) == (404, {"detail": "Assistant no-such-graph not found"})
    assert (bad_xray.status_code, bad_xray.json()) == (422, {"detail": "Invalid xray value"})


async def test_own_assistants_are_versioned_and_private(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """A created assistant keeps its config, context and metadata (version 1); ``update``
    merges metadata into version 2; both versions are listed newest first; another caller's
    key gets 404 for it; a default assistant cannot change (409); delete answers 204 and the
    assistant is gone (404)."""
    marker = str(uuid.uuid4())
    async with (serve_app(gateway_settings(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY_A) as client,
                get_client(url=str(http.base_url), api_key=KEY_ECHO) as other):
        made = await client.assistants.create(
            "echo", config={"tags": ["t"]}, context={"user": "u1"},
            metadata={"marker": marker}, name="mine", description="my echo")
        again = await client.assistants.create("echo", assistant_id=made["assistant_id"],
                                               if_exists="do_nothing")
        changed = await client.assistants.update(made["assistant_id"],
                                                 metadata={"more": 1}, name="mine2")
        versions = await client.assistants.get_versions(made["assistant_id"])
        found = await client.assistants.search(metadata={"marker": marker})
        with pytest.raises(NotFoundError):
            await other.assistants.get(made["assistant_id"])
        with pytest.raises(ConflictError):
            await client.assistants.create("echo", assistant_id=made["assistant_id"])
        with pytest.raises(ConflictError):
            await client.assistants.update("echo", metadata={"x": 1})
        await client.assistants.delete(made["assistant_id"])
        with pytest.raises(NotFoundError):
            await client.assistants.get(made["assistant_id"])
    assert {k: made[k] for k in ("graph_id", "config", "context", "metadata", "name",
                                 "description", "version")} == {
        "graph_id": "echo", "config": {"tags": ["t"]}, "context": {"user": "u1"},
        "metadata": {"marker": marker}, "name": "mine", "description": "my echo", "version": 1}
    assert again == made
    assert (changed["version"], changed["name"], changed["metadata"]) == (
        2, "mine2", {"marker": marker, "more": 1})
    assert [(v["version"], v["name"], v["metadata"]) for v in versions] == [
        (2, "mine2", {"marker": marker, "more": 1}), (1, "mine", {"marker": marker})]
    assert [a["assistant_id"] for a in found] == [made["assistant_id"]]
