"""The audit sink under failure: PostgreSQL down and back, SIGTERM while it waits, SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from graphwire.processors.audit.db import server_settings
from graphwire.processors.dev.broker import free_port
from graphwire.topics.specs import TopicNames
from tests.conftest import PARTITIONS, TEST_DATABASE_URL
from tests.helpers import eventually, wait_rows
from tests.kafka_helpers import (
    WorkerProcess,
    committed_total,
    produce,
    wait_for_members,
    wait_ready,
)
from tests.private_services import PrivatePostgres

pytestmark = pytest.mark.integration


def event(rid: str, seq: int) -> bytes:
    return orjson.dumps({"request_id": rid, "seq": seq, "type": "node", "graph": "g",
                         "node": f"n{seq}", "data": {"seq": seq}, "ts": time.time()})


async def test_postgres_outage_loses_and_duplicates_nothing(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """The sink writes and commits 300 events; with PostgreSQL stopped, 300 more arrive, /ready
    answers 503 naming PostgreSQL, and the committed offsets stay at 300 for 2.5 s and after a
    SIGTERM (exit 0); after a restart of both, the table holds exactly the 600 events a0..a299
    and b0..b299 once each, /ready is 200, and the new process counts 0 write failures."""
    pg = await asyncio.to_thread(PrivatePostgres)
    await asyncio.to_thread(pg.start)
    port = free_port()
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    group = f"{prefix}-audit"
    env = {**worker_env, "GRAPHWIRE_DATABASE_URL": pg.url, "GRAPHWIRE_AUDIT_GROUP_ID": group,
           "GRAPHWIRE_AUDIT_HTTP_PORT": str(port), "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.2",
           "GRAPHWIRE_AUDIT_BATCH_MAX": "100"}
    log = tmp_path / "sink.log"
    sink = WorkerProcess(env, "--migrate", command="audit", log_path=log).start()
    conn: Any = None
    try:
        await produce(bootstrap, topics.events, [(b"a", event(f"a{i}", 0)) for i in range(300)])
        await wait_ready(port, 200)
        conn = await asyncpg.connect(pg.url)
        await wait_rows(conn, "SELECT count(*) FROM graphwire_events", 300)
        await eventually(lambda: committed_total(bootstrap, group, topics.events, PARTITIONS),
                         15, what="the first 300 committed", until=lambda done: done >= 300,
                         interval=0.2)
        await conn.close()
        conn = None

        await asyncio.to_thread(pg.stop)
        await produce(bootstrap, topics.events, [(b"b", event(f"b{i}", 0)) for i in range(300)])
        body = await wait_ready(port, 503)
        assert body["ready"] is False
        assert body["dependencies"]["postgresql"] != "ok"
        await asyncio.sleep(2.5)  # commits keep running; none may pass an unwritten record
        assert await committed_total(bootstrap, group, topics.events, PARTITIONS) == 300
        # stopped while it waits for PostgreSQL: the batch in hand must not be acknowledged
        assert sink.terminate(timeout=60) == 0
        assert await committed_total(bootstrap, group, topics.events, PARTITIONS) == 300

        await asyncio.to_thread(pg.start)
        sink = WorkerProcess(env, command="audit", log_path=log).start()
        conn = await asyncpg.connect(pg.url)
        await wait_rows(conn, "SELECT count(*) FROM graphwire_events", 600)
        await wait_ready(port, 200)
        ids = await conn.fetch("SELECT request_id FROM graphwire_events ORDER BY request_id")
        assert sorted(r["request_id"] for r in ids) == sorted(
            [f"a{i}" for i in range(300)] + [f"b{i}" for i in range(300)]
        )
        failures = await metric(port, "graphwire_audit_write_failures_total")
        assert failures == 0  # a new process: the outage was the previous one's
    finally:
        sink.stop()
        if conn is not None:
            await conn.close()
        await asyncio.to_thread(pg.remove)


async def metric(port: int, name: str) -> float:
    """Sum of a metric's samples on /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def sink_env(worker_env: dict[str, str], batch_max: int) -> dict[str, str]:
    """A sink of this test: its own group and schema, small batches, no HTTP port."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    return {**worker_env, "GRAPHWIRE_AUDIT_SCHEMA": prefix,
            "GRAPHWIRE_AUDIT_GROUP_ID": f"{prefix}-audit", "GRAPHWIRE_AUDIT_HTTP_PORT": "0",
            "GRAPHWIRE_AUDIT_BATCH_MAX": str(batch_max), "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.2"}


def result_records(n: int, graph: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"r{i}".encode(), orjson.dumps({"request_id": f"r{i}", "graph": graph,
                                         "status": "success", "output": {"i": i},
                                         "duration_ms": 1.0}))
        for i in range(n)
    ]


async def wait_at_least(conn: Any, sql: str, threshold: int, timeout: float = 60) -> None:
    """Poll ``sql`` (a count) until it reaches ``threshold`` (or the timeout: the caller's
    next assertion says what happened)."""
    with contextlib.suppress(AssertionError):
        await eventually(lambda: conn.fetchval(sql), timeout, until=lambda got: got >= threshold,
                         interval=0.02, ignore=asyncpg.UndefinedTableError)


async def test_sigkill_mid_batch_then_restart_records_everything_exactly_once(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """1,500 requests, results and 3,000 events (6,000 records); the sink is SIGKILLed twice mid-way
    (after 600 and 3,000 rows, never after finishing), and a third run records everything exactly
    once: 1,500 runs with matching input and output, 3,000 events (each request_id and seq once),
    no dead letters, and all 3,000 event offsets committed."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    env = sink_env(worker_env, 250)
    group = env["GRAPHWIRE_AUDIT_GROUP_ID"]
    n = 1500
    requests = [
        (f"r{i}".encode(), orjson.dumps({"request_id": f"r{i}", "graph": "pipeline",
                                         "input": {"i": i}}))
        for i in range(n)
    ]
    results = result_records(n, "pipeline")
    events = [(f"r{i}".encode(), event(f"r{i}", s)) for i in range(n) for s in range(2)]
    await asyncio.gather(
        produce(bootstrap, topics.requests, requests),
        produce(bootstrap, topics.results, results),
        produce(bootstrap, topics.events, events),
    )
    total = 2 * n + 2 * n  # 6,000 records
    log = tmp_path / "sink.log"
    conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings=server_settings(prefix))
    count = (
        "SELECT (SELECT count(*) FROM graphwire_events) + "
        "(SELECT count(*) FROM graphwire_runs WHERE status = 'success' AND input IS NOT NULL) "
        "* 2"
    )
    try:
        kills = 0
        for threshold in (600, 3000):
            sink = WorkerProcess(env, "--migrate", command="audit", log_path=log).start()
            try:
                await wait_at_least(conn, count, threshold)
                sink.kill()  # SIGKILL: no commit, no leave-group, a batch may be half done
                kills += 1
            finally:
                sink.stop()
            assert await conn.fetchval(count) < total, "finished before the kill: test is void"
        sink = WorkerProcess(env, command="audit", log_path=log).start()
        try:
            await wait_rows(conn, count, total, timeout=120)
            assert await conn.fetchval("SELECT count(*) FROM graphwire_runs") == n
            assert await conn.fetchval("SELECT count(*) FROM graphwire_events") == 2 * n
            assert await conn.fetchval("SELECT count(*) FROM graphwire_dead_letters") == 0
            pairs = await conn.fetch("SELECT request_id, seq FROM graphwire_events")
            assert sorted((r["request_id"], r["seq"]) for r in pairs) == sorted(
                (f"r{i}", s) for i in range(n) for s in range(2)
            )
            outputs = await conn.fetch("SELECT request_id, input, output FROM graphwire_runs")
            for r in outputs:
                want = {"i": int(r["request_id"][1:])}
                assert orjson.loads(r["input"]) == orjson.loads(r["output"]) == want
            await eventually(
                lambda: committed_total(bootstrap, group, topics.events, PARTITIONS), 20,
                what="the sink committing all it wrote", until=lambda done: done >= 2 * n,
                interval=0.5)
        finally:
            sink.stop()
        assert kills == 2
    finally:
        await conn.close()


async def test_two_sinks_share_the_partitions_and_one_dies(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """Two sink processes in one group; one is SIGKILLed mid-stream. The survivor takes its
    partitions over (a rebalance with batches in hand) and every row is there once."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    env = sink_env(worker_env, 200)
    group = env["GRAPHWIRE_AUDIT_GROUP_ID"]
    n = 1000
    results = result_records(n, "g")
    events = [(f"r{i}".encode(), event(f"r{i}", s)) for i in range(n) for s in range(3)]
    conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings=server_settings(prefix))
    log = tmp_path / "sink.log"
    first = WorkerProcess(env, "--migrate", command="audit", log_path=log).start()
    second = WorkerProcess(env, "--migrate", command="audit", log_path=log).start()
    count = "SELECT (SELECT count(*) FROM graphwire_events) + (SELECT count(*) FROM graphwire_runs)"
    try:
        await wait_for_members(bootstrap, group, 2, timeout=60)
        await asyncio.gather(produce(bootstrap, topics.results, results),
                             produce(bootstrap, topics.events, events))
        await wait_at_least(conn, count, 800)
        first.kill()
        assert await conn.fetchval(count) < 4 * n, "finished before the kill: test is void"
        await wait_rows(conn, count, 4 * n, timeout=120)
        pairs = await conn.fetch("SELECT request_id, seq FROM graphwire_events")
        assert sorted((r["request_id"], r["seq"]) for r in pairs) == sorted(
            (f"r{i}", s) for i in range(n) for s in range(3)
        )
        assert await conn.fetchval(
            "SELECT count(*) FROM graphwire_runs WHERE status = 'success'") == n
    finally:
        first.stop()
        second.stop()
        await conn.close()

