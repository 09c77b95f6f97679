"""``/store`` through the official ``langgraph_sdk`` against a real gateway, runner, broker,
Redis and PostgreSQL: put, get, search, namespaces and delete on the graphs' own store; a caller
confined to namespaces under its identity, an operator seeing all; the refusals (422/403)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import PermissionDeniedError, UnprocessableEntityError
from pydantic import SecretStr

from graphwire.processors.gateway.auth import hash_key
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import KEYS, gateway_settings, serve_app
from tests.helpers.runners import StartRunner

pytestmark = pytest.mark.integration

KEY = "gw_test_key_store_0123456789abc"
"""A caller of these tests: every graph, no operator role (identity ``api_key:svc-store``)."""
OTHER = "gw_test_key_store_other_0123456"
"""Another caller (``api_key:svc-store-2``)."""
OPERATOR = "gw_test_key_store_operator_0123"
"""An operator key: sees every namespace."""
REMEMBER = "remember=tests.sample_graphs:remember"


def settings_for(worker_env: dict[str, str], **overrides: Any) -> Settings:
    """The test gateway's settings with these tests' keys added."""
    keys = [*KEYS,
            {"name": "svc-store", "key_sha256": hash_key(KEY), "graphs": ["*"]},
            {"name": "svc-store-2", "key_sha256": hash_key(OTHER), "graphs": ["*"]},
            {"name": "ops-store", "key_sha256": hash_key(OPERATOR), "graphs": ["*"],
             "role": "operator"}]
    return gateway_settings(worker_env, gateway_api_keys=SecretStr(orjson.dumps(keys).decode()),
                            **overrides)


def ns_of(items: list[dict[str, Any]]) -> list[tuple[list[str], str, Any]]:
    """``(namespace, key, value)`` of each item."""
    return [(i["namespace"], i["key"], i["value"]) for i in items]


async def test_put_get_search_namespaces_delete(worker_env: dict[str, str],
                                                topics: TopicNames) -> None:
    """A caller puts three items under ``["api_key:svc-store", <tag>, ...]``: ``get_item``
    answers the item (namespace, key, value, ISO times), a missing one ``None``;
    ``search_items`` by prefix and ``filter`` answers the matches newest first with paging;
    ``list_namespaces`` lists them (cut at ``max_depth``, by ``suffix``); after
    ``delete_item`` the item is gone and the search has two. Another caller's search without
    a prefix sees none of them; the operator's search of the same prefix sees all three."""
    tag = uuid.uuid4().hex
    me = "api_key:svc-store"
    async with (serve_app(settings_for(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client,
                get_client(url=str(http.base_url), api_key=OTHER) as other,
                get_client(url=str(http.base_url), api_key=OPERATOR) as operator):
        await client.store.put_item([me, tag, "docs"], "a", {"title": "A", "n": 1})
        await client.store.put_item([me, tag, "docs"], "b", {"title": "B", "n": 2})
        await client.store.put_item([me, tag, "notes"], "c", {"title": "C", "n": 2},
                                    ttl=60, index=False)
        got = await client.store.get_item([me, tag, "docs"], "a")
        missing = await client.store.get_item([me, tag, "docs"], "zzz")
        everything = await client.store.search_items([me, tag])
        matched = await client.store.search_items([me, tag], filter={"n": 2})
        page = await client.store.search_items([me, tag], limit=1, offset=1)
        spaces = await client.store.list_namespaces(prefix=[me, tag])
        shallow = await client.store.list_namespaces(prefix=[me, tag], max_depth=2)
        notes = await client.store.list_namespaces(prefix=[me, tag], suffix=["notes"])
        others = await other.store.search_items([], limit=1000)
        seen_by_operator = await operator.store.search_items([me, tag])
        await client.store.delete_item([me, tag, "docs"], "a")
        after = await client.store.search_items([me, tag])
        gone = await client.store.get_item([me, tag, "docs"], "a")
    assert (got["namespace"], got["key"], got["value"]) == ([me, tag, "docs"], "a",
                                                            {"title": "A", "n": 1})
    assert got["created_at"].endswith("+00:00") and got["updated_at"].endswith("+00:00")
    assert missing is None
    assert ns_of(everything["items"]) == [([me, tag, "notes"], "c", {"title": "C", "n": 2}),
                                          ([me, tag, "docs"], "b", {"title": "B", "n": 2}),
                                          ([me, tag, "docs"], "a", {"title": "A", "n": 1})]
    assert [i["score"] for i in everything["items"]] == [None, None, None]
    assert ns_of(matched["items"]) == ns_of(everything["items"])[:2]
    assert ns_of(page["items"]) == ns_of(everything["items"])[1:2]
    assert spaces == {"namespaces": [[me, tag, "docs"], [me, tag, "notes"]]}
    assert shallow == {"namespaces": [[me, tag]]}
    assert notes == {"namespaces": [[me, tag, "notes"]]}
    assert [i for i in others["items"] if tag in i["namespace"]] == []
    assert all(i["namespace"][0] == "api_key:svc-store-2" for i in others["items"])
    assert ns_of(seen_by_operator["items"]) == ns_of(everything["items"])
    assert ns_of(after["items"]) == ns_of(everything["items"])[:2]
    assert gone is None


async def test_a_graph_and_its_caller_share_namespaces(
    worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """A ``remember`` run of a caller writes under ``(<its identity>, "memories")``: the caller
    reads the same item with ``get_item``/``search_items`` there; what a client put there
    beforehand, the graph recalls; another caller's run writes under its own identity."""
    await start_runner(graphs=REMEMBER)
    async with (serve_app(settings_for(worker_env, graphs=REMEMBER)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client,
                get_client(url=str(http.base_url), api_key=OTHER) as other):
        me, them = "api_key:svc-store", "api_key:svc-store-2"
        for c, who in ((client, me), (other, them)):  # earlier runs of this database
            for item in (await c.store.search_items([who, "memories"], limit=1000))["items"]:
                await c.store.delete_item(item["namespace"], item["key"])
        await client.store.put_item([me, "memories"], "seed", {"text": "seeded"})
        mine = await client.runs.wait(None, "remember", input={"text": "kafka"})
        theirs = await other.runs.wait(None, "remember", input={"text": "redis"})
        read = await client.store.get_item([me, "memories"], "m1")
        listed = await client.store.search_items([me, "memories"])
        their_items = await other.store.search_items([them, "memories"])
    assert mine == {"text": "kafka", "recalled": ["kafka", "seeded"]}
    assert theirs == {"text": "redis", "recalled": ["redis"]}
    assert (read["namespace"], read["value"]) == ([me, "memories"], {"text": "kafka"})
    assert sorted(i["key"] for i in listed["items"]) == ["m1", "seed"]
    assert ns_of(their_items["items"]) == [([them, "memories"], "m0", {"text": "redis"})]


async def test_refusals(worker_env: dict[str, str], topics: TopicNames) -> None:
    """A caller's put, get, delete, search or listing under another first label is a 403
    naming its identity; ``query`` and ``index`` are 422s naming them; a label with a period
    (sent raw, as the SDK refuses it) is a 422; an empty key is a 422."""
    me = "api_key:svc-store"
    async with (serve_app(settings_for(worker_env)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client):
        denied = []
        for call in (client.store.put_item(["shared", "x"], "k", {"v": 1}),
                     client.store.get_item(["shared"], "k"),
                     client.store.delete_item(["shared"], "k"),
                     client.store.search_items(["shared"]),
                     client.store.list_namespaces(prefix=["shared"])):
            with pytest.raises(PermissionDeniedError) as caught:
                await call
            denied.append(caught.value.response.json()["detail"])
        with pytest.raises(UnprocessableEntityError) as query:
            await client.store.search_items([me], query="similar to this")
        with pytest.raises(UnprocessableEntityError) as index:
            await client.store.put_item([me, "x"], "k", {"v": 1}, index=["text"])
        dotted = await http.put("/store/items", headers={"X-API-Key": KEY},
                                json={"namespace": [me, "a.b"], "key": "k", "value": {}})
        empty = await http.put("/store/items", headers={"X-API-Key": KEY},
                               json={"namespace": [me], "key": "", "value": {}})
    rule = ("a caller's store namespaces start with its identity: use ['api_key:svc-store', "
            "...] (the langgraph_auth_user_id its runs get); an operator key sees every "
            "namespace")
    assert denied == [rule] * 5
    assert query.value.response.json()["detail"] == (
        "query: graphwire's store has no semantic search (no embeddings index: it needs "
        "pgvector); search by namespace_prefix and filter")
    assert index.value.response.json()["detail"] == (
        "index: graphwire's store has no semantic search (no embeddings index: it needs "
        "pgvector); put with index=False or without it")
    assert (dotted.status_code, dotted.json()) == (422, {
        "detail": "namespace: namespace label 'a.b' must be a non-empty string without "
                  "periods"})
    assert (empty.status_code, empty.json()["detail"]) == (
        422, "key: String should have at least 1 character")
