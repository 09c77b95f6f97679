"""Cancel of a pending request without ``--force`` (issue 24): a request queued behind a slow
one on its thread is held by no worker (Redis knows nothing of it), but the audit table has it
as accepted, and that is enough for ``graphwire cancel`` and ``GraphwireClient.cancel``."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.audit.db import server_settings
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.client import GraphwireClient
from graphwire.topics.runstatus import read_run_state, was_queued
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.helpers import eventually
from tests.kafka_helpers import Collector, WorkerProcess, encode, produce, request

pytestmark = pytest.mark.integration

GRAPHS = "steps=tests.sample_graphs:thread_steps"


@pytest.fixture
async def runner(settings: Settings) -> AsyncIterator[GraphRunner]:
    """An in-process runner of the 4-step thread graph (dedup and checkpoints on)."""
    async with GraphRunner(settings, GraphRegistry.from_sources(specs=GRAPHS)) as running:
        yield running


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """``graphwire ARGS`` as a child process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "graphwire", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def steps(rid: str, label: str, pause: float) -> bytes:
    """A request of the 4-step graph on thread ``t-pending``."""
    return encode(request(rid, graph="steps", thread_id="t-pending",
                          input={"label": label, "pause": pause}))


async def test_queued_requests_are_cancelled_without_force(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """p1 runs 4 steps of 1.5 s on its thread; p2 and p3 wait behind it (Redis has no state
    for either). Once the audit sink recorded them as accepted, ``graphwire cancel p2`` (no
    --force) exits 0 saying it had not started, and ``GraphwireClient.cancel("p3")`` with
    database_url answers ``pending``; both end ``cancelled`` having run nothing, p1 ends
    ``success``. An id nothing has seen is still ``unknown`` (exit 5) without --force."""
    prefix = topics.prefix
    audit_env = {**worker_env, "GRAPHWIRE_AUDIT_SCHEMA": prefix,
                 "GRAPHWIRE_AUDIT_GROUP_ID": f"{prefix}-audit",
                 "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.1", "GRAPHWIRE_AUDIT_HTTP_PORT": "0"}
    sink = WorkerProcess(audit_env, "--migrate", command="audit",
                         log_path=tmp_path / "sink.log").start()
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS, "GRAPHWIRE_AUDIT_SCHEMA": prefix}
    try:
        async with Collector(bootstrap, topics.results, topics.events) as out:
            for rid, label, pause in (("p1", "A", 1.5), ("p2", "B", 0), ("p3", "C", 0)):
                await produce(bootstrap, topics.requests, [(b"t-pending", steps(rid, label,
                                                                                pause))])

            async def accepted() -> dict[str, Any] | None:
                try:
                    db = await asyncpg.connect(TEST_DATABASE_URL,
                                               server_settings=server_settings(prefix))
                except OSError:
                    return None
                try:
                    rows = await db.fetch("SELECT request_id, status FROM graphwire_runs "
                                          "WHERE request_id = ANY($1::text[])", ["p2", "p3"])
                except asyncpg.UndefinedTableError:
                    return None
                finally:
                    await db.close()
                found = {r["request_id"]: r["status"] for r in rows}
                return found if len(found) == 2 else None

            recorded = await eventually(accepted, 30)
            redis = Redis.from_url(TEST_REDIS_URL)
            try:
                in_redis = [await read_run_state(redis, prefix, rid) for rid in ("p2", "p3")]
            finally:
                await redis.aclose()
            cli = await _cli(env, "cancel", "p2")
            async with GraphwireClient(bootstrap, topic_prefix=prefix, redis_url=TEST_REDIS_URL,
                                       database_url=TEST_DATABASE_URL,
                                       database_schema=prefix) as client:
                pending = await client.cancel("p3", reason="not needed")
                unknown = await client.cancel("p-never")
            never = await _cli(env, "cancel", "p-never")
            await out.wait_until(lambda: {"p1", "p2", "p3"} <= {
                r["request_id"] for r in out.values(topics.results)}, timeout=60)
            results = {r["request_id"]: r for r in out.values(topics.results)}
            events = [(e["request_id"], e["type"]) for e in out.values(topics.events)
                      if e["request_id"] in ("p2", "p3")]
    finally:
        sink.stop()
    assert recorded == {"p2": "accepted", "p3": "accepted"}
    assert in_redis == [None, None]  # queued on the thread: no worker holds either
    assert cli == (0, "", "cancel (interrupt) of p2 not started: it runs nothing when a "
                          "worker reaches it\n")
    assert (pending.state, pending.sent) == ("pending", True)
    assert (unknown.state, unknown.sent) == ("unknown", False)
    assert never[0] == 5 and never[2].startswith("graphwire: unknown request 'p-never'")
    assert [results[r]["status"] for r in ("p1", "p2", "p3")] == [
        "success", "cancelled", "cancelled"]
    assert results["p2"]["error"]["message"] == (
        "cancelled by a cancel request; it had not started, so nothing ran")
    assert results["p3"]["error"]["message"] == (
        "cancelled by a cancel request (not needed); it had not started, so nothing ran")
    assert results["p1"]["output"]["log"] == ["A1", "A2", "A3", "A4"]
    assert sorted(events) == [("p2", "run_finished"), ("p2", "run_started"),
                              ("p3", "run_finished"), ("p3", "run_started")]


async def test_queued_requests_are_cancelled_without_force_or_an_audit_sink(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, worker_env: dict[str, str],
) -> None:
    """No audit sink: q1 runs 4 steps of 1 s on its thread, q2 waits behind it on the same
    worker, which marks it queued in Redis (``runstatus.queued_key``) until its claim.
    ``graphwire cancel q2`` without --force exits 0 (not started) and q2 ends ``cancelled``
    having run nothing, its mark gone; q1 ends ``success``."""
    prefix = topics.prefix
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS}
    async with Collector(bootstrap, topics.results, topics.events) as out:
        for rid, label, pause in (("q1", "A", 1.0), ("q2", "B", 0)):
            await produce(bootstrap, topics.requests, [(b"t-pending", steps(rid, label, pause))])
        redis = Redis.from_url(TEST_REDIS_URL)
        try:
            marked = await eventually(lambda: was_queued(redis, prefix, "q2"), 30)
        finally:
            await redis.aclose()
        cli = await _cli(env, "cancel", "q2")
        await out.wait_until(lambda: {"q1", "q2"} <= {
            r["request_id"] for r in out.values(topics.results)}, timeout=60)
        results = {r["request_id"]: r for r in out.values(topics.results)}
        redis = Redis.from_url(TEST_REDIS_URL)
        try:  # its claim took the mark back
            unmarked = await eventually(lambda: was_queued(redis, prefix, "q2"), 10,
                                        until=lambda found: found is False)
        finally:
            await redis.aclose()
    assert (marked, unmarked) == (True, False)
    assert cli == (0, "", "cancel (interrupt) of q2 not started: it runs nothing when a "
                          "worker reaches it\n")
    assert [results[r]["status"] for r in ("q1", "q2")] == ["success", "cancelled"]
    assert results["q1"]["output"]["log"] == ["A1", "A2", "A3", "A4"]
