"""Exactly-once effect (Redis) and durable runs (PostgreSQL checkpoints), on real services."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import orjson
import pytest

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.runner.claims import RedisClaims
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.positions import event_position
from graphwire.topics.specs import TopicNames
from tests.conftest import PARTITIONS, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.helpers import eventually, runner_for
from tests.helpers.runners import StartRunner
from tests.kafka_helpers import Collector, WorkerProcess, committed_total, encode, produce, request

pytestmark = pytest.mark.integration


async def _node_runs_table(prefix: str) -> tuple[asyncpg.Connection, str]:
    """A connection and a fresh table in the test's schema where recorded steps log each start."""
    table = f'"{prefix}".node_runs'
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{prefix}"')
    await conn.execute(
        f"CREATE TABLE {table} (request_id text, node text, at timestamptz default now())"
    )
    return conn, table


async def _wait_for_node(conn: asyncpg.Connection, table: str, node: str) -> None:
    """Wait (up to 30 s) until ``node`` has started."""
    await eventually(lambda: conn.fetchval(f"SELECT count(*) FROM {table} WHERE node = $1", node),
                     30, what=f"{node} started")


@pytest.fixture
async def runner(start_runner: StartRunner) -> GraphRunner:
    """An in-process runner with dedup and checkpoints on (the defaults)."""
    return await start_runner()


async def test_dedup_store_lease_done_and_attempts(prefix: str) -> None:
    """acquire: first wins, a second owner is busy, a released lease is re-acquired as
    attempt 2, after complete every acquire says done; the same owner again counts up."""
    async with RedisClaims(TEST_REDIS_URL, namespace=prefix, lease_ms=5000) as store:
        first = await store.acquire("r1", "w1")
        busy = await store.acquire("r1", "w2")
        assert (first.state, first.attempt) == ("acquired", 1)
        assert (busy.state, busy.detail) == ("busy", "w1")
        assert await store.renew("r1", "w1") is True
        assert await store.renew("r1", "w2") is False
        await store.release("r1", "w1")
        again = await store.acquire("r1", "w2")
        assert (again.state, again.attempt) == ("acquired", 2)
        await store.complete("r1", "w2", "success")
        done = await store.acquire("r1", "w3")
        assert (done.state, done.detail) == ("done", "success")
        # the same owner again (a retry after an outage, a restarted pod): a new attempt
        assert (await store.acquire("r2", "w1")).attempt == 1
        assert (await store.acquire("r2", "w1")).attempt == 2


async def test_duplicate_request_ids_run_once_and_publish_one_result(
    bootstrap: str, topics: TopicNames, runner: GraphRunner
) -> None:
    """The same request_id produced three times (two keys): one run, one result, 2 skipped."""
    body = encode(request("dup-1"))
    await produce(bootstrap, topics.requests, [(b"dup-1", body), (b"dup-1", body)])
    async with Collector(bootstrap, topics.results, topics.events) as out:
        await out.wait_count(topics.results, 1)
        await produce(
            bootstrap, topics.requests, [(b"other-key", body), (b"z", encode(request("z")))]
        )
        await out.wait_until(
            lambda: any(
                orjson.loads(r.value)["request_id"] == "z" for r in out.records[topics.results]
            )
        )
        await asyncio.sleep(0.3)
        results = [v["request_id"] for v in out.values(topics.results)]
        starts = [v["request_id"] for v in out.values(topics.events) if v["type"] == "run_started"]
    assert sorted(results) == ["dup-1", "z"]
    assert sorted(starts) == ["dup-1", "z"]
    assert runner.metrics.registry.get_sample_value("graphwire_duplicates_skipped_total") == 2
    result_at = next(
        f"{r.topic}/{r.partition}/{r.offset}"
        for r in out.records[topics.results]
        if orjson.loads(r.value)["request_id"] == "dup-1"
    )
    async with RedisClaims(TEST_REDIS_URL, namespace=topics.prefix) as store:
        marker = await store.acquire("dup-1", "probe")
    assert marker.state == "done"
    assert orjson.loads(marker.detail) == {"status": "success", "result": result_at}


async def test_sigkill_mid_run_resumes_from_checkpoint(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path, prefix: str
) -> None:
    """Killed during step3 of 4: after redelivery step1-2 ran once, step3 at most twice,
    step4 once, and the result says attempt 2."""
    conn, table = await _node_runs_table(prefix)
    env = {**worker_env, "GRAPHWIRE_GRAPHS": "steps=tests.sample_graphs:make_recorded_steps"}
    first = WorkerProcess(env, log_path=worker_log).start()
    second = None
    try:
        await produce(
            bootstrap,
            topics.requests,
            [
                (
                    b"k1",
                    encode(request("steps-1", graph="steps", input={"table": table, "pause": 4})),
                )
            ],
        )
        await _wait_for_node(conn, table, "step3")
        first.kill()
        second = WorkerProcess(env, log_path=worker_log).start()
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await out.wait_count(topics.results, 1, timeout=60)
            result = out.values(topics.results)[0]
            starts = [v["data"] for v in out.values(topics.events) if v["type"] == "run_started"]
        rows = await conn.fetch(
            f"SELECT node, count(*) AS n FROM {table} GROUP BY node ORDER BY node"
        )
        counts = {r["node"]: r["n"] for r in rows}
        assert counts["step1"] == 1 and counts["step2"] == 1 and counts["step4"] == 1
        assert 1 <= counts["step3"] <= 2
        assert result["status"] == "success"
        assert result["output"]["done"] == ["step1", "step2", "step3", "step4"]
        assert result["attempts"] == 2
        assert [(s["attempt"], s["resumed"]) for s in starts] == [(1, False), (2, True)]
        assert second.terminate() == 0
        assert (
            await committed_total(bootstrap, env["GRAPHWIRE_GROUP_ID"], topics.requests, PARTITIONS)
            == 1
        )
    finally:
        first.stop()
        if second:
            second.stop()
        await conn.close()


async def test_retriable_errors_are_retried_up_to_max_attempts(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """ConnectionError is retried (graph default 4, request override 2); ValueError is not."""
    from tests.sample_graphs import FLAKY_CALLS

    registry = GraphRegistry.from_sources(
        specs="flaky=tests.sample_graphs:flaky,failing=tests.sample_graphs:failing"
    )
    async with runner_for(settings, registry, retry_backoff_s=0.01) as runner:
        await produce(
            bootstrap,
            topics.requests,
            [
                (b"a", encode(request("recovers", graph="flaky", input={"fail_times": 2}))),
                (
                    b"b",
                    encode(
                        request("gives-up", graph="flaky", input={"fail_times": 9}, max_attempts=2)
                    ),
                ),
                (b"c", encode(request("not-retried", graph="failing"))),
            ],
        )
        async with Collector(bootstrap, topics.results, topics.dlq) as out:
            await out.wait_count(topics.results, 3)
            await out.wait_count(topics.dlq, 2)
            results = {v["request_id"]: v for v in out.values(topics.results)}
            dead = sorted(orjson.loads(r.value)["request_id"] for r in out.records[topics.dlq])
        retries = runner.metrics.registry.get_sample_value("graphwire_retries_total")
    assert (results["recovers"]["status"], results["recovers"]["attempts"]) == ("success", 3)
    assert results["recovers"]["output"] == {"fail_times": 2, "calls": 3}
    assert (results["gives-up"]["status"], results["gives-up"]["attempts"]) == ("error", 2)
    assert results["gives-up"]["error"] == {
        "type": "ConnectionError",
        "message": "upstream refused call 2",
    }
    assert (results["not-retried"]["status"], results["not-retried"]["attempts"]) == ("error", 1)
    assert dead == ["gives-up", "not-retried"]
    assert (FLAKY_CALLS["recovers"], FLAKY_CALLS["gives-up"]) == (3, 2)
    assert retries == 3


async def test_sigterm_stops_at_a_step_boundary_and_another_worker_resumes(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path, prefix: str
) -> None:
    """SIGTERM during step3: the worker exits 0 after step3 without a result; the next worker
    runs only step4. Every step ran exactly once."""
    conn, table = await _node_runs_table(prefix)
    env = {**worker_env, "GRAPHWIRE_GRAPHS": "steps=tests.sample_graphs:make_recorded_steps"}
    first = WorkerProcess(env, log_path=worker_log).start()
    second = None
    try:
        await produce(
            bootstrap,
            topics.requests,
            [
                (
                    b"k1",
                    encode(request("drain-1", graph="steps", input={"table": table, "pause": 2})),
                )
            ],
        )
        await _wait_for_node(conn, table, "step3")
        assert await asyncio.to_thread(first.terminate) == 0
        nodes_at_exit = [
            r["node"] for r in await conn.fetch(f"SELECT node FROM {table} ORDER BY at")
        ]
        second = WorkerProcess(env, log_path=worker_log).start()
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await out.wait_count(topics.results, 1, timeout=60)
            result = out.values(topics.results)[0]
            starts = [v["data"] for v in out.values(topics.events) if v["type"] == "run_started"]
        nodes = [r["node"] for r in await conn.fetch(f"SELECT node FROM {table} ORDER BY at")]
        assert nodes_at_exit == ["step1", "step2", "step3"]
        assert nodes == ["step1", "step2", "step3", "step4"]
        assert (result["status"], result["attempts"]) == ("success", 2)
        assert result["output"]["done"] == ["step1", "step2", "step3", "step4"]
        assert [(s["attempt"], s["resumed"]) for s in starts] == [(1, False), (2, True)]
    finally:
        first.stop()
        if second:
            second.stop()
        await conn.close()


async def test_approval_interrupts_then_resumes_through_the_cli(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, worker_env: dict[str, str]
) -> None:
    """approval: interrupted with the draft; `graphwire state` shows it pending;
    `graphwire submit --resume` publishes; the thread's state then has no next step."""
    from tests.helpers import graphwire

    thread = f"{topics.prefix}-th"
    await produce(
        bootstrap,
        topics.requests,
        [
            (
                thread.encode(),
                encode(
                    request(
                        "ap-1", graph="approval", input={"topic": "graphwire 1.0"}, thread_id=thread
                    )
                ),
            )
        ],
    )
    async with Collector(bootstrap, topics.results) as out:
        await out.wait_count(topics.results, 1)
        first = out.values(topics.results)[0]
    draft = "Announcing graphwire 1.0: a short post, ready for review."
    assert (first["status"], first["thread_id"]) == ("interrupted", thread)
    assert [i["value"]["draft"] for i in first["interrupts"]] == [draft]

    env = {k: v for k, v in worker_env.items() if k != "GRAPHWIRE_GROUP_ID"}
    state = await asyncio.to_thread(graphwire, "state", thread, "--graph", "approval", env=env)
    assert state.returncode == 0, state.stderr
    pending = orjson.loads(state.stdout)
    assert (pending["next"], pending["values"]["draft"]) == (["review"], draft)
    assert [i["value"]["draft"] for i in pending["interrupts"]] == [draft]

    resumed = await asyncio.to_thread(
        graphwire,
        "submit",
        "approval",
        "--thread",
        thread,
        "--request-id",
        "ap-2",
        "--resume",
        '{"approved": true, "comment": "ship it"}',
        "--wait",
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    result = orjson.loads(resumed.stdout)
    assert (result["status"], result["thread_id"]) == ("success", thread)
    assert result["output"] == {
        "topic": "graphwire 1.0",
        "draft": draft,
        "approved": True,
        "comment": "ship it",
        "published": True,
    }
    after = orjson.loads(
        (await asyncio.to_thread(graphwire, "state", thread, "--graph", "approval", env=env)).stdout
    )
    assert (after["next"], after["interrupts"], after["values"]["published"]) == ([], [], True)
    missing = await asyncio.to_thread(graphwire, "state", "nope", "--graph", "approval", env=env)
    assert missing.returncode == 1
    assert "no checkpoint for thread 'nope' of graph 'approval'" in missing.stderr


async def test_twenty_identical_cached_requests_run_the_graph_once(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Cache opted in, 20 identical requests at once (20 keys): one run, 19 cached results;
    a different input misses; a request without `cache` runs."""
    from tests.sample_graphs import COUNTED_RUNS

    COUNTED_RUNS.clear()
    registry = GraphRegistry.from_sources(specs="counted=tests.sample_graphs:counted")
    body = {"graph": "counted", "input": {"text": "same"}, "cache": {"ttl_s": 60}}
    async with GraphRunner(settings, registry) as runner:
        await produce(
            bootstrap,
            topics.requests,
            [(f"c{i}".encode(), encode({"request_id": f"c{i}", **body})) for i in range(20)],
        )
        async with Collector(bootstrap, topics.results) as out:
            await out.wait_count(topics.results, 20)
            await produce(
                bootstrap,
                topics.requests,
                [
                    (b"d", encode({**body, "request_id": "other", "input": {"text": "else"}})),
                    (
                        b"e",
                        encode(
                            {
                                "request_id": "uncached",
                                "graph": "counted",
                                "input": {"text": "same"},
                            }
                        ),
                    ),
                ],
            )
            await out.wait_count(topics.results, 22)
            results = {v["request_id"]: v for v in out.values(topics.results)}
        sample = runner.metrics.registry.get_sample_value
        hits = sample("graphwire_cache_lookups_total", {"outcome": "hit"})
    first_twenty = [results[f"c{i}"] for i in range(20)]
    assert len(COUNTED_RUNS) == 3
    assert COUNTED_RUNS[0].startswith("c") and set(COUNTED_RUNS[1:]) == {"other", "uncached"}
    assert sorted(r["cached"] for r in first_twenty) == [False] + [True] * 19
    assert {(r["status"], orjson.dumps(r["output"])) for r in first_twenty} == {
        ("success", orjson.dumps({"text": "same", "length": 4}))
    }
    assert (results["other"]["cached"], results["other"]["output"]["length"]) == (False, 4)
    assert results["uncached"]["cached"] is False
    assert hits == 19


async def test_dlq_list_and_replay_reruns_a_failed_request(
    bootstrap: str, topics: TopicNames, settings: Settings, worker_env: dict[str, str]
) -> None:
    """`graphwire dlq list` shows each dead letter with its reason; `dlq replay --request-id`
    re-produces it (dedup forgets it) and it runs again, this time successfully."""
    from tests.helpers import graphwire

    registry = GraphRegistry.from_sources(specs="flaky=tests.sample_graphs:flaky")
    env = {k: v for k, v in worker_env.items() if k != "GRAPHWIRE_GROUP_ID"}
    async with GraphRunner(settings, registry):
        await produce(
            bootstrap,
            topics.requests,
            [
                (b"x", b"not json", [("origin", b"t")]),
                (
                    b"fx-1",
                    encode(request("fx-1", graph="flaky", input={"fail_times": 1}, max_attempts=1)),
                ),
            ],
        )
        async with Collector(bootstrap, topics.results, topics.dlq, topics.events) as out:
            await out.wait_count(topics.dlq, 2)
            listed = await asyncio.to_thread(graphwire, "dlq", "list", "--json", env=env)
            assert listed.returncode == 0, listed.stderr
            entries = [orjson.loads(line) for line in listed.stdout.splitlines()]
            assert [(e["request_id"], e["source"].split("/")[0]) for e in entries] == [
                (None, topics.requests),
                ("fx-1", topics.requests),
            ]
            assert "not UTF-8 JSON" in entries[0]["reason"]
            assert entries[1]["reason"] == "graph failed: upstream refused call 1"

            unsure = await asyncio.to_thread(graphwire, "dlq", "replay", env=env)
            assert unsure.returncode == 1 and "--request-id ID or --all" in unsure.stderr
            replayed = await asyncio.to_thread(
                graphwire, "dlq", "replay", "--request-id", "fx-1", env=env
            )
            assert replayed.stdout.strip() == f"replayed 1 dead letters to {topics.requests}"
            await out.wait_count(topics.results, 2)
            results = [(v["request_id"], v["status"]) for v in out.values(topics.results)]
            await out.wait_until(lambda: sum(
                e["type"] == "run_finished" for e in out.values(topics.events)) == 2)
    assert results == [("fx-1", "error"), ("fx-1", "success")]
    # the rerun is start 2: its events follow the first start's, none reuses a position
    starts = [(e["seq"], e["data"]["attempt"]) for e in out.values(topics.events)
              if e["type"] == "run_started"]
    assert starts == [(event_position(1, 0, 0), 1), (event_position(2, 0, 0), 2)]
    seqs = [e["seq"] for e in out.values(topics.events)]
    assert len(set(seqs)) == len(seqs)


async def test_stateless_checkpoints_are_deleted_and_threads_pruned_by_age(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, worker_env: dict[str, str]
) -> None:
    """Finished stateless runs leave no checkpoints (batched delete); a thread keeps its own
    until `graphwire checkpoints prune` finds it older than the retention."""
    from tests.helpers import graphwire

    thread = f"{topics.prefix}-keep"
    await produce(
        bootstrap,
        topics.requests,
        [
            (b"s1", encode(request("stateless-1"))),
            (b"s2", encode(request("stateless-2"))),
            (thread.encode(), encode(request("threaded-1", thread_id=thread))),
        ],
    )
    async with Collector(bootstrap, topics.results) as out:
        await out.wait_count(topics.results, 3)
    schema = worker_env["GRAPHWIRE_CHECKPOINT_SCHEMA"]
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        query = f'SELECT DISTINCT thread_id FROM "{schema}".checkpoints ORDER BY 1'

        async def threads() -> list[str]:
            return [r["thread_id"] for r in await conn.fetch(query)]

        # the batch runs about a second after the runs
        assert await eventually(threads, 5, until=lambda found: found == [thread]) == [thread]
        env = {k: v for k, v in worker_env.items() if k != "GRAPHWIRE_GROUP_ID"}
        kept = await asyncio.to_thread(graphwire, "checkpoints", "prune", env=env)
        assert kept.stdout.strip() == (
            "deleted the checkpoints of 0 threads idle for more than 2.592e+06 s"
        )
        pruned = await asyncio.to_thread(
            graphwire, "checkpoints", "prune", "--older-than-s", "0", env=env
        )
        assert (
            pruned.stdout.strip() == "deleted the checkpoints of 1 threads idle for more than 0 s"
        )
        assert await conn.fetch(query) == []
    finally:
        await conn.close()


async def test_lease_is_renewed_while_a_long_run_lasts(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """lease 1 s, run 2.5 s: a copy of the request on another key waits, then is skipped."""
    body = encode(request("long-1", graph="slow", input={"seconds": 2.5}))
    async with runner_for(settings, lease_ms=1000) as runner:
        await produce(bootstrap, topics.requests, [(b"key-a", body)])
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await out.wait_until(lambda: len(out.records[topics.events]) >= 1)
            await produce(bootstrap, topics.requests, [(b"key-b", body)])
            await out.wait_count(topics.results, 1)
            await asyncio.sleep(1.5)
            results = out.values(topics.results)
            starts = [v for v in out.values(topics.events) if v["type"] == "run_started"]
        sample = runner.metrics.registry.get_sample_value
        waits = sample("graphwire_lease_waits_total")
        skipped = sample("graphwire_duplicates_skipped_total")
    assert [(r["request_id"], r["status"]) for r in results] == [("long-1", "success")]
    assert len(starts) == 1
    assert waits is not None and waits > 0
    assert skipped == 1


async def test_a_lost_lease_stops_the_run_from_publishing(
    bootstrap: str, topics: TopicNames, settings: Settings
) -> None:
    """Another owner takes the lease mid-run: this run publishes nothing, waits for the lease,
    then reuses its finished checkpoint: one result, attempt 2, the node ran once."""
    from redis.asyncio import Redis

    async with runner_for(settings, lease_ms=1000) as _runner:
        await produce(
            bootstrap,
            topics.requests,
            [(b"k", encode(request("stolen-1", graph="slow", input={"seconds": 2.0})))],
        )
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await out.wait_until(lambda: len(out.records[topics.events]) >= 1)
            redis = Redis.from_url(TEST_REDIS_URL)
            await redis.set(f"{topics.prefix}:{{stolen-1}}:lease", "thief", px=2500)
            await redis.aclose()
            await out.wait_count(topics.results, 1, timeout=30)
            await asyncio.sleep(1.0)
            results = out.values(topics.results)
            events = out.values(topics.events)
    starts = [
        (e["data"]["attempt"], e["data"]["resumed"]) for e in events if e["type"] == "run_started"
    ]
    assert [(r["status"], r["attempts"], r["output"]) for r in results] == [
        ("success", 2, {"seconds": 2.0})
    ]
    assert starts == [(1, False), (2, True)]
    # wait ran once (attempt 1); attempt 2 found the run finished and replays its step
    assert [(e["node"], e.get("replayed", False)) for e in events if e["type"] == "node"] == [
        ("wait", False), ("wait", True)]


async def test_a_fresh_stateless_run_skips_its_checkpoint_read_a_thread_does_not(
    bootstrap: str, topics: TopicNames, runner: GraphRunner
) -> None:
    """Attempt 1 of a stateless request reads no checkpoint (its 4 checkpoints are still
    written); a request on a thread_id reads its thread's checkpoint once."""
    store = runner._checkpoints
    assert store is not None and store.saver is not None
    saver = store.saver
    reads, skipped, puts = saver.reads, saver.skipped_reads, saver.committed_ops
    await produce(bootstrap, topics.requests, [(b"f1", encode(request("fresh-1")))])
    async with Collector(bootstrap, topics.results) as out:
        await out.wait_count(topics.results, 1)
        assert out.values(topics.results)[0]["status"] == "success"
        assert (saver.reads - reads, saver.skipped_reads - skipped) == (0, 1)
        assert saver.committed_ops - puts >= 4  # input + 3 nodes: checkpoints still written
        thread = f"{topics.prefix}-t"
        await produce(bootstrap, topics.requests,
                      [(thread.encode(), encode(request("threaded-1", thread_id=thread)))])
        await out.wait_count(topics.results, 2)
    assert (saver.reads - reads, saver.skipped_reads - skipped) == (1, 1)
