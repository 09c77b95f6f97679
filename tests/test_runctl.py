"""Run control on Kafka (issue 14): cancel, multitask_strategy on a thread, time travel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.runner.claims import RedisClaims
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.client import GraphwireClient
from graphwire.topics.history import read_history
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.kafka_helpers import Collector, encode, produce, request

pytestmark = pytest.mark.integration

GRAPHS = "steps=tests.sample_graphs:thread_steps"


def steps(request_id: str, thread: str, label: str, pause: float, **fields: Any) -> dict[str, Any]:
    """A request of the 4-step thread graph."""
    return request(request_id, graph="steps", thread_id=thread,
                   input={"label": label, "pause": pause}, **fields)


@pytest.fixture
async def runner(settings: Settings, topics: TopicNames) -> AsyncIterator[GraphRunner]:
    """An in-process runner of the 4-step thread graph (dedup and checkpoints on)."""
    async with GraphRunner(settings, GraphRegistry.from_sources(specs=GRAPHS)) as running:
        yield running


@pytest.fixture
async def client(bootstrap: str, topics: TopicNames) -> AsyncIterator[GraphwireClient]:
    """A client of this test's topics that checks run status in Redis."""
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix,
                               redis_url=TEST_REDIS_URL) as c:
        yield c


def by_id(out: Collector, topic: str) -> dict[str, Any]:
    return {v["request_id"]: v for v in out.values(topic)}


def events_of(out: Collector, topics: TopicNames, rid: str) -> list[tuple[str, str | None]]:
    """(type, node) of ``rid``'s events, in order."""
    return [(e["type"], e["node"]) for e in out.values(topics.events) if e["request_id"] == rid]


async def wait_node(out: Collector, topics: TopicNames, rid: str, node: str) -> None:
    await out.wait_until(lambda: ("node", node) in events_of(out, topics, rid))


async def wait_results(out: Collector, topics: TopicNames, *rids: str) -> dict[str, Any]:
    await out.wait_until(lambda: set(rids) <= set(by_id(out, topics.results)), timeout=60)
    return by_id(out, topics.results)


ALL = ["Z1", "Z2", "Z3", "Z4"]


@pytest.mark.parametrize(
    ("strategy", "first_status", "second_status", "final_log"),
    [
        ("enqueue", "success", "success", [*ALL, "A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4"]),
        ("reject", "success", "rejected", [*ALL, "A1", "A2", "A3", "A4"]),
        ("interrupt", "cancelled", "success", [*ALL, "A1", "A2", "B1", "B2", "B3", "B4"]),
        ("rollback", "cancelled", "success", [*ALL, "B1", "B2", "B3", "B4"]),
    ],
)
async def test_multitask_strategy_on_a_busy_thread(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, strategy: str,
    first_status: str, second_status: str, final_log: list[str],
) -> None:
    """A second request arrives while the first runs its step2: each strategy ends both as
    Platform users expect, and the final state shows which of the first run's steps held."""
    thread = f"t-{strategy}"
    async with Collector(bootstrap, topics.results, topics.events, topics.dlq) as out:
        await produce(bootstrap, topics.requests,
                      [(thread.encode(), encode(steps("r0", thread, "Z", 0)))])
        await wait_results(out, topics, "r0")
        await produce(bootstrap, topics.requests,
                      [(thread.encode(), encode(steps("r1", thread, "A", 1.5)))])
        await wait_node(out, topics, "r1", "step1")  # r1 is in step2 now (1.5 s)
        second = steps("r2", thread, "B", 0, multitask_strategy=strategy)
        await produce(bootstrap, topics.requests, [(thread.encode(), encode(second))])
        results = await wait_results(out, topics, "r1", "r2")
        order = [v["request_id"] for v in out.values(topics.results)]
        await asyncio.sleep(0.3)
        dead = out.values(topics.dlq)
    r1, r2 = results["r1"], results["r2"]
    assert (r1["status"], r2["status"]) == (first_status, second_status)
    last = r2 if second_status == "success" else r1
    assert last["output"]["log"] == final_log
    assert dead == []
    m = runner.metrics.registry.get_sample_value
    if strategy == "enqueue":
        assert order == ["r0", "r1", "r2"]
        assert m("graphwire_multitask_total", {"strategy": "enqueue"}) is None
        return
    assert m("graphwire_multitask_total", {"strategy": strategy}) == 1
    if strategy == "reject":
        assert order == ["r0", "r2", "r1"]  # rejected at once, while r1 still ran
        assert r2["error"]["type"] == "ThreadBusy"
        assert "thread 't-reject' has a run in progress ('r1')" in r2["error"]["message"]
        assert events_of(out, topics, "r2") == [("run_started", None), ("run_finished", None)]
        return
    assert order == ["r0", "r1", "r2"]
    assert r1["error"]["type"] == "Cancelled"
    assert r1["error"]["message"].startswith(
        f"cancelled: request 'r2' arrived on thread '{thread}' with multitask_strategy "
        f"'{strategy}'"
    )
    assert r1["output"] is None
    assert events_of(out, topics, "r1") == [
        ("run_started", None), ("node", "step1"), ("node", "step2"), ("run_finished", None)
    ]
    assert m("graphwire_run_cancels_total", {"action": strategy, "cause": "multitask"}) == 1


async def test_cancel_running_and_queued_requests_of_a_thread(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, client: GraphwireClient,
) -> None:
    """A cancel stops the running request at its next step boundary (progress kept) and a
    queued one runs nothing; the request behind them runs on the kept state."""
    thread = "t-cancel"
    async with Collector(bootstrap, topics.results, topics.events, topics.dlq) as out:
        await produce(bootstrap, topics.requests, [
            (thread.encode(), encode(steps("c1", thread, "A", 1.5))),
            (thread.encode(), encode(steps("c2", thread, "B", 0))),
            (thread.encode(), encode(steps("c3", thread, "C", 0))),
        ])
        await wait_node(out, topics, "c1", "step1")
        running = await client.cancel("c1", reason="user pressed stop")
        queued = await client.cancel("c2", force=True)
        results = await wait_results(out, topics, "c1", "c2", "c3")
        await asyncio.sleep(0.3)
        dead = out.values(topics.dlq)
        finished = await client.cancel("c3")
        unknown = await client.cancel("never-sent")
    assert (running.state, queued.state) == ("running", "pending")
    assert (finished.state, finished.status, finished.sent) == ("finished", "success", False)
    assert (unknown.state, unknown.sent) == ("unknown", False)
    assert [results[r]["status"] for r in ("c1", "c2", "c3")] == ["cancelled", "cancelled",
                                                                  "success"]
    assert results["c1"]["error"] == {
        "type": "Cancelled",
        "message": "cancelled by a cancel request (user pressed stop); the steps it finished "
                   "are kept on thread 't-cancel' (interrupt)",
    }
    assert results["c2"]["error"]["message"] == (
        "cancelled by a cancel request; it had not started, so nothing ran"
    )
    assert events_of(out, topics, "c2") == [("run_started", None), ("run_finished", None)]
    assert results["c3"]["output"]["log"] == ["A1", "A2", "C1", "C2", "C3", "C4"]
    assert dead == []
    m = runner.metrics.registry.get_sample_value
    assert m("graphwire_cancel_requests_total", {"outcome": "running"}) == 1
    assert m("graphwire_cancel_requests_total", {"outcome": "pending"}) == 1
    assert m("graphwire_run_cancels_total", {"action": "interrupt", "cause": "cancel"}) == 2


async def test_cancel_of_a_finished_request_and_bad_control_messages_are_dead_lettered(
    bootstrap: str, topics: TopicNames, runner: GraphRunner,
) -> None:
    """Control messages any producer sends: a cancel of a finished request and invalid ones get
    a dead letter saying why; the control partition keeps moving."""
    async with Collector(bootstrap, topics.results, topics.dlq) as out:
        await produce(bootstrap, topics.requests,
                      [(b"t-done", encode(steps("d1", "t-done", "A", 0)))])
        await wait_results(out, topics, "d1")
        await produce(bootstrap, topics.control, [
            (b"d1", encode({"type": "cancel", "request_id": "d1"})),
            (b"x", encode({"type": "cancel"})),
            (b"x", encode({"type": "cancel", "request_id": "d1", "action": "undo"})),
            (b"x", b"not json"),
        ])
        await out.wait_count(topics.dlq, 4)
        reasons = sorted(dict(r.headers)["x-graphwire-error"].decode()
                         for r in out.records[topics.dlq])
    assert reasons == sorted([
        "cannot cancel 'd1': it already finished (success); nothing to cancel",
        "invalid control message: request_id: Field required (see `graphwire schema`)",
        "invalid control message: action: Input should be 'interrupt' or 'rollback' "
        "(see `graphwire schema`)",
        'control message is not UTF-8 JSON; produce an object like {"type": "cancel", '
        '"request_id": "..."}',
    ])
    m = runner.metrics.registry.get_sample_value
    assert m("graphwire_cancel_requests_total", {"outcome": "finished"}) == 1
    assert m("graphwire_cancel_requests_total", {"outcome": "invalid"}) == 3


async def test_bad_run_control_fields_are_rejected_and_the_partition_moves_on(
    bootstrap: str, topics: TopicNames, runner: GraphRunner,
) -> None:
    """An unknown strategy, rollback without a thread, checkpoint_id without a thread and an
    unknown checkpoint_id: each is rejected with the reason and dead-lettered."""
    bad = [
        steps("b1", "t-bad", "A", 0, multitask_strategy="later"),
        request("b2", graph="steps", input={"label": "A"}, multitask_strategy="rollback"),
        request("b3", graph="steps", input={"label": "A"}, checkpoint_id="abc"),
        steps("b4", "t-bad", "A", 0, checkpoint_id="no-such-checkpoint"),
        steps("b5", "t-bad", "A", 0),
    ]
    async with Collector(bootstrap, topics.results, topics.dlq) as out:
        await produce(bootstrap, topics.requests, [(b"t-bad", encode(b)) for b in bad])
        results = await wait_results(out, topics, "b1", "b2", "b3", "b4", "b5")
        await out.wait_count(topics.dlq, 4)
        dead = sorted(orjson.loads(r.value)["request_id"] for r in out.records[topics.dlq])
    assert [results[f"b{i}"]["status"] for i in range(1, 6)] == ["rejected"] * 4 + ["success"]
    assert results["b1"]["error"]["message"] == (
        "invalid request: multitask_strategy: Input should be 'enqueue', 'reject', 'interrupt' "
        "or 'rollback'"
    )
    assert results["b2"]["error"]["message"] == (
        "invalid request: request: multitask_strategy 'rollback' acts on the run in progress "
        "on a thread: set 'thread_id', or leave the strategy out"
    )
    assert results["b3"]["error"]["message"] == (
        "invalid request: request: checkpoint_id names a checkpoint of a thread: set "
        "'thread_id'"
    )
    assert results["b4"]["error"] == {
        "type": "UnknownCheckpoint",
        "message": "thread 't-bad' has no checkpoint 'no-such-checkpoint': pick one from "
                   "`graphwire history t-bad --graph steps`",
    }
    assert dead == ["b1", "b2", "b3", "b4"]


async def test_fork_from_the_checkpoint_after_step2_reruns_steps_3_and_4_only(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, prefix: str,
) -> None:
    """Run 4 steps, fork from the checkpoint after step2 with an edited label: steps 3 and 4
    run again (with the edit), 1 and 2 do not; the history shows the branch."""
    thread = "t-fork"
    async with Collector(bootstrap, topics.results, topics.events) as out:
        await produce(bootstrap, topics.requests,
                      [(thread.encode(), encode(steps("f1", thread, "A", 0)))])
        await wait_results(out, topics, "f1")
        before = await read_history(TEST_DATABASE_URL, thread, schema=prefix)
        after_step2 = next(c for c in before if c.ran == ["step2"])
        fork = request("f2", graph="steps", thread_id=thread, input=None,
                       command={"update": {"label": "F"}},
                       checkpoint_id=after_step2.checkpoint_id)
        await produce(bootstrap, topics.requests, [(thread.encode(), encode(fork))])
        results = await wait_results(out, topics, "f2")
        after = await read_history(TEST_DATABASE_URL, thread, schema=prefix)
    assert [(c.step, c.source, c.ran, c.next) for c in before] == [
        (4, "loop", ["step4"], []),
        (3, "loop", ["step3"], ["step4"]),
        (2, "loop", ["step2"], ["step3"]),
        (1, "loop", ["step1"], ["step2"]),
        (0, "loop", [], ["step1"]),
        (-1, "input", [], []),
    ]
    assert {c.request_id for c in before} == {"f1"}
    assert results["f2"]["status"] == "success"
    assert results["f2"]["output"]["log"] == ["A1", "A2", "F3", "F4"]
    assert events_of(out, topics, "f2") == [
        ("run_started", None), ("node", "step3"), ("node", "step4"), ("run_finished", None)
    ]
    branch = after[: len(after) - len(before)]
    assert [(c.step, c.source, c.ran, c.request_id) for c in branch] == [
        (5, "loop", ["step4"], "f2"), (4, "loop", ["step3"], "f2"), (3, "update", [], "f2"),
    ]
    assert branch[-1].parent_checkpoint_id == after_step2.checkpoint_id
    assert runner.metrics.registry.get_sample_value("graphwire_forks_total") == 1


async def test_cancel_reaches_runs_on_either_of_two_workers(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Any,
    prefix: str, client: GraphwireClient,
) -> None:
    """Two workers, one control partition: the runs on the worker that does not read the
    control topic are stopped too (the cancel is announced over Redis), at a step boundary;
    interrupt keeps the steps on the thread, rollback leaves no checkpoint of the run."""
    from aiokafka import AIOKafkaProducer

    from tests.kafka_helpers import WorkerProcess, wait_for_members

    # leases renewed every 10 s: too late for a 6 s run, so the announcement must carry it
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS, "GRAPHWIRE_LEASE_MS": "30000"}
    workers = [WorkerProcess({**env, "GRAPHWIRE_WORKER_ID": f"w{i}"}, log_path=worker_log).start()
               for i in range(2)]
    try:
        await wait_for_members(bootstrap, env["GRAPHWIRE_GROUP_ID"], 2)
        rids = [f"w-{p}" for p in range(4)]
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for p, rid in enumerate(rids):  # one per partition: both workers get two
                await producer.send_and_wait(topics.requests, encode(steps(rid, rid, "A", 1.5)),
                                             key=rid.encode(), partition=p)
        finally:
            await producer.stop()
        async with Collector(bootstrap, topics.results, topics.events, topics.dlq) as out:
            for rid in rids:
                await wait_node(out, topics, rid, "step1")
            actions = ["interrupt", "rollback", "interrupt", "rollback"]
            outcomes = [await client.cancel(rid, action)
                        for rid, action in zip(rids, actions, strict=True)]
            results = await wait_results(out, topics, *rids)
            starts = {e["request_id"]: e["data"]["worker"] for e in out.values(topics.events)
                      if e["type"] == "run_started"}
            await asyncio.sleep(0.3)
            dead = out.values(topics.dlq)
        assert [o.state for o in outcomes] == ["running"] * 4
        assert sorted(starts.values()) == ["w0", "w0", "w1", "w1"]
        assert [results[r]["status"] for r in rids] == ["cancelled"] * 4
        assert dead == []
        for rid, action in zip(rids, actions, strict=True):
            nodes = [n for t, n in events_of(out, topics, rid) if t == "node"]
            assert 1 <= len(nodes) < 4 and nodes == [f"step{i}" for i in range(1, len(nodes) + 1)]
            history = await read_history(TEST_DATABASE_URL, rid, schema=prefix)
            if action == "rollback":
                assert history == [], rid
                assert results[rid]["error"]["message"].endswith(
                    "the checkpoints it wrote were deleted (rollback)")
            else:
                assert history[0].ran == [nodes[-1]] and history[0].next == [
                    f"step{len(nodes) + 1}"], rid
        assert [w.terminate() for w in workers] == [0, 0]
    finally:
        for w in workers:
            w.stop()


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """``graphwire ARGS`` as a child process (the runner in this loop keeps running)."""
    import os
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "graphwire", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_cancel_outcomes_history_and_fork(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, worker_env: dict[str, str],
) -> None:
    """`graphwire cancel` says finished (exit 4) or unknown (exit 5) and sends nothing;
    `graphwire history --json` lists the checkpoints; `submit --checkpoint-id` forks."""
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS}
    async with Collector(bootstrap, topics.results, topics.control) as out:
        await produce(bootstrap, topics.requests,
                      [(b"t-cli", encode(steps("h1", "t-cli", "A", 0)))])
        await wait_results(out, topics, "h1")
        finished = await _cli(env, "cancel", "h1")
        unknown = await _cli(env, "cancel", "nope", "--action", "rollback")
        history = await _cli(env, "history", "t-cli", "--graph", "steps", "--json")
        rows = [orjson.loads(line) for line in history[1].splitlines()]
        after_step2 = next(r for r in rows if r["ran"] == ["step2"])
        fork = await _cli(env, "submit", "steps", "--thread", "t-cli", "--checkpoint-id",
                          after_step2["checkpoint_id"], "--wait")
        missing = await _cli(env, "history", "t-none", "--graph", "steps")
        sent = len(out.records[topics.control])
    assert finished == (4, "", "graphwire: h1 already finished (success): nothing to cancel\n")
    assert unknown[0] == 5 and unknown[2].startswith("graphwire: unknown request 'nope'")
    assert history[0] == 0
    assert [(r["graph"], r["step"], r["ran"], r["next"], r["request_id"]) for r in rows] == [
        ("steps", 4, ["step4"], [], "h1"),
        ("steps", 3, ["step3"], ["step4"], "h1"),
        ("steps", 2, ["step2"], ["step3"], "h1"),
        ("steps", 1, ["step1"], ["step2"], "h1"),
        ("steps", 0, [], ["step1"], "h1"),
        ("steps", -1, [], [], "h1"),
    ]
    assert fork[0] == 0, fork
    assert orjson.loads(fork[1])["output"]["log"] == ["A1", "A2", "A3", "A4"]
    assert missing[0] == 1
    assert missing[2] == (
        "graphwire: error: no checkpoint for thread 't-none': check the thread id, "
        "GRAPHWIRE_DATABASE_URL and GRAPHWIRE_CHECKPOINT_SCHEMA\n"
    )
    assert sent == 0


async def test_gateway_cancel_and_thread_history(
    topics: TopicNames, runner: GraphRunner, worker_env: dict[str, str],
) -> None:
    """HTTP: a caller cancels its own running run (202, rollback) and a finished one is 409,
    another caller's or an unknown one 404; the thread's history is the caller's only."""
    from tests.gateway_helpers import gateway_settings, serve, token

    me = {"Authorization": f"Bearer {token('runctl-user', ['steps'])}"}
    other = {"Authorization": f"Bearer {token('someone-else', ['steps'])}"}

    def run(label: str, pause: float, **extra: Any) -> dict[str, Any]:
        return {"workflow_name": "steps", "thread_id": "t1",
                "input_data": {"label": label, "pause": pause}, **extra}

    async with serve(gateway_settings(worker_env)) as http:
        first = (await http.post("/workflow/execute", json=run("A", 1.5), headers=me)).json()
        rid = first["request_id"]
        scope = rid.partition(".")[0]
        for _ in range(100):
            status = (await http.get(f"/workflow/status/{rid}", headers=me)).json()
            if status.get("status") == "running":
                break
            await asyncio.sleep(0.1)
        hidden = await http.post(f"/workflow/cancel/{rid}", headers=other)
        cancel = await http.post(f"/workflow/cancel/{rid}?action=rollback&reason=oops",
                                 headers=me)
        ended = await http.post("/workflow/invoke", json=run("B", 0), headers=me)
        cancelled = await http.get(f"/workflow/status/{rid}", headers=me)
        again = await http.post(f"/workflow/cancel/{rid}", headers=me)
        unknown = await http.post(f"/workflow/cancel/{scope}.never", headers=me)
        bad = await http.post(f"/workflow/cancel/{rid}?action=undo", headers=me)
        history = await http.get("/workflow/threads/t1/history", headers=me)
        theirs = await http.get("/workflow/threads/t1/history", headers=other)
        after_step2 = next(r for r in history.json() if r["ran"] == ["step2"])
        fork = await http.post("/workflow/invoke", headers=me, json={
            "workflow_name": "steps", "thread_id": "t1", "checkpoint_id":
            after_step2["checkpoint_id"], "command": {"update": {"label": "F"}}})
        busy_first = (await http.post("/workflow/execute", json=run("C", 1.0),
                                      headers=me)).json()["request_id"]
        await asyncio.sleep(0.5)
        refused = await http.post("/workflow/invoke", headers=me,
                                  json=run("D", 0, multitask_strategy="reject"))
    assert hidden.status_code == 404
    assert (cancel.status_code, cancel.json()) == (202, {
        "request_id": rid, "action": "rollback", "state": "running",
        "status_url": f"/workflow/status/{rid}"})
    assert ended.json()["output"]["log"] == ["B1", "B2", "B3", "B4"]  # rolled back: no A steps
    assert cancelled.json()["status"] == "cancelled"
    assert (again.status_code, again.json()) == (
        409, {"detail": f"{rid} already finished (cancelled): nothing to cancel"})
    assert (unknown.status_code, unknown.json()) == (
        404, {"detail": f"unknown request '{scope}.never'"})
    assert bad.status_code == 422
    assert history.status_code == 200
    rows = history.json()
    assert [(r["step"], r["ran"], r["request_id"]) for r in rows] == [
        (4, ["step4"], ended.json()["request_id"]), (3, ["step3"], ended.json()["request_id"]),
        (2, ["step2"], ended.json()["request_id"]), (1, ["step1"], ended.json()["request_id"]),
        (0, [], ended.json()["request_id"]), (-1, [], ended.json()["request_id"]),
    ]
    assert theirs.status_code == 404
    assert fork.json()["output"]["log"] == ["B1", "B2", "F3", "F4"]
    assert (refused.json()["status"], refused.json()["error"]["type"]) == ("rejected",
                                                                           "ThreadBusy")
    assert busy_first in refused.json()["error"]["message"]


async def test_kcat_cancel_example(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, tmp_path: Any,
) -> None:
    """examples/kcat/cancel.sh: any producer can cancel; the script prints the cancelled
    result."""
    import os
    import shutil

    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (apt-get install kcat; .ci/run installs it)")
    import confluent_kafka

    from tests.kafka_helpers import ROOT

    # Debian's kcat links librdkafka 2.0, which the test broker refuses: use the wheel's
    libs = os.path.join(os.path.dirname(os.path.dirname(confluent_kafka.__file__)),
                        "confluent_kafka.libs")
    lib = next(f for f in sorted(os.listdir(libs)) if f.startswith("librdkafka"))
    (tmp_path / "librdkafka.so.1").symlink_to(os.path.join(libs, lib))
    env = {**os.environ, "GRAPHWIRE_BOOTSTRAP_SERVERS": bootstrap,
           "GRAPHWIRE_TOPIC_PREFIX": topics.prefix, "LD_LIBRARY_PATH": str(tmp_path)}
    async with Collector(bootstrap, topics.events) as out:
        await produce(bootstrap, topics.requests,
                      [(b"t-kcat", encode(steps("k1", "t-kcat", "A", 1.5)))])
        await wait_node(out, topics, "k1", "step1")
        process = await asyncio.create_subprocess_exec(
            "sh", str(ROOT / "examples" / "kcat" / "cancel.sh"), "k1", "rollback", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr
    assert stderr.decode() == "cancel (rollback) of k1 sent\n"
    result = orjson.loads(stdout)
    assert (result["request_id"], result["status"], result["error"]["type"]) == (
        "k1", "cancelled", "Cancelled")


async def test_audit_tables_record_cancels_and_forks(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, worker_env: dict[str, str],
    tmp_path: Any,
) -> None:
    """The audit sink records a cancelled run (status, reason, the run_finished event's cancel
    action) and a fork (its run_started event names the checkpoint it forked from)."""
    import asyncpg

    from graphwire.processors.audit.db import server_settings
    from tests.kafka_helpers import WorkerProcess

    env = {**worker_env, "GRAPHWIRE_AUDIT_SCHEMA": topics.prefix,
           "GRAPHWIRE_AUDIT_GROUP_ID": f"{topics.prefix}-audit",
           "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.2", "GRAPHWIRE_AUDIT_HTTP_PORT": "0"}
    sink = WorkerProcess(env, "--migrate", command="audit", log_path=tmp_path / "sink.log")
    sink.start()
    try:
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await produce(bootstrap, topics.requests, [
                (b"t-audit", encode(steps("a1", "t-audit", "A", 1.5))),
            ])
            await wait_node(out, topics, "a1", "step1")
            await produce(bootstrap, topics.control, [
                (b"a1", encode({"type": "cancel", "request_id": "a1", "action": "interrupt"}))
            ])
            await wait_results(out, topics, "a1")
            history = await read_history(TEST_DATABASE_URL, "t-audit", schema=topics.prefix)
            fork = request("a2", graph="steps", thread_id="t-audit", input=None,
                           checkpoint_id=history[-1].checkpoint_id)  # the input checkpoint
            await produce(bootstrap, topics.requests, [(b"t-audit", encode(fork))])
            await wait_results(out, topics, "a2")
        db = await asyncpg.connect(TEST_DATABASE_URL,
                                   server_settings=server_settings(topics.prefix))
        try:
            rows: list[Any] = []
            for _ in range(150):
                rows = await db.fetch(
                    "SELECT r.request_id, r.status, r.error->>'type' AS error, "
                    "(SELECT e.data FROM graphwire_events e WHERE e.request_id = r.request_id "
                    " AND e.type = 'run_started') AS started, "
                    "(SELECT e.data FROM graphwire_events e WHERE e.request_id = r.request_id "
                    " AND e.type = 'run_finished') AS finished "
                    "FROM graphwire_runs r WHERE r.finished_at IS NOT NULL ORDER BY 1")
                if len(rows) == 2 and all(r["finished"] for r in rows):
                    break
                await asyncio.sleep(0.2)
        finally:
            await db.close()
    finally:
        sink.stop()
    a1, a2 = ({**dict(r), "started": orjson.loads(r["started"]),
               "finished": orjson.loads(r["finished"])} for r in rows)
    assert (a1["status"], a1["error"]) == ("cancelled", "Cancelled")
    assert a1["finished"]["cancel"] == {"action": "interrupt", "cause": "cancel"}
    assert "forked_from" not in a1["started"]
    assert (a2["status"], a2["finished"]["status"]) == ("success", "success")
    assert a2["started"]["forked_from"] == history[-1].checkpoint_id


async def test_cancel_survives_the_crash_of_the_worker_running_it(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Any,
    prefix: str, client: GraphwireClient,
) -> None:
    """The worker running a request is SIGKILLed, the cancel (rollback) is sent while no worker
    is up: the next worker ends the request cancelled (attempt 2) and deletes what the dead
    one checkpointed."""
    from tests.kafka_helpers import WorkerProcess

    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS}
    first = WorkerProcess({**env, "GRAPHWIRE_WORKER_ID": "first"}, log_path=worker_log).start()
    second = None
    try:
        async with Collector(bootstrap, topics.results, topics.events, topics.dlq) as out:
            await produce(bootstrap, topics.requests,
                          [(b"t-crash", encode(steps("x1", "t-crash", "A", 1.5)))])
            await wait_node(out, topics, "x1", "step1")
            first.kill()
            outcome = await client.cancel("x1", "rollback")
            assert await read_history(TEST_DATABASE_URL, "t-crash", schema=prefix) != []
            second = WorkerProcess({**env, "GRAPHWIRE_WORKER_ID": "second"},
                                   log_path=worker_log).start()
            results = await wait_results(out, topics, "x1")
            await asyncio.sleep(0.3)
            dead = out.values(topics.dlq)
        assert outcome.state == "running"  # the dead worker's lease had not expired yet
        assert (results["x1"]["status"], results["x1"]["attempts"]) == ("cancelled", 2)
        assert results["x1"]["error"]["message"].endswith(
            "the checkpoints it wrote were deleted (rollback)")
        assert await read_history(TEST_DATABASE_URL, "t-crash", schema=prefix) == []
        assert dead == []
        assert second.terminate() == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_a_held_request_learns_of_its_cancel_from_the_announcement_or_the_renewal(
    prefix: str,
) -> None:
    """RedisClaims: with the listener, on_cancel fires within moments of mark_cancel; without
    it, at the next lease renewal. A cancel of a done request is refused, not marked."""
    from graphwire.topics.runstatus import CancelMarker

    seen: list[tuple[str, str, str | None]] = []
    async with RedisClaims(TEST_REDIS_URL, namespace=prefix, lease_ms=30_000) as fast, \
            RedisClaims(TEST_REDIS_URL, namespace=prefix, lease_ms=1500) as slow:
        fast.listen_for_cancels()
        await asyncio.sleep(0.3)  # subscribed
        for store, rid in ((fast, "heard"), (slow, "renewed")):
            assert (await store.acquire(rid, "w")).state == "acquired"
            store.hold(rid, "w", on_cancel=lambda m, rid=rid: seen.append((rid, m.action,
                                                                            m.reason)))
        mark = await slow.mark_cancel("heard", CancelMarker("rollback", "why"))
        await asyncio.sleep(0.2)
        heard_first = list(seen)
        await slow.mark_cancel("renewed", CancelMarker("interrupt"))
        await asyncio.sleep(1.0)  # a renewal every 0.5 s
        await slow.complete("done-one", "w", "success")
        done = await slow.mark_cancel("done-one", CancelMarker("interrupt"))
        fast.let_go("heard")
        slow.let_go("renewed")
    assert (mark.first, mark.done, mark.running_on) == (True, None, "w")
    assert heard_first == [("heard", "rollback", "why")]
    assert seen[1:2] == [("renewed", "interrupt", None)]
    assert (done.first, done.done is not None and done.done.status) == (False, "success")


async def test_sync_client_cancel_and_history(
    bootstrap: str, topics: TopicNames, runner: GraphRunner, prefix: str,
) -> None:
    """The blocking Client: cancel of a finished request sends nothing; history lists the
    thread's checkpoints."""
    from graphwire import CancelOutcome, CheckpointInfo, Client

    async with Collector(bootstrap, topics.results) as out:
        await produce(bootstrap, topics.requests,
                      [(b"t-sync", encode(steps("s1", "t-sync", "A", 0)))])
        await wait_results(out, topics, "s1")

    def blocking() -> tuple[CancelOutcome, list[CheckpointInfo]]:
        with Client(bootstrap, topic_prefix=topics.prefix, redis_url=TEST_REDIS_URL) as client:
            return (client.cancel("s1", "rollback"),
                    client.history("t-sync", database_url=TEST_DATABASE_URL, schema=prefix))

    outcome, history = await asyncio.to_thread(blocking)
    assert (outcome.state, outcome.status, outcome.sent) == ("finished", "success", False)
    assert [c.step for c in history] == [4, 3, 2, 1, 0, -1]
    assert {c.request_id for c in history} == {"s1"}
