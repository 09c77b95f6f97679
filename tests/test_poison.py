"""A request whose run takes its worker down every time is given up after
GRAPHWIRE_MAX_DELIVERIES starts: an error result and a dead letter, and the partition goes on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, WorkerProcess, encode, produce, request

pytestmark = pytest.mark.integration


async def test_a_request_that_kills_its_worker_is_given_up_after_max_deliveries(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**worker_env, "GRAPHWIRE_MAX_DELIVERIES": "2",
           "GRAPHWIRE_GRAPHS": "crasher=tests.sample_graphs:crasher"}
    log = tmp_path / "worker.log"
    async with Collector(bootstrap, topics.results, topics.dlq) as out:
        # same key: the good request waits behind the poison one, in order
        await produce(bootstrap, topics.requests, [
            (b"k", encode(request("poison", "crasher", input={"text": "x"}))),
            (b"k", encode(request("after", "echo", input={"text": "fine"}))),
        ])
        deaths = 0
        deadline = time.monotonic() + 120
        worker = WorkerProcess(env, log_path=log).start()
        try:
            while len(out.records[topics.results]) < 2:
                assert time.monotonic() < deadline, f"stuck after {deaths} worker deaths"
                assert worker.process is not None
                if worker.process.poll() is not None:  # the graph killed it: restart
                    deaths += 1
                    worker = WorkerProcess(env, log_path=log).start()
                await asyncio.sleep(0.2)
        finally:
            worker.stop()
    assert deaths == 2  # started twice, killed twice; the third delivery gives up
    results = {r["request_id"]: r for r in out.values(topics.results)}
    poison = results["poison"]
    assert (poison["status"], poison["error"]["type"], poison["attempts"]) == (
        "error", "PoisonMessage", 2
    )
    assert poison["error"]["message"].startswith("started 2 times and never finished")
    assert results["after"]["status"] == "success"
    reasons = [dict(r.headers)["x-graphwire-error"].decode() for r in out.records[topics.dlq]]
    assert [r.split(":")[0] for r in reasons] == ["poison message"]
