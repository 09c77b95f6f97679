"""Per-principal caps of the gateway (issue 21, "no input exhausts a processor"): concurrent
runs and streams counted in Redis, a bounded wait for a PostgreSQL connection. Real broker,
worker, Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI

from graphwire.processors.settings import Settings
from tests.gateway_helpers import KEY_ECHO, SCOPE_A, A, gateway_settings, serve
from tests.gateway_helpers import serve_app as serve_gateway_app
from tests.kafka_helpers import WorkerProcess

pytestmark = pytest.mark.integration


def serve_app(settings: Settings) -> AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]:
    """The gateway on a free port, with its app (for its pool); short client timeout."""
    return serve_gateway_app(settings, client_timeout=20)


def slow(seconds: float) -> dict[str, Any]:
    return {"workflow_name": "slow", "input_data": {"seconds": seconds}}


async def test_concurrent_runs_are_capped_per_principal_until_their_results_are_seen(
    worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """With a cap of 2, a third unfinished run of the same key is 429 (reason, Retry-After);
    another key is not affected; once the results are seen the key may run again; a batch
    over the cap submits nothing."""
    settings = gateway_settings(worker_env, gateway_max_concurrent_runs=2)
    async with serve(settings) as http:
        first = [await http.post("/workflow/execute", json=slow(4), headers=A) for _ in range(2)]
        assert [r.status_code for r in first] == [202, 202]
        refused = await http.post("/workflow/execute", json=slow(0.1), headers=A)
        assert refused.status_code == 429
        assert refused.json()["detail"] == (
            "2 runs of svc-a are not finished, the limit is 2 at once; wait for one to finish "
            "before starting another run")
        assert refused.headers["retry-after"] == "5"
        batch = await http.post("/workflow/batch", headers=A, json={
            "requests": [slow(0.1), slow(0.1)]})
        assert batch.status_code == 429
        assert batch.json()["detail"].endswith("before starting 2 more runs")
        other = await http.post("/workflow/execute", json={
            "workflow_name": "echo", "input_data": {"text": "x"}},
            headers={"X-API-Key": KEY_ECHO})
        assert other.status_code == 202  # caps are per principal
        ids = [r.json()["request_id"] for r in first]
        for rid in ids:  # both finish; the gateway's client sees their results
            deadline = time.monotonic() + 180  # a busy machine
            while (await http.get(f"/workflow/status/{rid}", headers=A)).json().get(
                    "status") != "success":  # 404 until the runner took it
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # the slots are given back in the background
        again = await http.post("/workflow/execute?wait=true", json=slow(0.1), headers=A)
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "success"


async def test_open_streams_are_capped_per_principal(
    worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """With a cap of 2, a third open stream of one key (live feed or run stream) is 429;
    closing one frees its slot."""
    settings = gateway_settings(worker_env, gateway_max_streams=2)
    async with serve(settings) as http:
        async with http.stream("GET", "/ui/api/live", headers=A) as one:
            assert one.status_code == 200
            async with http.stream("GET", "/ui/api/live", headers=A) as two:
                assert two.status_code == 200
                third = await http.get("/ui/api/live", headers=A)
                assert third.status_code == 429
                assert third.json()["detail"] == (
                    "svc-a has 2 streams open, the limit is 2; close one (or poll "
                    "/workflow/status) before opening another")
                assert third.headers["retry-after"] == "5"
                run = await http.post("/workflow/stream", json=slow(0.1), headers=A)
                assert run.status_code == 429  # refused before a run is submitted
        await asyncio.sleep(0.5)
        async with http.stream("POST", "/workflow/stream", json=slow(0.1), headers=A) as run:
            assert run.status_code == 200
            text = "".join([chunk async for chunk in run.aiter_text()])
        assert "event: result" in text


async def test_a_full_postgresql_pool_answers_503_instead_of_hanging(
    worker_env: dict[str, str], topics: Any
) -> None:
    """With every connection of the gateway's pool taken, status and crons answer 503 with
    Retry-After within the acquire timeout, and work again once a connection is free."""
    settings = gateway_settings(worker_env, gateway_db_pool_size=1,
                                gateway_db_acquire_timeout_s=0.5)
    async with serve_app(settings) as (app, http):
        db = app.state.gateway.db
        async with db.acquire():  # the only connection, held
            status = await http.get(f"/workflow/status/{SCOPE_A}.unknown", headers=A)
            crons = await http.get("/crons", headers=A)
        assert (status.status_code, crons.status_code) == (503, 503)
        assert status.json()["detail"] == (
            "all 1 PostgreSQL connections of this gateway stayed busy for 0.5 s; retry in a "
            "few seconds")
        assert status.headers["retry-after"] == "5"
        assert (await http.get("/crons", headers=A)).status_code == 200


# -- crons -------------------------------------------------------------------------------------

from tests.test_schedules import (  # noqa: E402 - the scheduler tests' fixtures and helpers
    db,
    processes,
    sched_env,
    spawn,
    wait_leader,
)

__all__ = ["db", "processes", "sched_env"]  # fixtures used by name


async def test_gateway_crons_are_capped_per_owner_and_may_not_fire_every_second(
    sched_env: dict[str, str], db: Any, topics: Any
) -> None:
    """With at most 2 crons per caller, a third is 409 (a redefinition is not a new one); a
    schedule firing every second is 422 saying what to write; the stored principal carries
    the caller's rate limit for the scheduler."""
    cron = {"name": "a", "workflow_name": "echo", "schedule": "0 * * * *",
            "input_data": {"text": "x"}}
    async with serve(gateway_settings(sched_env, gateway_max_crons=2)) as http:
        codes = [(await http.post("/crons", json={**cron, "name": n}, headers=A)).status_code
                 for n in ("a", "b")]
        assert codes == [201, 201]
        third = await http.post("/crons", json={**cron, "name": "c"}, headers=A)
        assert (third.status_code, third.json()["detail"]) == (
            409, "2 crons are defined already, the most one caller may have: remove one first")
        again = await http.post("/crons", json={**cron, "schedule": "5 * * * *",
                                                "replace": True}, headers=A)
        assert again.status_code == 201, again.text
        assert (await http.delete("/crons/b", headers=A)).status_code == 204
        every = await http.post("/crons", json={**cron, "name": "s",
                                                "schedule": "* * * * * *"}, headers=A)
        assert (every.status_code, every.json()["detail"]) == (
            422, "invalid cron: schedule: '* * * * * *' fires 1 s apart, and crons may fire at "
            "most every 60 s: use 5 fields (minute hour day month weekday) or a single second "
            "in the 6th")
        never = await http.post("/crons", json={**cron, "name": "n",
                                                "schedule": "0 0 31 2 *"}, headers=A)
        assert (never.status_code, never.json()["detail"]) == (
            422, "the schedule '0 0 31 2 *' never fires (no such date, e.g. 31 February); fix "
            "its day and month fields")
        minute = await http.post("/crons", json={**cron, "name": "m",
                                                 "schedule": "* * * * * 30"}, headers=A)
        assert minute.status_code == 201, minute.text
    rows = await db.fetch("SELECT name, metadata FROM graphwire_crons ORDER BY name")
    assert [r["name"].split(".", 1)[1] for r in rows] == ["a", "m"]
    assert orjson.loads(rows[0]["metadata"])["principal"] == {
        "type": "api_key", "name": "svc-a", "rate_per_minute": 600}


async def test_cron_names_graphs_and_threads_refuse_control_characters(db: Any) -> None:
    """A NUL, newline or escape in a cron's name, graph or thread_id is InvalidCron before
    any query (PostgreSQL never sees it); a name longer than 80 likewise."""
    from graphwire.topics.crons import CronStore, InvalidCron, cron_spec

    store = CronStore(db)
    refused = []
    for call in (lambda: store.get("a\x00b"), lambda: store.remove("a\nb"),
                 lambda: store.pause("x" * 81)):
        with pytest.raises(InvalidCron) as caught:
            await call()
        refused.append(str(caught.value).split(":")[0])
    assert refused == ["invalid cron name 'a\\x00b'", "invalid cron name 'a\\nb'",
                       f"invalid cron name '{'x' * 81}'"]
    for field, value in (("graph", "ec\x00ho"), ("thread_id", "t\n1"),
                         ("graph", "e\x1b[31m")):
        with pytest.raises(InvalidCron) as caught:
            cron_spec(**{"name": "n", "graph": "echo", "schedule": "0 * * * *", field: value})
        assert str(caught.value) == (
            f"invalid cron: {field}: the graph name and thread_id must not contain control "
            "characters (NUL, newlines, escapes)")


async def test_cron_firings_are_charged_to_their_owners_rate_limit(
    bootstrap: str, topics: Any, sched_env: dict[str, str], db: Any,
    processes: list[WorkerProcess], tmp_path: Path,
) -> None:
    """A gateway cron firing every second whose owner may make 3 requests a minute: 3
    firings are produced, the others are skipped (a log line and a metric each); a CLI cron
    (no owner) beside it is not charged."""
    from graphwire.topics.crons import CronStore, cron_spec
    from tests.kafka_helpers import Collector, metrics

    owner = f"svc-{uuid.uuid4().hex[:8]}"
    store = CronStore(db)
    principal = {"type": "api_key", "name": owner, "rate_per_minute": 3}
    await store.add(cron_spec(name="owned", graph="echo", schedule="* * * * * *",
                              input={"text": "x"}, metadata={"principal": principal}),
                    owner="scope1")
    await store.add(cron_spec(name="free", graph="echo", schedule="* * * * * *",
                              input={"text": "x"}))
    async with Collector(bootstrap, topics.requests) as out:
        spawn(processes, sched_env, "scheduler", tmp_path / "scheduler.log")
        port = int(sched_env["GRAPHWIRE_SCHEDULER_HTTP_PORT"])
        await wait_leader(port, 1)

        def fired(name: str) -> list[str]:
            ids = [orjson.loads(r.value)["request_id"] for r in out.records[topics.requests]]
            return [i for i in ids if i.startswith(f"{name}:")]

        await out.wait_until(lambda: len(fired("free")) >= 8, timeout=30)
        await store.pause("owned")
        await store.pause("free")
        await asyncio.sleep(1.0)
        owned = fired("owned")
        skipped = (await metrics(port)).get(
            'graphwire_scheduler_skipped_firings_total{reason="rate_limited"}')
    assert len(owned) == 3
    log_text = (tmp_path / "scheduler.log").read_text()
    lines = [line for line in log_text.splitlines() if "skipped cron firing owned:" in line]
    assert skipped is not None and skipped >= 4
    assert len(lines) == skipped
    assert f"its owner {owner} is over its rate limit of 3 requests per minute" in lines[0]


# -- memory ------------------------------------------------------------------------------------


async def test_the_clients_kept_results_and_events_never_exceed_its_byte_budget(
    bootstrap: str, topics: Any
) -> None:
    """12 results of 300 kB (and 100 kB events for the streamed half) into a client with a
    budget of 2 MB: after every record it keeps at most 2 MB, exactly the sum of what it
    kept; the latest results to arrive are kept, the earliest dropped; events of runs nobody streams
    are never kept."""
    from aiokafka import AIOKafkaProducer

    from graphwire.topics.client import GraphwireClient
    from graphwire.topics.models import Event, Result

    budget = 2_000_000
    seen: list[int] = []
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix,
                               max_kept_bytes=budget) as client:
        arrived: list[str] = []  # results come from 4 partitions: in any order

        def listen(result: Result) -> None:
            arrived.append(result.request_id)
            seen.append(client.kept_bytes)

        client.add_result_listener(listen)
        rids = [f"mem-{uuid.uuid4().hex[:8]}-{i}" for i in range(12)]
        for i, rid in enumerate(rids):
            client.watch(rid, events=i % 2 == 0)  # the even ones are streamed
        sizes: dict[str, int] = {}
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2_000_000)
        await producer.start()
        try:
            for i, rid in enumerate(rids):
                event = Event(request_id=rid, seq=0, type="node", graph="echo",
                              data={"text": "e" * 100_000}, ts=1.0)
                value = orjson.dumps(event.model_dump(mode="json"))
                sizes[f"{rid}/event"] = len(value)
                await producer.send_and_wait(topics.events, value, key=rid.encode())
                result = Result(request_id=rid, graph="echo", status="success",
                                output={"text": "r" * 300_000 + str(i)}, duration_ms=1.0)
                value = orjson.dumps(result.model_dump(mode="json"))
                sizes[rid] = len(value)
                await producer.send_and_wait(topics.results, value, key=rid.encode())
        finally:
            await producer.stop()
        last = await client.result(rids[-1], timeout=30)
        assert last.output == {"text": "r" * 300_000 + "11"}
        deadline = time.monotonic() + 60  # the others come from other partitions
        while len(seen) < 12 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        kept = [rid for rid in arrived if client.known_result(rid) is not None]
        streamed = [rid for rid in rids if client.seen_events(rid)]
        assert len(seen) == 12
        assert max(seen) <= budget
        assert client.kept_bytes == sum(sizes[r] for r in kept) + sum(
            sizes[f"{r}/event"] for r in streamed)
        assert kept == arrived[-len(kept):] and 4 <= len(kept) <= 6
        assert set(streamed) <= set(rids[::2])
        assert client.seen_events(rids[-1]) == []  # not streamed: its event was not kept
        assert sorted(arrived) == sorted(rids)


# -- the inspector's thread page ---------------------------------------------------------------


async def test_the_thread_page_paginates_turns_and_caps_events_and_rendered_bytes(
    worker_env: dict[str, str], prefix: str, topics: Any
) -> None:
    """A thread of 45 turns with 100 kB outputs and 120 events each: the JSON pages hold 20,
    20 and 5 turns in order (``next_cursor``), each with its first 50 events and no list of
    the other turns; the HTML page shows 20 turns, each value cut to 20 kB, and links on."""
    from graphwire.processors.audit.db import migrate, server_settings
    from tests.conftest import TEST_DATABASE_URL

    scope = SCOPE_A
    conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings=server_settings(prefix))
    try:
        await migrate(conn, prefix)
        await conn.execute("""
            INSERT INTO graphwire_runs (request_id, graph, thread_id, status, requested_at,
                                        finished_at, duration_ms, input, output)
            SELECT format('%s.turn%s', $1::text, lpad(i::text, 2, '0')), 'echo',
                   $1::text || '.long', 'success',
                   '2026-01-01T00:00:00Z'::timestamptz + i * interval '1 minute',
                   '2026-01-01T00:00:01Z'::timestamptz + i * interval '1 minute', 1.0,
                   '{"text": "in"}'::jsonb, jsonb_build_object('text', repeat('x', 100000))
            FROM generate_series(1, 45) i""", scope)
        await conn.execute("""
            INSERT INTO graphwire_events (request_id, seq, type, node, data, ts)
            SELECT r.request_id, e, 'node', 'echo', '{"n": 1}'::jsonb, r.requested_at
            FROM graphwire_runs r, generate_series(0, 119) e""")
    finally:
        await conn.close()
    settings = gateway_settings(worker_env, audit_schema=prefix, checkpoints=False)
    async with serve(settings) as http:
        pages, cursor = [], None
        while True:
            page = await http.get("/ui/api/threads/long", headers=A,
                                  params={"cursor": cursor} if cursor else {})
            assert page.status_code == 200, page.text
            body = page.json()
            pages.append([t["request_id"].split(".")[1] for t in body["turns"]])
            assert {len(t["events"]) for t in body["turns"]} == {50}
            assert {len(t["turns"]) for t in body["turns"]} == {0}
            assert body["events_per_turn"] == 50
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert [len(p) for p in pages] == [20, 20, 5]
        assert [t for p in pages for t in p] == [f"turn{i:02d}" for i in range(1, 46)]
        html = await http.get("/ui/fragments/threads/long", headers=A)
        assert html.status_code == 200
        assert html.text.count("<li data-request-id=") == 20
        assert html.text.count("more bytes: open the run") == 20
        assert len(html.text.encode()) < 20 * 2 * 21_000
        assert "later turns »" in html.text
        bad = await http.get("/ui/api/threads/long", headers=A, params={"cursor": "nope"})
        assert bad.status_code == 422


# -- fuzz --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_fuzzed_cron_bodies_and_thread_pages_never_fail_the_gateway(
    sched_env: dict[str, str], db: Any, topics: Any
) -> None:
    """Cron bodies with NUL, control characters, newlines, every-second and garbage schedules,
    odd time zones and thread ids, and thread pages with garbage cursors and limits: each is
    answered 200/201/204/403/404/409/422/429, never 5xx, and the gateway stays ready."""
    import hypothesis
    from hypothesis import HealthCheck
    from hypothesis import strategies as st

    nasty = st.text(alphabet=st.characters(codec="utf-8", categories=None), max_size=120)
    names = st.one_of(nasty, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,66}", fullmatch=True))
    schedules = st.one_of(nasty, st.sampled_from([
        "* * * * * *", "*/5 * * * * *", "0 * * * *", "0,1 * * * *", "* * * * * 30",
        "0 0 31 2 *", "59 23 * * * 59", "* * * * * * 2099", "@hourly", "0 0 * * 7#5"]))
    bodies = st.fixed_dictionaries({
        "name": names, "workflow_name": st.one_of(nasty, st.just("echo")),
        "schedule": schedules,
    }, optional={"timezone": st.one_of(nasty, st.just("Europe/Paris")),
                 "thread_id": nasty, "input_data": st.dictionaries(nasty, nasty, max_size=3),
                 "replace": st.booleans()})
    settings = gateway_settings(sched_env, gateway_rate_per_minute=100_000, gateway_max_crons=5)
    async with serve(settings) as http:
        url = str(http.base_url).rstrip("/")

        def fuzz() -> tuple[int, list[str]]:
            calls, failures = 0, []
            with httpx.Client(base_url=url, headers=A, timeout=30) as client:
                @hypothesis.settings(max_examples=150, deadline=None, database=None,
                                     suppress_health_check=list(HealthCheck))
                @hypothesis.given(body=bodies, cursor=nasty,
                                  limit=st.integers(-5, 10**6))
                def run(body: dict[str, Any], cursor: str, limit: int) -> None:
                    nonlocal calls
                    for response in (
                        client.post("/crons", json=body),
                        client.get("/ui/api/threads/t", params={"cursor": cursor,
                                                                "limit": limit}),
                    ):
                        calls += 1
                        if response.status_code not in (200, 201, 204, 403, 404, 409, 422, 429):
                            failures.append(f"{response.request.method} "
                                            f"{response.request.url} {body!r} -> "
                                            f"{response.status_code}: {response.text[:200]}")

                run()
            return calls, failures

        calls, failures = await asyncio.to_thread(fuzz)
        ready = await http.get("/ready")
    assert failures == []
    assert calls >= 200
    assert ready.status_code == 200


# -- connections per call ----------------------------------------------------------------------


def closed_connections_to(port: str) -> int:
    """TCP connections to ``port`` this machine closed in the last minute (TIME_WAIT)."""
    import subprocess

    out = subprocess.run(["ss", "-Htan", "state", "time-wait", "dport", "=", f":{port}"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


async def test_results_published_earlier_are_read_without_a_connection_per_call(
    worker: WorkerProcess, worker_env: dict[str, str], bootstrap: str, topics: Any
) -> None:
    """A client that did not see 4 runs finish reads each result through the done marker in
    Redis and one lookup consumer it keeps: no Kafka connection is opened and closed per
    call (before: a consumer per call)."""
    from graphwire.topics.client import GraphwireClient
    from tests.conftest import TEST_REDIS_URL

    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix,
                               redis_url=TEST_REDIS_URL) as first:
        rids = [await first.submit("echo", {"text": f"t{i}"}) for i in range(4)]
        for rid in rids:
            await first.result(rid, timeout=60)
    port = bootstrap.rsplit(":", 1)[1]
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix,
                               redis_url=TEST_REDIS_URL) as later:
        await later.result(rids[0], timeout=10)  # the lookup consumer connects once
        before = closed_connections_to(port)
        found = [await later.result(rid, timeout=10) for rid in rids[1:]]
        after = closed_connections_to(port)
    assert [(r.request_id, r.status) for r in found] == [(rid, "success") for rid in rids[1:]]
    assert after - before == 0
