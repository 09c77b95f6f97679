"""``/runs/crons`` and ``/threads/{id}/runs/crons`` through the official ``langgraph_sdk``
against a real gateway, scheduler, runner, broker, Redis and PostgreSQL: create (stateless and
on a thread), get, search, count, patch, delete, the 422s, and a firing that is an Agent
Server run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError, UnprocessableEntityError
from pydantic import SecretStr

from graphwire.processors.audit.db import migrate
from graphwire.processors.dev.broker import free_port
from graphwire.processors.gateway.agentapi.ids import default_assistant_id
from graphwire.processors.gateway.auth import hash_key
from graphwire.processors.settings import Settings
from graphwire.topics.crons import firing_uuid
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.gateway_helpers import KEYS, gateway_settings, serve_app
from tests.helpers import wait_metric
from tests.helpers.runners import StartRunner
from tests.helpers.waiting import eventually
from tests.kafka_helpers import WorkerProcess, wait_ready

pytestmark = pytest.mark.integration

KEY = "gw_test_key_crons_0123456789abc"
"""A caller of these tests (every graph)."""
OTHER = "gw_test_key_crons_other_012345"
"""Another caller: sees none of the first one's crons."""
PIPELINE = default_assistant_id("pipeline")


@pytest.fixture
async def schema(worker_env: dict[str, str]) -> AsyncIterator[str]:
    """The test's own audit schema (graphwire_crons, agent_* tables), migrated: no other
    test's crons fire here."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await migrate(conn, prefix)
    finally:
        await conn.close()
    yield prefix


def settings_for(worker_env: dict[str, str], schema: str) -> Settings:
    """The test gateway: these tests' keys, the test's schema, crons every second allowed."""
    keys = [*KEYS,
            {"name": "svc-crons", "key_sha256": hash_key(KEY), "graphs": ["*"]},
            {"name": "svc-crons-2", "key_sha256": hash_key(OTHER), "graphs": ["*"]}]
    return gateway_settings(worker_env, gateway_api_keys=SecretStr(orjson.dumps(keys).decode()),
                            audit_schema=schema, gateway_cron_min_interval_s=1)


@pytest.fixture
def scheduler(worker_env: dict[str, str], schema: str,
              tmp_path: Path) -> Iterator[tuple[WorkerProcess, int]]:
    """``graphwire scheduler`` on the test's schema and topics (started; killed at the end),
    and its health port."""
    port = free_port()
    process = WorkerProcess({
        **worker_env,
        "GRAPHWIRE_AUDIT_SCHEMA": schema,
        "GRAPHWIRE_SCHEDULER_GROUP_ID": f"{schema}-scheduler",
        "GRAPHWIRE_SCHEDULER_HTTP_PORT": str(port),
        "GRAPHWIRE_SCHEDULER_TICK_S": "0.1",
        "GRAPHWIRE_SCHEDULER_STANDBY_POLL_S": "0.3",
    }, command="scheduler", log_path=tmp_path / "scheduler.log").start()
    try:
        yield process, port
    finally:
        process.stop()


def strip(cron: dict[str, Any]) -> dict[str, Any]:
    """A cron without the fields that change with time and ids."""
    return {k: v for k, v in cron.items()
            if k not in ("cron_id", "created_at", "updated_at", "next_run_date", "thread_id")}


async def test_create_search_count_patch_delete(worker_env: dict[str, str], schema: str,
                                                topics: TopicNames) -> None:
    """``crons.create`` (stateless) and ``create_for_thread`` answer a Cron with a UUID id, the
    assistant's UUID, the thread, the payload as sent, ``on_run_completed`` (``delete`` /
    None), the next run date and ``enabled``; ``search`` filters by thread, assistant and
    enabled, pages with ``X-Pagination-*`` and sorts; ``count`` counts the same; ``update``
    changes the schedule, disables it and sets an end time; ``delete`` answers 204 and the
    cron is gone (404 on GET). Another caller searches none of them and gets 404 on GET."""
    end = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with (serve_app(settings_for(worker_env, schema)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client,
                get_client(url=str(http.base_url), api_key=OTHER) as other):
        thread = await client.threads.create()
        tid = thread["thread_id"]
        stateless = await client.crons.create(
            "pipeline", schedule="0 3 * * *", input={"text": "A b"}, metadata={"team": "x"},
            timezone="Europe/Paris")
        on_thread = await client.crons.create_for_thread(
            tid, "echo", schedule="*/5 * * * *", input={"text": "hi"}, end_time=end,
            multitask_strategy="reject")
        by_thread = await client.crons.search(thread_id=tid)
        by_assistant = await client.crons.search(assistant_id=PIPELINE)
        oldest_first = await client.crons.search(sort_by="created_at", sort_order="asc")
        page = await http.post("/runs/crons/search", headers={"X-API-Key": KEY},
                               json={"limit": 1})
        counted = await client.crons.count()
        counted_thread = await client.crons.count(thread_id=tid)
        theirs = await other.crons.search()
        with pytest.raises(NotFoundError):
            await other.crons.delete(stateless["cron_id"])
        patched = await client.crons.update(stateless["cron_id"], schedule="30 4 * * 1",
                                            enabled=False, end_time=end)
        disabled = await client.crons.search(enabled=False)
        got = await http.get(f"/runs/crons/{stateless['cron_id']}", headers={"X-API-Key": KEY})
        await client.crons.delete(stateless["cron_id"])
        gone = await http.get(f"/runs/crons/{stateless['cron_id']}", headers={"X-API-Key": KEY})
        left = await client.crons.count()
    assert uuid.UUID(stateless["cron_id"]).version == 4
    assert strip(stateless) == {
        "assistant_id": PIPELINE, "on_run_completed": "delete", "end_time": None,
        "schedule": "0 3 * * *", "timezone": "Europe/Paris",
        "payload": {"assistant_id": "pipeline", "schedule": "0 3 * * *",
                    "input": {"text": "A b"}, "metadata": {"team": "x"},
                    "timezone": "Europe/Paris"},
        "user_id": "api_key:svc-crons", "metadata": {"team": "x"}, "enabled": True}
    assert stateless["thread_id"] is None
    assert datetime.fromisoformat(stateless["next_run_date"]).astimezone(
        UTC).hour in (1, 2)  # 03:00 in Paris
    assert (on_thread["thread_id"], on_thread["assistant_id"], on_thread["on_run_completed"],
            on_thread["end_time"]) == (tid, default_assistant_id("echo"), None,
                                       "2031-01-02T03:04:05+00:00")
    assert [c["cron_id"] for c in by_thread] == [on_thread["cron_id"]]
    assert [c["cron_id"] for c in by_assistant] == [stateless["cron_id"]]
    assert [c["cron_id"] for c in oldest_first] == [stateless["cron_id"], on_thread["cron_id"]]
    assert [c["cron_id"] for c in page.json()] == [on_thread["cron_id"]]
    assert (page.headers["X-Pagination-Total"], page.headers["X-Pagination-Next"]) == ("2", "1")
    assert (counted, counted_thread) == (2, 1)
    assert theirs == []
    assert (patched["schedule"], patched["enabled"], patched["end_time"]) == (
        "30 4 * * 1", False, "2031-01-02T03:04:05+00:00")
    assert patched["payload"]["schedule"] == "30 4 * * 1"
    assert [c["cron_id"] for c in disabled] == [stateless["cron_id"]]
    assert got.json() == {**patched, "updated_at": got.json()["updated_at"]}
    assert (gone.status_code, gone.json()) == (
        404, {"detail": f"Cron {stateless['cron_id']} not found"})
    assert left == 1


async def test_refusals(worker_env: dict[str, str], schema: str, topics: TopicNames) -> None:
    """422s naming what a cron cannot be: a bad schedule, an unknown time zone, a ``command``,
    ``on_run_completed: keep``, an ``events`` stream mode, an unknown field, no schedule, a bad
    cron id; an unknown assistant and another caller's thread are 404s."""
    async with (serve_app(settings_for(worker_env, schema)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client,
                get_client(url=str(http.base_url), api_key=OTHER) as other):
        tid = (await other.threads.create())["thread_id"]
        details = []
        for body in ({"assistant_id": "echo", "schedule": "not a schedule"},
                     {"assistant_id": "echo", "schedule": "* * * * *", "timezone": "Mars/Base"},
                     {"assistant_id": "echo", "schedule": "* * * * *",
                      "command": {"resume": "x"}},
                     {"assistant_id": "echo", "schedule": "* * * * *",
                      "on_run_completed": "keep"},
                     {"assistant_id": "echo", "schedule": "* * * * *", "stream_mode": "events"},
                     {"assistant_id": "echo", "schedule": "* * * * *", "bogus": 1},
                     {"assistant_id": "echo"}):
            answer = await http.post("/runs/crons", headers={"X-API-Key": KEY}, json=body)
            details.append((answer.status_code, answer.json()["detail"]))
        with pytest.raises(NotFoundError):
            await client.crons.create("no-such-graph", schedule="* * * * *")
        with pytest.raises(NotFoundError):
            await client.crons.create_for_thread(tid, "echo", schedule="* * * * *")
        with pytest.raises(UnprocessableEntityError) as bad_id:
            await client.crons.delete("not-a-uuid")
    assert details[0] == (422, "cannot read the schedule 'not a schedule' (Exactly 5, 6 or 7 "
                          "columns has to be specified for iterator expression.); write 5 cron "
                          "fields like '*/5 * * * *' (minute hour day month weekday), a 6th "
                          "for seconds")
    assert details[1] == (422, "unknown time zone 'Mars/Base' (ZoneInfoNotFoundError); use an "
                          "IANA name like UTC, Europe/Paris or America/New_York")
    assert details[2:] == [
        (422, "command is not supported on a cron: a cron starts runs; it cannot resume one; "
              "leave it out"),
        (422, "on_run_completed 'keep' is not supported: a stateless cron's firings run on no "
              "thread, so there is none to keep; create the cron on a thread "
              "(POST /threads/{thread_id}/runs/crons)"),
        (422, "stream_mode 'events' is not supported: graphwire streams LangGraph's stream "
              "modes, not astream_events; use 'messages-tuple' for tokens and 'tasks' or "
              "'debug' for node runs"),
        (422, "unknown run field 'bogus': graphwire does not know it; leave it out"),
        (422, "schedule: required, a cron schedule like '*/5 * * * *'"),
    ]
    assert bad_id.value.response.json() == {"detail": "Invalid cron ID: must be a UUID"}


async def test_a_firing_is_an_agent_server_run(
    worker_env: dict[str, str], schema: str, topics: TopicNames, start_runner: StartRunner,
    scheduler: tuple[WorkerProcess, int],
) -> None:
    """A thread cron on ``pipeline`` firing every second: a firing appears in ``runs.list`` of
    the thread as a run whose id is the firing's UUIDv7 (``firing_uuid`` of the cron and its
    scheduled time), with ``metadata.cron_id``; it ends ``success`` and the thread's state is
    the pipeline's output. A stateless cron's firing (on no thread, the echo graph's default
    assistant, ``metadata.cron_id``) is found at ``GET /runs/{id}`` and ends ``success``."""
    await start_runner()
    _process, port = scheduler
    await wait_ready(port, 200)
    await wait_metric(port, "graphwire_scheduler_leader", lambda got: got == 1, 20, interval=0.1)
    async with (serve_app(settings_for(worker_env, schema)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as client):
        tid = (await client.threads.create())["thread_id"]
        cron = await client.crons.create_for_thread(
            tid, "pipeline", schedule="* * * * * *", input={"text": "Cron Fired"})
        stateless = await client.crons.create("echo", schedule="* * * * * *",
                                              input={"text": "tick"})

        async def finished() -> list[dict[str, Any]]:
            return [r for r in await client.runs.list(tid) if r["status"] == "success"]

        # threads.get alone (no runs read) shows a firing's end: its values
        fresh = await eventually(lambda: client.threads.get(tid), 30, until=lambda t: t["values"],
                                 what="the thread's values after a firing")
        done = await eventually(finished, 30, what="a firing of the thread cron succeeded")
        db = await asyncpg.connect(TEST_DATABASE_URL)
        try:
            async def first_echo() -> Any:
                return await db.fetchval(
                    f'SELECT run_id::text FROM "{schema}".agent_runs WHERE thread_id IS NULL '
                    "ORDER BY created_at LIMIT 1")

            echo_run = await eventually(first_echo, 30, what="the stateless cron fired")
            await client.crons.delete(cron["cron_id"])
            await client.crons.delete(stateless["cron_id"])
            fired = await db.fetch(
                f'SELECT request_id, due_at, cron FROM "{schema}".graphwire_schedules '
                "ORDER BY due_at")
        finally:
            await db.close()
        state = await client.threads.get_state(tid)

        async def echoed() -> dict[str, Any]:  # the SDK's runs.get needs a thread id
            answer = await http.get(f"/runs/{echo_run}", headers={"X-API-Key": KEY})
            return answer.json()  # type: ignore[no-any-return]

        echo = await eventually(echoed, 30, until=lambda r: r["status"] == "success",
                                what="the stateless cron's firing succeeded")
    run = done[0]
    by_id = {r["request_id"]: r for r in fired}
    assert run["run_id"] in by_id
    row = by_id[run["run_id"]]
    assert run["run_id"] == firing_uuid(row["cron"], row["due_at"])
    assert uuid.UUID(run["run_id"]).version == 7
    assert (run["thread_id"], run["assistant_id"], run["multitask_strategy"]) == (
        tid, PIPELINE, "enqueue")
    assert run["metadata"]["cron_id"] == cron["cron_id"]
    assert run["metadata"]["scheduled_at"] == row["due_at"].astimezone(UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    assert state["values"] == {"text": "cron fired", "tokens": ["cron", "fired"], "count": 2}
    assert fresh["values"] == state["values"]
    assert (echo["thread_id"], echo["assistant_id"], echo["metadata"]["cron_id"]) == (
        None, default_assistant_id("echo"), stateless["cron_id"])
    assert datetime.now(UTC) - datetime.fromisoformat(echo["created_at"]) < timedelta(minutes=1)


def test_firing_uuid_is_stable_and_time_ordered() -> None:
    """``firing_uuid`` gives the same UUIDv7 for the same cron and time, another for another
    cron or time, its timestamp the scheduled time in milliseconds, ids in time order."""
    at = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
    first, again = firing_uuid("a.agent-x", at), firing_uuid("a.agent-x", at)
    other, later = firing_uuid("a.agent-y", at), firing_uuid("a.agent-x", at + timedelta(seconds=1))
    assert first == again
    assert len({first, other, later}) == 3
    assert uuid.UUID(first).version == 7 and uuid.UUID(first).variant == uuid.RFC_4122
    assert uuid.UUID(first).int >> 80 == int(at.timestamp() * 1000)
    assert first < later
