"""Scheduled runs (issue 16): after_seconds/run_at, crons, and the scheduler's leader failover."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from graphwire.processors.audit.db import migrate, server_settings
from graphwire.processors.dev.broker import free_port
from graphwire.topics.admin import ensure_topics
from graphwire.topics.codec import principal_header
from graphwire.topics.crons import Cron, due_firings, firing_id
from graphwire.topics.specs import TopicNames, TopicSpec
from tests.conftest import TEST_DATABASE_URL
from tests.helpers import wait_metric
from tests.kafka_helpers import (
    Collector,
    WorkerProcess,
    encode,
    metrics,
    produce,
    request,
    wait_for_members,
    wait_ready,
)
from tests.test_audit import cli

pytestmark = pytest.mark.integration


@pytest.fixture
def sched_env(worker_env: dict[str, str]) -> dict[str, str]:
    """The worker's environment plus the scheduler's: tables in the test's schema, its own
    group, a free health port, quick ticks and a quick standby."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    return {
        **worker_env,
        "GRAPHWIRE_AUDIT_SCHEMA": prefix,
        "GRAPHWIRE_SCHEDULER_GROUP_ID": f"{prefix}-scheduler",
        "GRAPHWIRE_SCHEDULER_HTTP_PORT": str(free_port()),
        "GRAPHWIRE_SCHEDULER_TICK_S": "0.1",
        "GRAPHWIRE_SCHEDULER_STANDBY_POLL_S": "0.3",
    }


@pytest.fixture
async def db(sched_env: dict[str, str]) -> AsyncIterator[Any]:
    """A connection to the test's schema, migrated."""
    schema = sched_env["GRAPHWIRE_AUDIT_SCHEMA"]
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    await migrate(conn, schema)
    await conn.close()
    conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings=server_settings(schema))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Child processes of the test, killed at the end."""
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.stop()


def spawn(processes: list[WorkerProcess], env: dict[str, str], command: str, log: Path,
          **overrides: str) -> WorkerProcess:
    process = WorkerProcess({**env, **overrides}, command=command, log_path=log).start()
    processes.append(process)
    return process


async def wait_leader(port: int, want: float, timeout: float = 20.0) -> None:
    """Wait until the scheduler on ``port`` reports ``graphwire_scheduler_leader == want``."""
    await wait_metric(port, "graphwire_scheduler_leader", lambda got: got == want, timeout,
                      interval=0.1)


async def start_stack(bootstrap: str, env: dict[str, str], processes: list[WorkerProcess],
                      tmp_path: Path) -> None:
    """A worker and a leading scheduler, both in their groups."""
    spawn(processes, env, "worker", tmp_path / "worker.log")
    spawn(processes, env, "scheduler", tmp_path / "scheduler.log")
    port = int(env["GRAPHWIRE_SCHEDULER_HTTP_PORT"])
    await wait_ready(port, 200)
    await wait_leader(port, 1)
    await wait_for_members(bootstrap, env["GRAPHWIRE_SCHEDULER_GROUP_ID"], 1)
    await wait_for_members(bootstrap, env["GRAPHWIRE_GROUP_ID"], 1)


def by_id(out: Collector, topic: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for record in out.records[topic]:
        value = orjson.loads(record.value)
        found.setdefault(value["request_id"], []).append((record, value))
    return found


async def test_delayed_requests_run_at_their_time_not_before(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """after_seconds (from the request's Kafka timestamp) and run_at: no run starts before the
    due time, each result comes within 2 s after it; a bad run_at or both fields: rejected."""
    await start_stack(bootstrap, sched_env, processes, tmp_path)
    async with Collector(bootstrap, topics.requests, topics.events, topics.results) as out:
        now = datetime.now(UTC)
        run_at = now + timedelta(seconds=4)
        replies = f"{topics.prefix}.replies"
        await ensure_topics(bootstrap, [TopicSpec(replies, 1)])
        await produce(bootstrap, topics.requests, [
            (b"d-after", encode(request("d-after", after_seconds=3)),
             [principal_header("api_key", "svc-a", "f3cb5844f63a"), ("x-other", b"dropped")]),
            (b"d-at", encode(request("d-at", run_at=run_at.isoformat().replace("+00:00", "Z"))),
             [("reply-to", replies.encode())]),
            (b"d-past", encode(request("d-past", run_at=(now - timedelta(hours=1)).astimezone(
                timezone(timedelta(hours=2))).isoformat()))),  # an hour late: runs at once
            (b"d-bad", encode(request("d-bad", run_at="tomorrow at noon"))),
            (b"d-both", encode(request("d-both", after_seconds=1, run_at=run_at.isoformat()))),
        ])
        await out.wait_until(lambda: len(by_id(out, topics.results)) >= 5, timeout=30)
        await asyncio.sleep(1.0)  # nothing else comes
        requests = by_id(out, topics.requests)
        produced_at = {rid: found[0][0].timestamp / 1000 for rid, found in requests.items()}
        results = by_id(out, topics.results)
        assert {rid: len(found) for rid, found in results.items()} == {
            "d-after": 1, "d-at": 1, "d-bad": 1, "d-both": 1, "d-past": 1}
        bad, both = results["d-bad"][0][1], results["d-both"][0][1]
        assert (bad["status"], bad["error"]["type"]) == ("rejected", "InvalidRequest")
        assert bad["error"]["message"].startswith("invalid request: run_at: Input should be a "
                                                  "valid datetime")
        assert (both["status"], both["error"]["message"]) == (
            "rejected", "invalid request: request: give 'after_seconds' or 'run_at', not both")
        due = {"d-after": produced_at["d-after"] + 3, "d-at": run_at.timestamp(),
               "d-past": produced_at["d-past"]}
        starts = {v["request_id"]: v["ts"] for v in map(
            lambda r: orjson.loads(r.value), out.records[topics.events])
            if v["type"] == "run_started"}
        for rid, at in due.items():
            record, value = results[rid][0]
            assert value["status"] == "success", value
            assert starts[rid] >= at, f"{rid} started {at - starts[rid]:.3f} s early"
            assert record.timestamp / 1000 <= at + 2.0, f"{rid}: {record.timestamp / 1000 - at}"
        # what the scheduler produced: each request once more, without the schedule fields
        assert {rid: len(found) for rid, found in requests.items()} == {
            "d-after": 2, "d-at": 2, "d-bad": 1, "d-both": 1, "d-past": 2}
        for rid in due:
            (_, original), (fired_record, fired) = requests[rid]
            assert fired == {k: v for k, v in original.items()
                             if k not in ("after_seconds", "run_at")}
            assert fired_record.key == rid.encode()
        assert dict(requests["d-at"][1][0].headers) == {"reply-to": replies.encode()}
        # the gateway's caller stays the caller of the run (the runner gives it to the graph)
        assert dict(requests["d-after"][1][0].headers) == dict(
            [principal_header("api_key", "svc-a", "f3cb5844f63a")])
    rows = await db.fetch("SELECT request_id, fired_at IS NOT NULL AS fired "
                          "FROM graphwire_schedules ORDER BY request_id")
    assert [(r["request_id"], r["fired"]) for r in rows] == [
        ("d-after", True), ("d-at", True), ("d-past", True)]


async def test_sigkilled_leader_loses_and_doubles_nothing(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """50 requests due over the next 10 s; the leader is SIGKILLed after some fired: the
    standby takes the lead and every request runs exactly once (one result each), none early."""
    first_port = int(sched_env["GRAPHWIRE_SCHEDULER_HTTP_PORT"])
    await start_stack(bootstrap, sched_env, processes, tmp_path)
    leader = processes[1]
    second_port = free_port()
    spawn(processes, sched_env, "scheduler", tmp_path / "standby.log",
          GRAPHWIRE_SCHEDULER_HTTP_PORT=str(second_port))
    await wait_ready(second_port, 200)
    await wait_leader(second_port, 0)
    await wait_for_members(bootstrap, sched_env["GRAPHWIRE_SCHEDULER_GROUP_ID"], 2)
    async with Collector(bootstrap, topics.requests, topics.events, topics.results) as out:
        start = datetime.now(UTC) + timedelta(seconds=1.5)
        due = {f"k{i:02d}": start + timedelta(seconds=i * 0.17) for i in range(50)}
        await produce(bootstrap, topics.requests, [
            (rid.encode(), encode(request(rid, run_at=at.isoformat()))) for rid, at in due.items()
        ])
        await out.wait_until(lambda: len(out.records[topics.results]) >= 12, timeout=30)
        leader.kill()
        await wait_leader(second_port, 1, timeout=10)
        await out.wait_until(lambda: len(out.records[topics.results]) >= 50, timeout=40)
        await asyncio.sleep(2.0)  # a double would come now
        results = by_id(out, topics.results)
        assert sorted(results) == sorted(due)
        assert [rid for rid, found in results.items() if len(found) != 1] == []
        assert all(v[0][1]["status"] == "success" for v in results.values())
        starts = {v["request_id"]: v["ts"] for v in map(
            lambda r: orjson.loads(r.value), out.records[topics.events])
            if v["type"] == "run_started"}
        early = [rid for rid, at in due.items() if starts[rid] < at.timestamp()]
        assert early == []
    unfired = await db.fetchval("SELECT count(*) FROM graphwire_schedules WHERE fired_at IS NULL")
    assert unfired == 0
    assert first_port != second_port


async def test_cron_fires_on_time_three_times_then_pause_stops_it(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """A cron every 2 s (6th field: seconds): 3 firings, each produced within 1 s of its
    scheduled time, id ``<cron>:<time>``, a success each; after pause none; list shows it."""
    await start_stack(bootstrap, sched_env, processes, tmp_path)
    name = "tick"
    async with Collector(bootstrap, topics.requests, topics.results) as out:
        added = cli(sched_env, "cron", "add", name, "--graph", "pipeline", "--schedule",
                    "* * * * * */2", "--input", '{"text": "Tick Tock"}')
        assert added.returncode == 0, added.stderr
        assert added.stdout.startswith(f"cron {name}: pipeline at '* * * * * */2' (UTC); ")

        def firings() -> list[tuple[Any, Any]]:
            return [(r, v) for r, v in ((r, orjson.loads(r.value))
                                        for r in out.records[topics.requests])
                    if v["request_id"].startswith(f"{name}:")]

        await out.wait_until(lambda: len(firings()) >= 3, timeout=20)
        paused = cli(sched_env, "cron", "pause", name)
        assert paused.returncode == 0, paused.stderr
        paused_at = datetime.now(UTC)
        three = firings()[:3]
        times = [datetime.fromisoformat(v["request_id"].split(":", 1)[1]) for _, v in three]
        assert [t.second % 2 for t in times] == [0, 0, 0]
        assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == \
            [2.0, 2.0]
        for (record, value), at in zip(three, times, strict=True):
            lateness = record.timestamp / 1000 - at.timestamp()
            assert 0 <= lateness < 1.0, f"{value['request_id']} produced {lateness:.3f} s late"
            assert value["request_id"] == firing_id(name, at)
            assert value["metadata"] == {"cron": name, "scheduled_at": firing_id("", at)[1:]}
            assert value["input"] == {"text": "Tick Tock"}
        await out.wait_until(lambda: len(by_id(out, topics.results)) >= len(firings()))
        seen = len(firings())
        await asyncio.sleep(5.0)
        assert len(firings()) == seen  # paused: nothing more fired
        late = [v["request_id"] for _, v in firings()
                if datetime.fromisoformat(v["request_id"].split(":", 1)[1]) > paused_at]
        assert late == []
        results = by_id(out, topics.results)
        assert sorted(results) == sorted(v["request_id"] for _, v in firings())
        assert {v[0][1]["status"] for v in results.values()} == {"success"}
        assert {v[0][1]["output"]["text"] for v in results.values()} == {"tick tock"}
        listed = cli(sched_env, "cron", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = [orjson.loads(line) for line in listed.stdout.splitlines()]
        assert (row["name"], row["paused"], row["schedule"], row["missed"]) == (
            name, True, "* * * * * */2", "run")
        resumed = cli(sched_env, "cron", "resume", name)
        assert resumed.returncode == 0, resumed.stderr
        await out.wait_until(lambda: len(firings()) == seen + 1, timeout=10)
        removed = cli(sched_env, "cron", "rm", name)
        assert (removed.returncode, removed.stdout) == (0, f"cron {name} removed\n")


async def test_missed_firings_run_once_or_are_skipped_by_policy(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """Daily crons whose last three firings fell due while no scheduler ran: ``run`` fires the
    latest missed one (today's) once, ``skip`` fires none; both then wait for tomorrow."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if datetime.now(UTC) - today < timedelta(minutes=2):
        pytest.skip("today's firing would still be on time, not missed")
    for name, missed in (("catchup", "run"), ("dropped", "skip")):
        await db.execute(
            "INSERT INTO graphwire_crons (name, graph, schedule, input, missed, next_at) "
            "VALUES ($1, 'pipeline', '0 0 * * *', '{\"text\": \"A\"}', $2, $3)",
            name, missed, today - timedelta(days=2),
        )
    await db.execute(  # written around CronStore: it cannot fire, and stops nothing else
        "INSERT INTO graphwire_crons (name, graph, schedule, timezone, input, next_at) "
        "VALUES ('broken', 'pipeline', '0 0 * * *', 'Mars/Olympus', '{}', $1)", today,
    )
    async with Collector(bootstrap, topics.requests, topics.results) as out:
        await start_stack(bootstrap, sched_env, processes, tmp_path)
        await out.wait_count(topics.results, 1, timeout=20)
        await asyncio.sleep(1.5)
        ids = [orjson.loads(r.value)["request_id"] for r in out.records[topics.results]]
    assert ids == [firing_id("catchup", today)]
    rows = await db.fetch("SELECT name, next_at, last_fired, paused FROM graphwire_crons "
                          "ORDER BY name")
    assert [(r["name"], r["next_at"], r["last_fired"], r["paused"]) for r in rows] == [
        ("broken", today, None, True),
        ("catchup", today + timedelta(days=1), today, False),
        ("dropped", today + timedelta(days=1), None, False),
    ]
    log = (tmp_path / "scheduler.log").read_text()
    assert "cron broken cannot fire (InvalidCron: unknown time zone 'Mars/Olympus' " in log
    assert "paused it: redefine it with `graphwire cron add broken --replace ...`" in log
    port = int(sched_env["GRAPHWIRE_SCHEDULER_HTTP_PORT"])
    samples = await metrics(port)
    assert samples['graphwire_scheduler_missed_firings_total{policy="run"}'] == 3
    assert samples['graphwire_scheduler_missed_firings_total{policy="skip"}'] == 3
    assert samples['graphwire_scheduler_fired_total{source="cron"}'] == 1


def test_bad_schedule_or_timezone_is_a_clear_cli_error(sched_env: dict[str, str]) -> None:
    """A schedule croniter cannot read, an unknown time zone or a bad name: exit 1 with a
    sentence saying what to write; nothing is stored (no database is even needed)."""
    env = {**sched_env, "GRAPHWIRE_DATABASE_URL": "postgresql://127.0.0.1:1/nowhere"}
    cases = [
        (["--schedule", "every five minutes"],
         "graphwire: error: cannot read the schedule 'every five minutes' (Exactly 5, 6 or 7 "
         "columns has to be specified for iterator expression.); write 5 cron fields like "
         "'*/5 * * * *' (minute hour day month weekday), a 6th for seconds\n"),
        (["--schedule", "61 * * * *"],
         "graphwire: error: cannot read the schedule '61 * * * *' ([61 * * * *] is not "
         "acceptable, out of range); write 5 cron fields like '*/5 * * * *' (minute hour day "
         "month weekday), a 6th for seconds\n"),
        (["--schedule", "0 2 * * *", "--timezone", "Mars/Olympus_Mons"],
         "graphwire: error: unknown time zone 'Mars/Olympus_Mons' (ZoneInfoNotFoundError); "
         "use an IANA name like UTC, Europe/Paris or America/New_York\n"),
        (["--schedule", "0 2 * * *", "--input", "[1]"],
         "graphwire: error: --input must be a JSON object, not a list\n"),
    ]
    for flags, message in cases:
        done = cli(env, "cron", "add", "nightly", "--graph", "pipeline", *flags)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", message)
    done = cli(env, "cron", "add", "no spaces", "--graph", "pipeline", "--schedule", "* * * * *")
    assert (done.returncode, done.stderr) == (1, "graphwire: error: invalid cron: name: use "
                                              "1..80 letters, digits, '_', '.' or '-', starting "
                                              "with a letter or digit\n")


async def test_cron_store_refuses_duplicates_and_unknown_names(
    sched_env: dict[str, str], db: Any
) -> None:
    """add of a taken name, rm/pause of an unknown one: exit 1 saying what to do."""
    first = cli(sched_env, "cron", "add", "daily", "--graph", "pipeline", "--schedule",
                "0 6 * * *", "--timezone", "Europe/Paris", "--missed", "skip")
    assert first.returncode == 0, first.stderr
    again = cli(sched_env, "cron", "add", "daily", "--graph", "pipeline", "--schedule",
                "0 7 * * *")
    assert (again.returncode, again.stderr) == (
        1, "graphwire: error: a cron named 'daily' exists already: pick another name, remove "
        "it first (`graphwire cron rm`), or replace it\n")
    for action in ("rm", "pause", "resume"):
        done = cli(sched_env, "cron", action, "weekly")
        assert (done.returncode, done.stderr) == (
            1, "graphwire: error: no cron named 'weekly': see `graphwire cron list`\n")
    row = await db.fetchrow("SELECT schedule, timezone, missed, next_at FROM graphwire_crons")
    assert (row["schedule"], row["timezone"], row["missed"]) == ("0 6 * * *", "Europe/Paris",
                                                                "skip")
    paris = row["next_at"].astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert (paris.hour, paris.minute, paris.second) == (6, 0, 0)


def _cron(next_at: datetime, missed: str = "run", schedule: str = "* * * * *") -> Cron:
    return Cron(name="c", graph="g", schedule=schedule, missed=missed,  # type: ignore[arg-type]
                next_at=next_at)


def test_due_firings_on_time_late_and_missed() -> None:
    """Within the grace every firing runs; past it, run: the latest missed one, skip: none."""
    t0 = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
    grace = timedelta(seconds=60)
    assert due_firings(_cron(t0), t0 + timedelta(seconds=5), grace) == (
        [t0], t0 + timedelta(minutes=1))
    # 10 minutes down: 14:00..14:09 missed, 14:10 within the grace
    now = t0 + timedelta(minutes=10, seconds=30)
    assert due_firings(_cron(t0, "run"), now, grace) == (
        [t0 + timedelta(minutes=9), t0 + timedelta(minutes=10)], t0 + timedelta(minutes=11))
    assert due_firings(_cron(t0, "skip"), now, grace) == (
        [t0 + timedelta(minutes=10)], t0 + timedelta(minutes=11))
    # per second, 3 s late: each of the 4 runs
    fire, upcoming = due_firings(_cron(t0, schedule="* * * * * *"), t0 + timedelta(seconds=3),
                                 grace)
    assert fire == [t0 + timedelta(seconds=s) for s in range(4)]
    assert upcoming == t0 + timedelta(seconds=4)


def test_cron_schedules_follow_their_time_zone_across_dst() -> None:
    """``0 2 * * *`` in New York: 07:00 UTC in winter, 06:00 UTC after the March change."""
    from graphwire.topics.crons import next_firing

    winter = next_firing("0 2 * * *", "America/New_York", datetime(2026, 3, 1, tzinfo=UTC))
    summer = next_firing("0 2 * * *", "America/New_York", datetime(2026, 3, 20, tzinfo=UTC))
    assert (winter, summer) == (datetime(2026, 3, 1, 7, tzinfo=UTC),
                                datetime(2026, 3, 20, 6, tzinfo=UTC))


async def test_gateway_crons_belong_to_their_caller_and_delayed_runs_show_scheduled(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """/crons: a caller adds, lists, pauses, resumes and removes its own crons (namespaced,
    invisible to others; 403/409/422 with reasons); an execute with after_seconds is
    ``scheduled`` in status until it runs, then ``success``."""
    from tests.gateway_helpers import KEY_ECHO, A, gateway_settings, serve, token

    await start_stack(bootstrap, sched_env, processes, tmp_path)
    cron = {"name": "hourly", "workflow_name": "pipeline", "schedule": "0 * * * *",
            "timezone": "Europe/Paris", "input_data": {"text": "X"}, "thread_id": "t1"}
    other = {"Authorization": f"Bearer {token('someone-else', ['*'])}"}
    async with serve(gateway_settings(sched_env)) as http:
        added = await http.post("/crons", json=cron, headers=A)
        assert added.status_code == 201, added.text
        view = added.json()
        scope = view["firing_prefix"].split(".", 1)[0]
        assert {k: view[k] for k in ("name", "workflow_name", "thread_id", "paused")} == {
            "name": "hourly", "workflow_name": "pipeline", "thread_id": "t1", "paused": False}
        assert view["firing_prefix"] == f"{scope}.hourly:"
        stored = await db.fetchrow("SELECT name, owner, thread_id, metadata FROM graphwire_crons")
        assert (stored["name"], stored["owner"], stored["thread_id"]) == (
            f"{scope}.hourly", scope, f"{scope}.t1")
        assert orjson.loads(stored["metadata"]) == {  # the rate: firings are charged to it
            "principal": {"type": "api_key", "name": "svc-a", "rate_per_minute": 600}}
        again = await http.post("/crons", json=cron, headers=A)
        assert (again.status_code, again.json()["detail"]) == (
            409, "a cron named 'hourly' exists already: pick another name, remove it "
            "first (`graphwire cron rm`), or replace it")
        bad = await http.post("/crons", json={**cron, "name": "b", "schedule": "99 * * * *"},
                              headers=A)
        assert bad.status_code == 422
        assert bad.json()["detail"].startswith("cannot read the schedule '99 * * * *'")
        badtz = await http.post("/crons", json={**cron, "name": "b", "timezone": "Nowhere/X"},
                                headers=A)
        assert (badtz.status_code, badtz.json()["detail"]) == (
            422, "unknown time zone 'Nowhere/X' (ZoneInfoNotFoundError); use an IANA name like "
            "UTC, Europe/Paris or America/New_York")
        refused = await http.post("/crons", json={**cron, "name": "e"},
                                  headers={"X-API-Key": KEY_ECHO})
        assert (refused.status_code, refused.json()["detail"]) == (
            403, "svc-echo may not run 'pipeline'")
        assert [c["name"] for c in (await http.get("/crons", headers=A)).json()] == ["hourly"]
        assert (await http.get("/crons", headers=other)).json() == []
        for method, path in (("GET", "/crons/hourly"), ("DELETE", "/crons/hourly"),
                             ("POST", "/crons/hourly/pause")):
            hidden = await http.request(method, path, headers=other)
            assert (hidden.status_code, hidden.json()["detail"]) == (
                404, "no cron named 'hourly': see `graphwire cron list`")
        paused = await http.post("/crons/hourly/pause", headers=A)
        assert (paused.status_code, paused.json()["paused"]) == (200, True)
        resumed = await http.post("/crons/hourly/resume", headers=A)
        assert (resumed.status_code, resumed.json()["paused"]) == (200, False)
        gone = await http.delete("/crons/hourly", headers=A)
        assert gone.status_code == 204
        assert (await http.get("/crons/hourly", headers=A)).status_code == 404

        later = await http.post("/workflow/execute", headers=A,
                                json={"workflow_name": "pipeline", "input_data": {"text": "L"},
                                      "after_seconds": 3})
        assert later.status_code == 202, later.text
        rid = later.json()["request_id"]
        seen: list[str] = []
        for _ in range(100):
            status = await http.get(f"/workflow/status/{rid}", headers=A)
            if status.status_code == 200:
                if not seen or seen[-1] != status.json()["status"]:
                    seen.append(status.json()["status"])
                if seen[-1] == "success":
                    break
            await asyncio.sleep(0.1)
        assert seen[0] == "scheduled" and seen[-1] == "success", seen


async def test_doctor_warns_when_nothing_fires_what_is_due(
    topics: TopicNames, sched_env: dict[str, str], db: Any
) -> None:
    """doctor's scheduler check: pass with nothing overdue; a delayed request 5 minutes past
    due (no scheduler running) is a warning naming the fix."""
    from tests.test_ops import graphwire, rows

    env = {**sched_env, "GRAPHWIRE_PARTITIONS": "4"}
    assert rows(graphwire(env, "doctor").stdout)["scheduler"] == "pass"
    await db.execute(
        "INSERT INTO graphwire_schedules (request_id, due_at, graph, value) "
        "VALUES ('late', now() - interval '5 minutes', 'pipeline', '{}')"
    )
    late = graphwire(env, "doctor")
    assert rows(late.stdout)["scheduler"] == "warn"
    assert "scheduler                      warn    1 delayed requests or crons overdue\n" \
        f"{'':<30} fix     run `graphwire scheduler` (its leader produces what is due)" \
        in late.stdout


async def test_client_submits_delayed_runs_and_manages_crons(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """GraphwireClient: submit(after_seconds=...) gives its result after the delay, and
    client.crons adds, lists, pauses, resumes and removes; the blocking Client does the same."""
    from graphwire import Client, CronError, GraphwireClient, GraphwireError

    await start_stack(bootstrap, sched_env, processes, tmp_path)
    schema = sched_env["GRAPHWIRE_AUDIT_SCHEMA"]
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix,
                               database_url=TEST_DATABASE_URL, database_schema=schema) as client:
        sent = time.time()
        rid = await client.submit("pipeline", {"text": "Later On"}, after_seconds=2)
        result = await client.result(rid, timeout=20)
        assert (result.status, result.output["text"]) == ("success", "later on")
        assert 2.0 <= time.time() - sent < 4.5
        cron = await client.crons.add("report", "pipeline", "30 7 * * 1-5", {"text": "R"},
                                      timezone="Asia/Tokyo", missed="skip")
        assert (cron.name, cron.timezone, cron.missed, cron.paused) == (
            "report", "Asia/Tokyo", "skip", False)
        tokyo = cron.next_at.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
        assert (tokyo.hour, tokyo.minute, tokyo.weekday() < 5) == (7, 30, True)
        assert (await client.crons.pause("report")).paused is True
        assert (await client.crons.resume("report")).paused is False
        assert [c.name for c in await client.crons.list()] == ["report"]
        with pytest.raises(CronError, match="cannot read the schedule 'sometimes'"):
            await client.crons.add("x", "pipeline", "sometimes")
        await client.crons.remove("report")
        assert await client.crons.list() == []
    no_db = GraphwireClient(bootstrap, topic_prefix=topics.prefix)
    with pytest.raises(GraphwireError, match="create the client with "
                       "database_url"):
        _ = no_db.crons

    def blocking() -> list[str]:
        with Client(bootstrap, topic_prefix=topics.prefix, database_url=TEST_DATABASE_URL,
                    database_schema=schema) as sync:
            sync.crons.add("nightly", "pipeline", "0 2 * * *", {"text": "N"})
            names = [c.name for c in sync.crons.list()]
            sync.crons.remove("nightly")
            return names + [c.name for c in sync.crons.list()]

    assert await asyncio.to_thread(blocking) == ["nightly"]


async def test_sigterm_hands_the_lead_to_the_standby(
    bootstrap: str, topics: TopicNames, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """SIGTERM: the leader exits 0 and releases the lock; the standby leads and fires."""
    await start_stack(bootstrap, sched_env, processes, tmp_path)
    second_port = free_port()
    spawn(processes, sched_env, "scheduler", tmp_path / "standby.log",
          GRAPHWIRE_SCHEDULER_HTTP_PORT=str(second_port))
    await wait_leader(second_port, 0)
    assert await wait_ready(second_port, 200) == {
        "ready": True, "dependencies": {"kafka": "ok", "postgresql": "ok"}}
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{second_port}/health") as health:
        assert (health.status, await health.json()) == (200, {"status": "alive"})
    assert processes[1].terminate(timeout=20) == 0
    await wait_leader(second_port, 1, timeout=10)
    async with Collector(bootstrap, topics.results) as out:
        await produce(bootstrap, topics.requests,
                      [(b"after-term", encode(request("after-term", after_seconds=0.5)))])
        await out.wait_count(topics.results, 1, timeout=20)
        assert [orjson.loads(r.value)["status"] for r in out.records[topics.results]] == [
            "success"]


def test_scheduler_refuses_to_start_without_its_tables_or_database(
    sched_env: dict[str, str],
) -> None:
    """An unmigrated schema: exit 1 saying to migrate; no PostgreSQL: exit 3 naming the URL
    setting (the secret URL itself never printed)."""
    unmigrated = cli(sched_env, "scheduler")
    schema = sched_env["GRAPHWIRE_AUDIT_SCHEMA"]
    assert (unmigrated.returncode, unmigrated.stderr.splitlines()[-1]) == (
        1, f"graphwire: error: the audit schema {schema!r} (GRAPHWIRE_AUDIT_SCHEMA) does not "
        "exist in this database: run `graphwire db migrate` to create it, or correct the "
        "setting")
    url = "postgresql://admin:hunter2secret@127.0.0.1:1/nowhere"
    down = cli({**sched_env, "GRAPHWIRE_DATABASE_URL": url}, "scheduler")
    assert down.returncode == 3
    last = down.stderr.splitlines()[-1]
    assert last.startswith("graphwire: error: PostgreSQL does not answer (")
    assert last.endswith("check GRAPHWIRE_DATABASE_URL")
    assert "hunter2secret" not in down.stderr + down.stdout


def test_a_gateway_crons_firings_carry_its_callers_identity() -> None:
    """A cron made through the gateway (``metadata.principal`` with a rate) fires with the
    ``x-graphwire-principal`` header of that caller, so the graph gets its identity as for
    the caller's own runs; a cron of the CLI (no principal) fires without one."""
    from graphwire.processors.gateway.auth import Principal
    from graphwire.processors.schedules.store import _firing
    from graphwire.topics.codec import HEADER_PRINCIPAL

    t0 = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
    caller = {"type": "api_key", "name": "svc-a", "rate_per_minute": 60}
    made_here = Cron(name="c", graph="g", schedule="* * * * *", next_at=t0,
                     metadata={"principal": caller})
    row = _firing(made_here, t0)
    scope = Principal("api_key", "svc-a", frozenset(), 60).scope
    assert [(name, orjson.loads(value)) for name, value in row.headers] == [
        (HEADER_PRINCIPAL, {"kind": "api_key", "name": "svc-a", "scope": scope})]
    assert _firing(_cron(t0), t0).headers == []
