"""One request_id, one result: a worker that dies after publishing a result but before its done
marker does not get a different result published by the redelivery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from graphwire.topics.positions import event_position
from graphwire.topics.runstatus import run_keys
from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, WorkerProcess, encode, produce, request
from tests.private_services import PrivateRedis

pytestmark = pytest.mark.integration

# Every key of a request but the done marker: a worker limited to these can run and publish,
# and is then refused the done marker, so it stays in the window between the two.
_ALL_BUT_DONE = [f"~*:{name}" for name in ("lease", "tries", "start", "deaths", "result")]


async def test_a_crash_between_result_and_done_marker_republishes_the_same_result(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """An ``error`` result is out, the done-marker write is refused, the worker is SIGKILLed and
    the failed step would now succeed: the next worker publishes the same error result again
    (byte for byte) with its dead letter, runs no node, and marks the request done."""
    go, fixed, log = tmp_path / "go", tmp_path / "fixed", tmp_path / "worker.log"
    redis = PrivateRedis()
    redis.start()
    admin = Redis.from_url(redis.url)
    await admin.execute_command("ACL", "SETUSER", "worker", "on", ">worker-pw", "~*", "&*",
                                "+@all")
    base = {**worker_env, "GRAPHWIRE_GRAPHS": "gated=tests.sample_graphs:gated"}
    limited_url = f"redis://worker:worker-pw@127.0.0.1:{redis.port}/0"
    workers: list[WorkerProcess] = []
    keys = run_keys(topics.prefix, "one")
    try:
        async with Collector(bootstrap, topics.results, topics.events, topics.dlq) as out:
            workers.append(WorkerProcess({**base, "GRAPHWIRE_REDIS_URL": limited_url},
                                         log_path=log).start())
            body = request("one", "gated", input={"go": str(go), "fixed": str(fixed)})
            await produce(bootstrap, topics.requests, [(b"k", encode(body))])
            await out.wait_count(topics.events, 1, timeout=60)  # run_started: it holds the lease
            await admin.execute_command("ACL", "SETUSER", "worker", "resetkeys", *_ALL_BUT_DONE)
            go.touch()  # the step fails: an error result
            await out.wait_count(topics.results, 1)
            await out.wait_until(lambda: "NOPERM" in log.read_text() or "no permissions" in
                                 log.read_text(), timeout=10)
            assert await admin.get(keys.done) is None
            fixed.touch()  # from now on a rerun of the failed step would succeed
            workers[0].kill()
            workers.append(WorkerProcess({**base, "GRAPHWIRE_REDIS_URL": redis.url},
                                         log_path=log).start())
            await out.wait_count(topics.results, 2, timeout=60)
            await asyncio.sleep(1.0)  # its dead letter lands too; nothing more comes
            marker = await admin.get(keys.done)
            kept = await admin.exists(keys.result)
            results = out.records[topics.results]
            events = out.values(topics.events)
            reasons = [dict(r.headers)["x-graphwire-error"].decode()
                       for r in out.records[topics.dlq]]
    finally:
        for worker in workers:
            worker.stop()
        await admin.aclose()
        redis.stop()
    first, second = results
    assert second.value == first.value
    values = [orjson.loads(r.value) for r in results]
    assert [(v["request_id"], v["status"], v["error"]["type"]) for v in values] == [
        ("one", "error", "ValueError")
    ] * 2
    assert [(e["type"], e["data"].get("attempt"), e["data"].get("republished", False))
            for e in events] == [
        ("run_started", 1, False),
        ("run_finished", None, False),
        ("run_started", 2, True),  # the redelivery: a start of its own, that runs nothing
        ("run_finished", None, True),
    ]
    # the second start's events come after the first's: a consumer deduping on seq keeps all
    assert [e["seq"] for e in events] == [
        event_position(1, 0, 0), event_position(1, 0, 1),
        event_position(2, 0, 0), event_position(2, 0, 1),
    ]
    assert reasons == ["graph failed: the upstream answer is not fixed yet: try again later"] * 2
    assert marker is not None
    assert orjson.loads(marker) == {
        "status": "error", "result": f"{second.topic}/{second.partition}/{second.offset}"
    }
    assert kept == 0
