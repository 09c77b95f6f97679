"""GroupCommitSaver: LangGraph's conformance suite, cross-compatibility with upstream's
AsyncPostgresSaver, group commits, errors, encryption at rest. Real PostgreSQL, own schemas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from graphwire.processors.runner.pgsaver import GroupCommitSaver, init_connection
from tests.conftest import TEST_DATABASE_URL


async def _schema_pool(schema: str) -> asyncpg.Pool:
    admin = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await admin.close()
    pool = await asyncpg.create_pool(
        TEST_DATABASE_URL, min_size=1, max_size=4, init=init_connection,
        server_settings={"search_path": schema},
    )
    assert pool is not None
    return pool


async def _drop(schema: str) -> None:
    admin = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await admin.close()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A schema of this test's own (dropped afterwards)."""
    name = f"pgsaver_{uuid.uuid4().hex[:10]}"
    yield name
    await _drop(name)


@pytest.fixture
async def saver(schema: str) -> AsyncIterator[GroupCommitSaver]:
    """A set-up GroupCommitSaver in the test's schema."""
    pool = await _schema_pool(schema)
    saver = GroupCommitSaver(pool)
    await saver.setup()
    yield saver
    await saver.aclose()
    await pool.close()


async def test_passes_langgraph_checkpoint_conformance_base_capabilities() -> None:
    """Every base capability of langgraph-checkpoint-conformance passes (put, put_writes,
    get_tuple, list, delete_thread), and so does the one optional capability the saver has,
    copy_thread."""
    from langgraph.checkpoint.conformance import checkpointer_test, validate

    @checkpointer_test(name="GroupCommitSaver")
    async def factory() -> AsyncIterator[GroupCommitSaver]:
        name = f"pgsaver_conf_{uuid.uuid4().hex[:10]}"
        pool = await _schema_pool(name)
        saver = GroupCommitSaver(pool)
        await saver.setup()
        try:
            yield saver
        finally:
            await saver.aclose()
            await pool.close()
            await _drop(name)

    report = await validate(factory)
    failed = {
        cap: [t for t in res.failures]
        for cap, res in report.results.items()
        if res.detected and not res.passed
    }
    assert failed == {}
    assert report.passed_all_base()
    detected = {str(cap) for cap, res in report.results.items() if res.detected}
    assert {"copy_thread"} <= detected
    assert {"delete_for_runs", "prune"}.isdisjoint(detected)


class _State(TypedDict):
    items: list[str]
    count: int


def _graph() -> Any:
    def add(name: str) -> Any:
        def node(state: _State) -> dict[str, Any]:
            return {"items": [*state["items"], name], "count": state["count"] + 1}
        return node

    builder = StateGraph(_State)
    for name in ("a", "b", "c"):
        builder.add_node(name, add(name))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", "c")
    builder.add_edge("c", END)
    return builder


async def test_upstream_and_group_commit_savers_read_each_others_threads(schema: str) -> None:
    """A thread written by AsyncPostgresSaver reads back identically through GroupCommitSaver,
    and one written by GroupCommitSaver through AsyncPostgresSaver (same tables)."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import AsyncConnection
    from psycopg.rows import dict_row

    pool = await _schema_pool(schema)
    ours = GroupCommitSaver(pool)
    await ours.setup()
    conn = await AsyncConnection.connect(
        TEST_DATABASE_URL, autocommit=True, prepare_threshold=0, row_factory=dict_row,
        options=f"-c search_path={schema}",
    )
    try:
        theirs = AsyncPostgresSaver(conn)
        await theirs.setup()  # finds our migrations: nothing to do
        migrations = await pool.fetchval("SELECT count(*) FROM checkpoint_migrations")
        assert migrations == 10
        builder = _graph()
        for writer, reader in ((theirs, ours), (ours, theirs)):
            config = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex}"}}
            out = await builder.compile(checkpointer=writer).ainvoke(
                {"items": [], "count": 0}, config
            )
            assert out == {"items": ["a", "b", "c"], "count": 3}
            written = [t async for t in writer.alist(config)]
            read = [t async for t in reader.alist(config)]
            assert len(read) == len(written) == 5  # input + 3 nodes + start
            assert [t.checkpoint for t in read] == [t.checkpoint for t in written]
            assert [t.metadata for t in read] == [t.metadata for t in written]
            assert [t.parent_config for t in read] == [t.parent_config for t in written]
            assert [t.pending_writes for t in read] == [t.pending_writes for t in written]
            state = await builder.compile(checkpointer=reader).aget_state(config)
            assert state.values == {"items": ["a", "b", "c"], "count": 3}
    finally:
        await conn.close()
        await ours.aclose()
        await pool.close()


async def test_concurrent_puts_share_group_commits(saver: GroupCommitSaver) -> None:
    """64 runs putting at once commit in far fewer statements than puts, and every
    checkpoint is there afterwards."""
    puts = 0

    async def run(i: int) -> None:
        nonlocal puts
        config: Any = {"configurable": {"thread_id": f"g-{i}", "checkpoint_ns": ""}}
        for step in range(5):
            checkpoint = empty_checkpoint()
            checkpoint["channel_values"] = {"step": step, "blob": {"i": i}}
            checkpoint["channel_versions"] = {"step": str(step + 1), "blob": str(step + 1)}
            config = await saver.aput(config, checkpoint, {"step": step},
                                      {"step": str(step + 1), "blob": str(step + 1)})
            puts += 1

    await asyncio.gather(*(run(i) for i in range(64)))
    assert puts == 320
    assert saver.committed_ops == 320
    assert saver.commits <= 320 // 5  # measured ~10: one statement per writer tick
    rows = await saver.pool.fetchval("SELECT count(*) FROM checkpoints")
    blobs = await saver.pool.fetchval("SELECT count(*) FROM checkpoint_blobs")
    assert (rows, blobs) == (320, 320)
    latest = await saver.aget_tuple({"configurable": {"thread_id": "g-7"}})
    assert latest is not None
    assert latest.checkpoint["channel_values"] == {"step": 4, "blob": {"i": 7}}
    assert latest.metadata == {"step": 4}


async def test_encrypted_checkpoints_read_back_only_with_their_key(schema: str) -> None:
    """With GRAPHWIRE_CHECKPOINT_ENCRYPTION_KEY values and writes are stored AES-encrypted
    (no plaintext in any row); the same key reads them back, no key or another key fails."""
    from graphwire.processors.runner.checkpoints import CheckpointStore

    key, other = "k" * 32, "o" * 32
    config: Any = {"configurable": {"thread_id": f"enc-{uuid.uuid4().hex}"}}
    secret = "top-secret-value"
    async with CheckpointStore(TEST_DATABASE_URL, schema=schema, pool_size=2,
                               encryption_key=key) as store:
        assert store.saver is not None
        graph = _graph().compile(checkpointer=store.saver)
        out = await graph.ainvoke({"items": [secret], "count": 0}, config)
        assert out == {"items": [secret, "a", "b", "c"], "count": 3}
    conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings={"search_path": schema})
    try:
        blob_types = {r["type"] for r in await conn.fetch("SELECT type FROM checkpoint_blobs")}
        write_types = {r["type"] for r in await conn.fetch("SELECT type FROM checkpoint_writes")}
        assert blob_types == {"msgpack+aes", "null+aes"}  # no inline primitives either
        assert {t.split("+")[1] for t in write_types} == {"aes"}
        dump = await conn.fetchval(
            "SELECT string_agg(checkpoint::text, '') FROM checkpoints"
        )
        blobs = await conn.fetch(
            "SELECT blob FROM checkpoint_blobs UNION ALL SELECT blob FROM checkpoint_writes"
        )
        assert secret not in dump and '"count": 3' not in dump
        assert all(secret.encode() not in (r["blob"] or b"") for r in blobs)
    finally:
        await conn.close()
    async with CheckpointStore(TEST_DATABASE_URL, schema=schema, pool_size=2,
                               encryption_key=key) as store:
        state = await _graph().compile(checkpointer=store.saver).aget_state(config)
        assert state.values == {"items": [secret, "a", "b", "c"], "count": 3}
    for wrong in (None, other):
        async with CheckpointStore(TEST_DATABASE_URL, schema=schema, pool_size=2,
                                   encryption_key=wrong) as store:
            assert store.saver is not None
            with pytest.raises(Exception) as caught:
                await store.saver.aget_tuple(config)
            assert ("MAC check failed" in str(caught.value)) == (wrong is not None)


def test_a_checkpoint_key_of_the_wrong_length_is_refused_without_echoing_it() -> None:
    """A 10-byte key is refused with the lengths AES accepts, and the key is not in the error."""
    from graphwire.processors.runner.checkpoints import CheckpointStore
    from graphwire.topics.errors import GraphwireError

    with pytest.raises(GraphwireError) as caught:
        CheckpointStore(TEST_DATABASE_URL, encryption_key="0123456789")
    assert str(caught.value) == (
        "GRAPHWIRE_CHECKPOINT_ENCRYPTION_KEY is 10 bytes; an AES key must be 16, 24 or 32 "
        "bytes (e.g. the output of `openssl rand -hex 16`)"
    )


async def test_sync_durability_commits_each_step_before_the_next_starts(
    saver: GroupCommitSaver, schema: str
) -> None:
    """With durability="sync", 16 concurrent runs each see, from another connection at the
    start of their last node, exactly their 3 earlier checkpoints committed."""
    seen: dict[str, int] = {}
    conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings={"search_path": schema})
    lock = asyncio.Lock()

    async def last(state: _State, config: RunnableConfig) -> dict[str, Any]:
        thread = config["configurable"]["thread_id"]
        async with lock:  # one asyncpg connection, one query at a time
            seen[thread] = await conn.fetchval(
                "SELECT count(*) FROM checkpoints WHERE thread_id = $1", thread
            )
        return {"count": state["count"] + 1}

    builder = StateGraph(_State)
    builder.add_node("a", lambda state: {"count": state["count"] + 1})
    builder.add_node("b", last)
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", END)
    graph = builder.compile(checkpointer=saver)
    try:
        await asyncio.gather(*(
            graph.ainvoke({"items": [], "count": 0},
                          {"configurable": {"thread_id": f"s-{i}"}}, durability="sync")
            for i in range(16)
        ))
    finally:
        await conn.close()
    # input (-1), after __start__ (0), after a (1): all committed before b (step 2) starts
    assert seen == {f"s-{i}": 3 for i in range(16)}


async def test_a_bad_row_fails_only_its_own_caller_not_its_group(
    saver: GroupCommitSaver,
) -> None:
    """Of 32 puts sharing group commits, the one whose row PostgreSQL refuses (a NUL in its
    thread_id) fails with CheckpointDataRefused over PostgreSQL's error; the 31 others are
    committed."""

    async def put(i: int) -> None:
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"text": f"ok {i}"}
        thread = "b-5\x00" if i == 5 else f"b-{i}"
        await saver.aput({"configurable": {"thread_id": thread, "checkpoint_ns": ""}},
                         checkpoint, {}, {})

    outcomes = await asyncio.gather(*(put(i) for i in range(32)), return_exceptions=True)
    failed = {i: (type(o).__name__, type(o.__cause__).__name__)
              for i, o in enumerate(outcomes) if o is not None}
    assert failed == {5: ("CheckpointDataRefused", "CharacterNotInRepertoireError")}
    assert await saver.pool.fetchval("SELECT count(*) FROM checkpoints") == 31
    assert saver.commits < 31 + 1  # the 31 good ones did not each need their own statement


async def test_a_stalled_database_fills_the_bounded_queue_then_callers_wait(
    schema: str,
) -> None:
    """While another session holds a lock on checkpoints, 100 puts leave at most 8 queued
    (the rest wait to enqueue) and none returns; after the lock goes, all 100 are committed."""
    pool = await _schema_pool(schema)
    saver = GroupCommitSaver(pool, max_queued=8)
    await saver.setup()
    blocker = await asyncpg.connect(TEST_DATABASE_URL, server_settings={"search_path": schema})
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")

        async def put(i: int) -> None:
            checkpoint = empty_checkpoint()
            await saver.aput({"configurable": {"thread_id": f"q-{i}", "checkpoint_ns": ""}},
                             checkpoint, {}, {})

        puts = [asyncio.create_task(put(i)) for i in range(100)]
        await asyncio.sleep(0.5)
        assert saver._queue.qsize() == 8  # bounded: the other 91 wait in put (1 is in flight)
        assert [t.done() for t in puts] == [False] * 100
        await lock.rollback()
        await asyncio.wait_for(asyncio.gather(*puts), timeout=10)
        assert await pool.fetchval("SELECT count(*) FROM checkpoints") == 100
    finally:
        await blocker.close()
        await saver.aclose()
        await pool.close()


async def test_a_value_postgresql_refuses_is_the_requests_fault_not_an_outage(
    saver: GroupCommitSaver,
) -> None:
    """A NUL in a thread_id read from a checkpointed graph: the saver raises
    CheckpointDataRefused, the runner's state read turns it into UnstorableRequest (a rejected
    request), never DependencyUnavailable (an outage, retried forever)."""
    from graphwire.processors.runner.pgsaver import CheckpointDataRefused
    from graphwire.processors.runner.threadstate import checkpointed_state
    from graphwire.topics.errors import UnstorableRequest

    config: Any = {"configurable": {"thread_id": "a\x00b"}}
    with pytest.raises(CheckpointDataRefused) as refused:
        await saver.aget_tuple(config)
    assert type(refused.value.__cause__).__name__ == "CharacterNotInRepertoireError"
    graph = _graph().compile(checkpointer=saver)
    with pytest.raises(UnstorableRequest) as caught:
        await checkpointed_state(graph, config)
    assert str(caught.value).startswith(
        "PostgreSQL refused this request's data (CharacterNotInRepertoireError: invalid byte "
        'sequence for encoding "UTF8": 0x00); it would refuse it on every retry'
    )


class _TextState(TypedDict):
    text: str
    note: str


async def test_state_strings_with_nul_are_stored_and_read_back_exactly(
    saver: GroupCommitSaver,
) -> None:
    """A checkpointed run whose state holds U+0000 (a string channel, inline in jsonb
    elsewhere) commits, and its state reads back equal to what InMemorySaver keeps."""
    from langgraph.checkpoint.memory import InMemorySaver

    def step(state: _TextState) -> dict[str, Any]:
        return {"note": state["text"] + "\x00!"}

    builder = StateGraph(_TextState)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    given = {"text": "a\x00b", "note": ""}
    config: Any = {"configurable": {"thread_id": "nul-state"}}
    out = await builder.compile(checkpointer=saver).ainvoke(given, config)
    state = await builder.compile(checkpointer=saver).aget_state(config)
    memory = builder.compile(checkpointer=InMemorySaver())
    expected = await memory.ainvoke(given, config)
    assert out == state.values == expected == {"text": "a\x00b", "note": "a\x00b\x00!"}


async def _locked(schema: str) -> tuple[asyncpg.Connection, Any]:
    """Another session holding an exclusive lock on checkpoints (writes wait, reads pass)."""
    blocker = await asyncpg.connect(TEST_DATABASE_URL, server_settings={"search_path": schema})
    lock = blocker.transaction()
    await lock.start()
    await blocker.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")
    return blocker, lock


async def test_a_pipelined_run_ends_before_its_commits_and_settles_after_them(
    saver: GroupCommitSaver, schema: str,
) -> None:
    """Inside ``pipelined()`` a 3-node run with the default (async) durability finishes while
    PostgreSQL cannot commit (its writes are queued, in order), ``settle()`` waits for them,
    and then its 5 checkpoints are committed; a ``sync`` run in the same state does not
    finish."""
    graph = _graph().compile(checkpointer=saver)
    blocker, lock = await _locked(schema)
    try:
        with saver.pipelined() as writes:
            out = await asyncio.wait_for(graph.ainvoke(
                {"items": [], "count": 0}, {"configurable": {"thread_id": "p-async"}}), 5)
            settling = asyncio.ensure_future(writes.settle())
        assert out == {"items": ["a", "b", "c"], "count": 3}
        with saver.pipelined():
            synced = asyncio.ensure_future(graph.ainvoke(
                {"items": [], "count": 0}, {"configurable": {"thread_id": "p-sync"}},
                durability="sync"))
        await asyncio.sleep(0.5)
        assert (settling.done(), synced.done()) == (False, False)
        assert len(writes.pending) > 0
        await lock.rollback()
        assert await asyncio.wait_for(settling, 10) is None
        await asyncio.wait_for(synced, 10)
    finally:
        await blocker.close()
    assert writes.pending == set()
    counts = dict(await saver.pool.fetch(
        "SELECT thread_id, count(*) FROM checkpoints GROUP BY thread_id"))
    # input (-1), after __start__ (0), after a, b and c
    assert counts == {"p-async": 5, "p-sync": 5}


async def test_a_pipelined_run_reads_what_it_queued(
    saver: GroupCommitSaver, schema: str,
) -> None:
    """A pipelined run's ``aget_tuple`` waits for its own queued write to commit, then returns
    it; a read outside the run does not wait (and does not see it yet)."""
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"count": 7}
    config: Any = {"configurable": {"thread_id": "r-1", "checkpoint_ns": ""}}
    blocker, lock = await _locked(schema)
    try:
        with saver.pipelined():
            await asyncio.wait_for(saver.aput(config, checkpoint, {}, {"count": 1}), 5)
            read = asyncio.ensure_future(saver.aget_tuple(config))
        assert await asyncio.wait_for(saver.aget_tuple(config), 5) is None
        await asyncio.sleep(0.3)
        assert not read.done()
        await lock.rollback()
        found = await asyncio.wait_for(read, 10)
    finally:
        await blocker.close()
    assert found is not None
    assert (found.checkpoint["id"], found.checkpoint["channel_values"]) == (
        checkpoint["id"], {"count": 7})


async def test_after_a_pipelined_write_fails_the_run_writes_nothing_more(
    saver: GroupCommitSaver,
) -> None:
    """A pipelined run whose first checkpoint PostgreSQL refuses (a NUL in its thread_id):
    its next write, queued before the failure was known, is not committed; once the failure
    is known a write raises it at once; ``settle()`` returns it; another run's write in the
    same groups commits."""
    from graphwire.processors.runner.pgsaver import CheckpointDataRefused

    def put(thread: str, text: str) -> Any:
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"text": text}
        return saver.aput({"configurable": {"thread_id": thread, "checkpoint_ns": ""}},
                          checkpoint, {}, {})

    with saver.pipelined() as writes:
        await put("f-1\x00", "first")
        await put("f-1", "second")  # the same run: must not land without the first
        found = await writes.settle()
        with pytest.raises(CheckpointDataRefused):
            await put("f-1", "third")
    with saver.pipelined() as other:
        await put("f-2", "other")
        assert await other.settle() is None
    assert isinstance(found, CheckpointDataRefused)
    rows = await saver.pool.fetch("SELECT thread_id FROM checkpoints ORDER BY thread_id")
    assert [r["thread_id"] for r in rows] == ["f-2"]


async def test_after_a_shared_group_the_next_waits_for_company_and_a_lone_writer_never_waits(
    schema: str,
) -> None:
    """With ``tick_s=0.5``: four puts of one thread, each after the last, commit as four groups
    within 1.5 s (a lone writer never waits the tick); after a group shared by two threads, a
    put waits for company, and one sent 0.2 s after it commits in the same group."""
    pool = await _schema_pool(schema)
    saver = GroupCommitSaver(pool, tick_s=0.5)
    await saver.setup()

    async def put(thread: str) -> None:
        await saver.aput({"configurable": {"thread_id": thread, "checkpoint_ns": ""}},
                         empty_checkpoint(), {}, {})

    async def alone() -> None:
        for _ in range(4):
            await put("alone")

    try:
        await asyncio.wait_for(alone(), 1.5)
        assert saver.commits == 4
        await asyncio.gather(put("s-1"), put("s-2"))
        assert saver.commits == 5  # one group, of two threads
        first = asyncio.ensure_future(put("s-3"))
        await asyncio.sleep(0.2)
        second = asyncio.ensure_future(put("s-4"))
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert (saver.commits, saver.committed_ops) == (6, 8)
    finally:
        await saver.aclose()
        await pool.close()
