"""GroupCommitStore on the real PostgreSQL: LangGraph's store contract, TTL, group commits, and
both directions with LangGraph's own ``AsyncPostgresStore`` on the same table.

Each test gets a schema of its own (the ``store`` table is created there), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
from langgraph.store.base import GetOp, ListNamespacesOp, PutOp, SearchOp
from langgraph.store.postgres.aio import AsyncPostgresStore

from graphwire.processors.runner.pgsaver import CheckpointDatabaseUnavailable, init_connection
from graphwire.processors.runner.pgstore import (
    GroupCommitStore,
    StoreDatabaseUnavailable,
    StoreDataRefused,
    StoreIndexUnsupported,
)
from tests.conftest import TEST_DATABASE_URL

pytestmark = pytest.mark.integration


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A schema of this test's own, dropped at the end."""
    name = f"st{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield name
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pool(schema: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on the test's schema, as CheckpointStore opens it."""
    pool = await asyncpg.create_pool(TEST_DATABASE_URL, min_size=1, max_size=4,
                                     init=init_connection,
                                     server_settings={"search_path": schema})
    yield pool
    await pool.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> AsyncIterator[GroupCommitStore]:
    """graphwire's store, set up (migrated) on the test's schema."""
    store = GroupCommitStore(pool)
    await store.setup()
    yield store
    await store.aclose()


@pytest.fixture
async def upstream(schema: str, store: GroupCommitStore) -> AsyncIterator[AsyncPostgresStore]:
    """LangGraph's AsyncPostgresStore (psycopg) on the same schema and table."""
    url = f"{TEST_DATABASE_URL}?options=-csearch_path%3D{schema}"
    async with AsyncPostgresStore.from_conn_string(url) as theirs:
        await theirs.setup()  # nothing to do: graphwire applied the same migrations
        yield theirs


async def _expiry(pool: asyncpg.Pool, prefix: str, key: str) -> Any:
    return await pool.fetchrow(
        "SELECT expires_at, ttl_minutes FROM store WHERE prefix = $1 AND key = $2", prefix, key)


async def test_put_get_overwrite_and_delete(store: GroupCommitStore) -> None:
    """A put reads back with its value, namespace and key, created_at == updated_at; a second
    put keeps created_at and moves updated_at; a delete (and a missing key) reads None."""
    ns = ("users", "alice")
    await store.aput(ns, "prefs", {"theme": "dark", "tags": ["a", "b"], "n": 1.5})
    first = await store.aget(ns, "prefs")
    assert first is not None
    assert (first.namespace, first.key, first.value) == (
        ns, "prefs", {"theme": "dark", "tags": ["a", "b"], "n": 1.5})
    assert first.created_at == first.updated_at
    await store.aput(ns, "prefs", {"theme": "light"})
    second = await store.aget(ns, "prefs")
    assert second is not None
    assert second.value == {"theme": "light"}
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    await store.adelete(ns, "prefs")
    assert await store.aget(ns, "prefs") is None
    assert await store.aget(ns, "never") is None


async def test_search_by_namespace_prefix_filter_limit_and_offset(
    store: GroupCommitStore,
) -> None:
    """Search returns the namespace and its descendants only (not ``usersx``), newest first;
    filters by equality, $eq, $ne and (upstream's text comparison) $gt; limit/offset page."""
    for ns, key, value in [
        (("users",), "root", {"role": "admin", "age": "40"}),
        (("users", "a"), "1", {"role": "user", "age": "20"}),
        (("users", "b"), "2", {"role": "user", "age": "30"}),
        (("usersx",), "x", {"role": "user", "age": "99"}),
    ]:
        await store.aput(ns, key, value)  # one after the other: distinct updated_at
    keys = [i.key for i in await store.asearch(("users",))]
    assert keys == ["2", "1", "root"]
    assert [i.key for i in await store.asearch(("users",), filter={"role": "user"})] == ["2", "1"]
    assert [i.key for i in await store.asearch(("users",), filter={"role": {"$eq": "admin"}})] \
        == ["root"]
    assert [i.key for i in await store.asearch(("users",), filter={"role": {"$ne": "admin"}})] \
        == ["2", "1"]
    assert [i.key for i in await store.asearch(("users",), filter={"age": {"$gt": "25"}})] \
        == ["2", "root"]
    assert [i.key for i in await store.asearch((), limit=2, offset=1)] == ["2", "1"]
    assert [i.key for i in await store.asearch(("users", "a"))] == ["1"]
    found = (await store.asearch(("users", "b")))[0]
    assert (found.namespace, found.value, found.score) == (
        ("users", "b"), {"role": "user", "age": "30"}, None)
    with pytest.raises(ValueError, match=r"^Unsupported operator: \$in$"):
        await store.asearch(("users",), filter={"age": {"$in": ["20"]}})


async def test_list_namespaces_prefix_suffix_depth_limit_offset(store: GroupCommitStore) -> None:
    """list_namespaces returns distinct namespaces sorted, filtered by prefix (``*`` one label)
    and suffix, cut at max_depth, paged by limit/offset."""
    for ns in [("a", "b", "c"), ("a", "b", "d"), ("a", "x"), ("b", "c"), ("a", "b", "c")]:
        await store.aput(ns, f"k{len(ns)}", {"v": 1})
    assert await store.alist_namespaces() == [("a", "b", "c"), ("a", "b", "d"), ("a", "x"),
                                              ("b", "c")]
    assert await store.alist_namespaces(prefix=("a", "b")) == [("a", "b", "c"), ("a", "b", "d")]
    assert await store.alist_namespaces(suffix=("c",)) == [("a", "b", "c"), ("b", "c")]
    assert await store.alist_namespaces(prefix=("a", "*", "d")) == [("a", "b", "d")]
    assert await store.alist_namespaces(max_depth=1) == [("a",), ("b",)]
    assert await store.alist_namespaces(prefix=("a",), max_depth=2) == [("a", "b"), ("a", "x")]
    assert await store.alist_namespaces(limit=2, offset=1) == [("a", "b", "d"), ("a", "x")]


async def test_ttl_is_stored_refreshed_on_read_and_swept(
    store: GroupCommitStore, pool: asyncpg.Pool
) -> None:
    """A put with ttl=1 (minute) stores ttl_minutes 1 and expires_at one minute after the
    write; a get with refresh_ttl=False leaves expires_at, the default get (and search) move it
    later; an expired item still reads until swept (upstream), and sweep_ttl deletes exactly
    the expired ones."""
    await store.aput(("t",), "keep", {"v": 1}, ttl=1)
    await store.aput(("t",), "forever", {"v": 2})
    row = await _expiry(pool, "t", "keep")
    item = await store.aget(("t",), "keep", refresh_ttl=False)
    assert item is not None
    assert row["ttl_minutes"] == 1
    assert row["expires_at"] - item.updated_at == timedelta(minutes=1)
    assert (await _expiry(pool, "t", "keep"))["expires_at"] == row["expires_at"]
    await asyncio.sleep(0.05)
    await store.aget(("t",), "keep")
    refreshed = (await _expiry(pool, "t", "keep"))["expires_at"]
    assert refreshed > row["expires_at"]
    await asyncio.sleep(0.05)
    await store.asearch(("t",))
    assert (await _expiry(pool, "t", "keep"))["expires_at"] > refreshed
    assert await _expiry(pool, "t", "forever") == (None, None)

    await store.aput(("t",), "short", {"v": 3}, ttl=0.005)  # 0.3 s
    await asyncio.sleep(0.5)
    assert await store.aget(("t",), "short", refresh_ttl=False) is not None  # not swept yet
    assert await store.sweep_ttl() == 1  # a refresh is no update: "forever" is newer
    assert await store.aget(("t",), "short") is None
    assert [i.key for i in await store.asearch(("t",))] == ["forever", "keep"]


async def test_omit_expired_hides_expired_items_before_the_sweep(pool: asyncpg.Pool) -> None:
    """With TTLConfig omit_expired, an expired item reads as None, is missing from search and
    from list_namespaces, though its row is still there; default_ttl applies to puts."""
    store = GroupCommitStore(pool, ttl={"omit_expired": True, "default_ttl": 0.005})
    await store.setup()
    await store.aput(("o",), "gone", {"v": 1})
    await store.aput(("p",), "kept", {"v": 2}, ttl=None)
    await asyncio.sleep(0.5)
    assert await store.aget(("o",), "gone") is None
    assert [i.key for i in await store.asearch(())] == ["kept"]
    assert await store.alist_namespaces() == [("p",)]
    assert await pool.fetchval("SELECT count(*) FROM store") == 2
    await store.aclose()


async def test_concurrent_puts_share_group_commits(store: GroupCommitStore) -> None:
    """60 concurrent put calls commit in fewer statements than 60 (all 60 counted as
    committed), and every value reads back."""
    await asyncio.gather(*[store.aput(("g",), f"k{i}", {"i": i}) for i in range(60)])
    assert store.committed_puts == 60
    assert store.commits < 60
    found = await store.asearch(("g",), limit=100)
    assert sorted(i.value["i"] for i in found) == list(range(60))


async def test_one_bad_value_fails_only_its_own_caller(store: GroupCommitStore) -> None:
    """In one group, the put whose value holds a NUL gets StoreDataRefused; the other three
    puts commit and read back; the bad key is absent."""
    results = await asyncio.gather(
        store.aput(("b",), "good1", {"v": 1}),
        store.aput(("b",), "bad", {"v": "a\x00b"}),
        store.aput(("b",), "good2", {"v": 2}),
        store.aput(("b",), "good3", {"v": 3}),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == [
        "NoneType", "StoreDataRefused", "NoneType", "NoneType"]
    assert isinstance(results[1], StoreDataRefused)
    assert str(results[1]).startswith("PostgreSQL refused a value put in the store")
    assert sorted(i.key for i in await store.asearch(("b",))) == ["good1", "good2", "good3"]


async def test_batch_runs_ops_in_upstreams_order(store: GroupCommitStore) -> None:
    """abatch returns results in the ops' order; reads run before the puts of the same batch
    (upstream's order), and a later put of the same key wins over an earlier one."""
    await store.aput(("o",), "a", {"v": 0})
    results = await store.abatch([
        PutOp(("o",), "a", {"v": 1}),
        GetOp(("o",), "a"),
        SearchOp(("o",)),
        ListNamespacesOp(),
        PutOp(("o",), "a", {"v": 2}),
        PutOp(("o",), "b", None),
    ])
    assert results[0] is None and results[4] is None and results[5] is None
    assert results[1] is not None and results[1].value == {"v": 0}  # type: ignore[union-attr]
    assert [i.value for i in results[2]] == [{"v": 0}]  # type: ignore[union-attr]
    assert results[3] == [("o",)]
    item = await store.aget(("o",), "a")
    assert item is not None and item.value == {"v": 2}


async def test_an_index_config_is_refused_naming_pgvector(pool: asyncpg.Pool) -> None:
    """A store configured with an index (embeddings) raises StoreIndexUnsupported saying that
    pgvector is what is missing and what to do."""
    with pytest.raises(StoreIndexUnsupported) as caught:
        GroupCommitStore(pool, index={"dims": 3, "embed": lambda texts: [[0.0] * 3]})
    assert str(caught.value) == (
        "graphwire's store has no semantic search: an `index` (embeddings) needs the pgvector "
        "extension in PostgreSQL and graphwire does not support it; drop `index` from the store "
        "configuration (search then filters by namespace and value), or compile the graph with "
        "LangGraph's own PostgresStore on a database that has pgvector"
    )


async def test_the_sync_api_works_from_a_thread_and_refuses_on_the_loop(
    store: GroupCommitStore,
) -> None:
    """store.put/get from another thread run on the store's loop; on the loop itself, get
    raises RuntimeError telling to await aget."""
    await asyncio.to_thread(store.put, ("s",), "k", {"v": 1})
    item = await asyncio.to_thread(store.get, ("s",), "k")
    assert item is not None and item.value == {"v": 1}
    with pytest.raises(RuntimeError, match=r"use `await store\.aget\(\.\.\.\)`"):
        store.get(("s",), "k")


async def test_langgraphs_postgres_store_reads_what_graphwire_wrote(
    store: GroupCommitStore, upstream: AsyncPostgresStore, schema: str
) -> None:
    """Items graphwire wrote read back identically through AsyncPostgresStore: get (value,
    created_at, updated_at), search with a filter (same items, same order) and
    list_namespaces; upstream's setup found every migration applied (versions 0..3)."""
    await store.aput(("users", "alice"), "prefs", {"theme": "dark", "n": 3})
    await store.aput(("users", "bob"), "prefs", {"theme": "light", "n": 4}, ttl=10)
    await store.aput(("docs",), "d1", {"text": "hello", "nested": {"a": [1, 2]}})
    for ns, key in [(("users", "alice"), "prefs"), (("users", "bob"), "prefs"), (("docs",), "d1")]:
        ours, theirs = await store.aget(ns, key), await upstream.aget(ns, key)
        assert theirs is not None and theirs == ours
    assert await upstream.asearch(("users",), filter={"theme": "dark"}) == \
        await store.asearch(("users",), filter={"theme": "dark"})
    assert [i.key for i in await upstream.asearch(())] == ["d1", "prefs", "prefs"]
    assert await upstream.alist_namespaces() == await store.alist_namespaces() == [
        ("docs",), ("users", "alice"), ("users", "bob")]
    async with await psycopg.AsyncConnection.connect(TEST_DATABASE_URL) as conn:
        cur = await conn.execute(
            f'SELECT array_agg(v ORDER BY v) FROM "{schema}".store_migrations')
        assert await cur.fetchone() == ([0, 1, 2, 3],)


async def test_graphwire_reads_what_langgraphs_postgres_store_wrote(
    store: GroupCommitStore, upstream: AsyncPostgresStore, pool: asyncpg.Pool
) -> None:
    """Items AsyncPostgresStore wrote (one with a TTL, one deleted) read back identically
    through graphwire: get, search newest first, list_namespaces, the TTL columns, and
    graphwire's overwrite keeps upstream's created_at."""
    await upstream.aput(("users", "carol"), "prefs", {"theme": "blue"})
    await upstream.aput(("users", "dave"), "prefs", {"theme": "red"}, ttl=5)
    await upstream.aput(("users", "erin"), "prefs", {"theme": "gone"})
    await upstream.adelete(("users", "erin"), "prefs")
    for ns in [("users", "carol"), ("users", "dave")]:
        assert await store.aget(ns, "prefs", refresh_ttl=False) == \
            await upstream.aget(ns, "prefs", refresh_ttl=False)
    assert await store.aget(("users", "erin"), "prefs") is None
    assert [i.value for i in await store.asearch(("users",))] == [{"theme": "red"},
                                                                   {"theme": "blue"}]
    assert await store.asearch(("users",)) == await upstream.asearch(("users",))
    assert await store.alist_namespaces(prefix=("users",)) == [("users", "carol"),
                                                                ("users", "dave")]
    assert (await _expiry(pool, "users.dave", "prefs"))["ttl_minutes"] == 5
    before = await upstream.aget(("users", "carol"), "prefs")
    await store.aput(("users", "carol"), "prefs", {"theme": "green"})
    after = await upstream.aget(("users", "carol"), "prefs")
    assert before is not None and after is not None
    assert (after.value, after.created_at) == ({"theme": "green"}, before.created_at)


async def test_a_lost_database_is_an_outage_for_reads_and_writes(schema: str) -> None:
    """On a pool whose connections are gone, aget and aput raise StoreDatabaseUnavailable (a
    CheckpointDatabaseUnavailable: the runner retries the request once PostgreSQL is back)."""
    pool = await asyncpg.create_pool(TEST_DATABASE_URL, min_size=1, max_size=1,
                                     init=init_connection, server_settings={"search_path": schema})
    store = GroupCommitStore(pool)
    await store.setup()
    pool.terminate()
    with pytest.raises(StoreDatabaseUnavailable, match=r"^PostgreSQL for the store is unavai"):
        await store.aget(("x",), "k")
    with pytest.raises(StoreDatabaseUnavailable) as caught:
        await store.aput(("x",), "k", {"v": 1})
    assert isinstance(caught.value, CheckpointDatabaseUnavailable)
    await store.aclose()


async def test_the_background_sweeper_deletes_expired_items(
    store: GroupCommitStore, pool: asyncpg.Pool
) -> None:
    """start_ttl_sweeper(0.2) deletes an item whose 0.3 s TTL expired within about a second,
    and leaves the item without a TTL; stop_ttl_sweeper ends it."""
    await store.aput(("w",), "brief", {"v": 1}, ttl=0.005)
    await store.aput(("w",), "stays", {"v": 2})
    store.start_ttl_sweeper(0.2)
    for _ in range(50):
        if await pool.fetchval("SELECT count(*) FROM store") == 1:
            break
        await asyncio.sleep(0.1)
    assert [r["key"] for r in await pool.fetch("SELECT key FROM store")] == ["stays"]
    await store.stop_ttl_sweeper()
    assert store._sweeper is None
