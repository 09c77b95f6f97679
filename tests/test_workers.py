"""Worker processes in one consumer group: scale-out, SIGKILL, SIGTERM drain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from graphwire.topics.specs import TopicNames
from tests.conftest import PARTITIONS
from tests.kafka_helpers import (
    Collector,
    WorkerProcess,
    committed_total,
    encode,
    produce,
    request,
    wait_for_members,
)

pytestmark = pytest.mark.integration


async def test_200_requests_over_4_partitions_with_2_workers_all_get_results(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path
) -> None:
    """Two workers share the group: every one of 200 requests gets exactly one success."""
    workers = [WorkerProcess(worker_env, log_path=worker_log).start() for _ in range(2)]
    try:
        await wait_for_members(bootstrap, worker_env["GRAPHWIRE_GROUP_ID"], 2)
        ids = [f"req-{i}" for i in range(200)]
        await produce(bootstrap, topics.requests, [(i.encode(), encode(request(i))) for i in ids])
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await out.wait_count(topics.results, 200, timeout=60)
            await asyncio.sleep(0.5)
            results = out.values(topics.results)
            workers_seen = {
                v["data"]["worker"] for v in out.values(topics.events) if v["type"] == "run_started"
            }
        assert sorted(r["request_id"] for r in results) == sorted(ids)
        assert {r["status"] for r in results} == {"success"}
        assert len(workers_seen) == 2, f"work was not shared: {workers_seen}"
        assert [w.terminate() for w in workers] == [0, 0]
        assert (
            await committed_total(
                bootstrap, worker_env["GRAPHWIRE_GROUP_ID"], topics.requests, PARTITIONS
            )
            == 200
        )
    finally:
        for w in workers:
            w.stop()


async def test_sigkilled_worker_loses_nothing(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path
) -> None:
    """A worker killed mid-run: its uncommitted requests complete on the surviving worker."""
    env = {**worker_env, "GRAPHWIRE_MAX_IN_FLIGHT": "100"}
    victim = WorkerProcess({**env, "GRAPHWIRE_WORKER_ID": "victim"}, log_path=worker_log).start()
    survivor = None
    try:
        ids = [f"slow-{i}" for i in range(40)]
        await produce(
            bootstrap,
            topics.requests,
            [(i.encode(), encode(request(i, graph="slow", input={"seconds": 3}))) for i in ids],
        )
        async with Collector(bootstrap, topics.results, topics.events) as out:
            # wait until the victim has started runs, then kill it before any can finish
            await out.wait_until(
                lambda: sum(v["type"] == "run_started" for v in out.values(topics.events)) >= 10
            )
            victim.kill()
            finished_before_kill = len(out.records[topics.results])
            survivor = WorkerProcess(
                {**env, "GRAPHWIRE_WORKER_ID": "survivor"}, log_path=worker_log
            ).start()
            await out.wait_until(
                lambda: (
                    {orjson.loads(r.value)["request_id"] for r in out.records[topics.results]}
                    >= set(ids)
                ),
                timeout=90,
            )
            results = out.values(topics.results)
        assert finished_before_kill == 0
        assert {r["request_id"] for r in results} == set(ids)
        assert {r["status"] for r in results} == {"success"}
        assert survivor.terminate() == 0
        assert (
            await committed_total(bootstrap, env["GRAPHWIRE_GROUP_ID"], topics.requests, PARTITIONS)
            == 40
        )
    finally:
        victim.stop()
        if survivor:
            survivor.stop()


async def test_sigterm_drains_in_flight_runs_and_commits(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path
) -> None:
    """SIGTERM during 8 runs of 1.5 s: all 8 finish, exit code 0, offsets committed to the end."""
    worker = WorkerProcess(worker_env, log_path=worker_log).start()
    try:
        ids = [f"drain-{i}" for i in range(8)]
        await produce(
            bootstrap,
            topics.requests,
            [(i.encode(), encode(request(i, graph="slow", input={"seconds": 1.5}))) for i in ids],
        )
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await out.wait_until(
                lambda: sum(v["type"] == "run_started" for v in out.values(topics.events)) == 8
            )
            assert len(out.records[topics.results]) == 0
            code = await asyncio.to_thread(worker.terminate)
            await out.wait_count(topics.results, 8, timeout=10)
            results = out.values(topics.results)
        assert code == 0
        assert sorted(r["request_id"] for r in results) == sorted(ids)
        assert {r["status"] for r in results} == {"success"}
        assert (
            await committed_total(
                bootstrap, worker_env["GRAPHWIRE_GROUP_ID"], topics.requests, PARTITIONS
            )
            == 8
        )
    finally:
        worker.stop()


async def test_worker_serves_health_ready_and_metrics(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path
) -> None:
    """/health 200; /ready 200 with Kafka, Redis, PostgreSQL ok; /metrics counts a run."""
    import urllib.request

    from graphwire.processors.dev.broker import free_port

    port = free_port()
    worker = WorkerProcess({**worker_env, "GRAPHWIRE_HTTP_PORT": str(port)}, log_path=worker_log)
    worker.start()
    try:
        await produce(bootstrap, topics.requests, [(b"h1", encode(request("h1")))])
        async with Collector(bootstrap, topics.results) as out:
            await out.wait_count(topics.results, 1)

        def get(path: str) -> tuple[int, bytes]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read()

        health, ready, metrics = await asyncio.gather(
            *(asyncio.to_thread(get, p) for p in ("/health", "/ready", "/metrics"))
        )
        assert health == (200, b'{"status": "alive"}')
        assert ready[0] == 200
        assert orjson.loads(ready[1]) == {
            "ready": True,
            "dependencies": {"Kafka": "ok", "Redis": "ok", "PostgreSQL": "ok"},
        }
        assert (
            b'langgraph_workflow_executions_total{status="success",workflow_name="pipeline"} 1.0'
            in metrics[1]
        )
    finally:
        worker.stop()
