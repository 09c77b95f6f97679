"""The audit sink end to end: runner + sink on the test broker, rows in PostgreSQL, the CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from graphwire.processors.audit.db import migrate, migrations
from graphwire.topics.specs import TopicNames
from tests.helpers import graphwire, wait_rows
from tests.kafka_helpers import (
    Collector,
    WorkerProcess,
    encode,
    produce,
    request,
    wait_for_members,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def audit_env(worker_env: dict[str, str]) -> dict[str, str]:
    """The worker's environment plus the sink's: its own group and schema, short batches."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    return {
        **worker_env,
        "GRAPHWIRE_AUDIT_SCHEMA": prefix,
        "GRAPHWIRE_AUDIT_GROUP_ID": f"{prefix}-audit",
        "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.2",
        "GRAPHWIRE_AUDIT_HTTP_PORT": "0",
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``graphwire ARGS`` with ``env`` (see :func:`tests.helpers.graphwire`)."""
    return graphwire(*args, env=env)





async def test_migrate_applies_numbered_files_once(audit_env: dict[str, str], db: Any) -> None:
    """Migrating a fresh schema applies versions 1, 2, 3, 6 and 7 in order and records their names;
    migrating again applies none; events.seq is a bigint, and the schema holds exactly the 6
    graphwire tables (crons, dead_letters, events, runs, schedules, schema_migrations)."""
    schema = audit_env["GRAPHWIRE_AUDIT_SCHEMA"]
    first = await migrate(db, schema)
    second = await migrate(db, schema)
    assert [m.version for m in first] == [m.version for m in migrations()] == [1, 2, 3, 6, 7, 8]
    assert second == []
    rows = await db.fetch("SELECT version, name FROM graphwire_schema_migrations ORDER BY 1")
    assert [(r["version"], r["name"]) for r in rows] == [
        (1, "audit_tables"), (2, "dead_letter_origins_result_position"),
        (3, "event_positions_bigint"), (6, "schedules_and_crons"), (7, "ui_indexes"),
        (8, "cron_request_templates"),
    ]
    seq_type = await db.fetchval(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = $1 "
        "AND table_name = 'graphwire_events' AND column_name = 'seq'", schema,
    )
    assert seq_type == "bigint"  # event positions start at 2**32
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
        "ORDER BY table_name",
        schema,
    )
    assert [t["table_name"] for t in tables] == [
        "graphwire_crons",
        "graphwire_dead_letters",
        "graphwire_events",
        "graphwire_runs",
        "graphwire_schedules",
        "graphwire_schema_migrations",
    ]


def test_sink_refuses_to_start_on_an_unmigrated_database(audit_env: dict[str, str]) -> None:
    """Its schema missing (public migrated): the sink exits 1 saying to run db migrate."""
    done = cli(audit_env, "audit")
    assert done.returncode == 1
    schema = audit_env["GRAPHWIRE_AUDIT_SCHEMA"]
    assert f"graphwire: error: the audit schema {schema!r} (GRAPHWIRE_AUDIT_SCHEMA) does not " \
        "exist in this database: run `graphwire db migrate` to create it, or correct the " \
        "setting" in done.stderr


async def test_runs_events_and_dead_letters_recorded_and_queried(
    bootstrap: str, topics: TopicNames, audit_env: dict[str, str], db: Any, tmp_path: Path
) -> None:
    """With a worker and the audit sink, 10 pipeline requests, one undecodable request and one
    contract-breaking event give 10 success rows, every event on the topic, and 3 dead letters
    (the sink's for the bad event and the junk request, the runner's for the junk request) with
    their reasons; run r3 has its input, output, 1 attempt, not cached, its sources; `runs show
    r3` lists its events in seq order from 2**32 as on Kafka; `runs list ... --limit 3 --json`
    prints 3 success lines; `status r3` is done/success/1 attempt from redis; `status nope`
    exits 1 with "unknown request 'nope'"."""
    sink = WorkerProcess(audit_env, "--migrate", command="audit", log_path=tmp_path / "sink.log")
    worker = WorkerProcess(audit_env, log_path=tmp_path / "worker.log")
    sink.start()
    worker.start()
    try:
        async with Collector(bootstrap, topics.events, topics.results) as out:
            await wait_for_members(bootstrap, audit_env["GRAPHWIRE_GROUP_ID"], 1)
            await produce(
                bootstrap,
                topics.requests,
                [(f"r{i}".encode(), encode(request(f"r{i}", input={"text": f"n{i}"})))
                 for i in range(10)]
                + [(b"junk", b"not json at all")],
            )
            # a record on the events topic that breaks the contract: the sink's own dead letter
            await produce(bootstrap, topics.events, [(b"x", b'{"request_id": "x", "seq": -1}')])
            await out.wait_count(topics.results, 10)
            await wait_rows(db, "SELECT count(*) FROM graphwire_runs WHERE status = 'success'", 10)
            events_on_topic = len([e for e in out.values(topics.events) if "type" in e])
            await wait_rows(db, "SELECT count(*) FROM graphwire_events", events_on_topic)
            await wait_rows(db, "SELECT count(*) FROM graphwire_dead_letters", 3)
    finally:
        sink.stop()
        worker.stop()

    run = await db.fetchrow("SELECT * FROM graphwire_runs WHERE request_id = 'r3'")
    assert run["graph"] == "pipeline"
    assert orjson.loads(run["input"]) == {"text": "n3"}
    assert orjson.loads(run["output"])["text"] == out_text(out, "r3")
    assert (run["attempts"], run["cached"], run["error"]) == (1, False, None)
    assert run["requested_at"] <= run["finished_at"]
    assert run["request_source"].startswith(f"{topics.requests}/")
    assert run["result_source"].startswith(f"{topics.results}/")

    letters = await db.fetch(
        "SELECT source_topic, origin, key, value, reason FROM graphwire_dead_letters "
        "ORDER BY source_topic, origin"
    )
    assert [(d["source_topic"], d["origin"], d["key"], d["value"]) for d in letters] == [
        (topics.events, "audit", b"x", b'{"request_id": "x", "seq": -1}'),
        (topics.requests, "audit", b"junk", b"not json at all"),  # the sink's own reading
        (topics.requests, "runner", b"junk", b"not json at all"),  # the runner's dead letter
    ]
    assert "event seq must be an integer from 0, got -1" in letters[0]["reason"]
    assert letters[1]["reason"].startswith(f"{topics.requests}: value is not UTF-8 JSON")
    assert letters[2]["reason"].startswith("value is not UTF-8 JSON")

    shown = cli(audit_env, "runs", "show", "r3")
    assert shown.returncode == 0, shown.stderr
    body = orjson.loads(shown.stdout)
    kafka_events = [e for e in out.values(topics.events) if e["request_id"] == "r3"]
    assert [e["seq"] for e in body["events"]] == list(range(2**32, 2**32 + len(kafka_events)))
    assert [(e["type"], e["node"], e["data"]) for e in body["events"]] == [
        (e["type"], e["node"], e["data"]) for e in sorted(kafka_events, key=lambda e: e["seq"])
    ]
    assert body["status"] == "success"

    listed = cli(audit_env, "runs", "list", "--graph", "pipeline", "--status", "success",
                 "--since", "1h", "--limit", "3", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 3
    assert {orjson.loads(line)["status"] for line in listed.stdout.splitlines()} == {"success"}

    status = cli(audit_env, "status", "r3")
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout) == {
        "request_id": "r3", "state": "done", "status": "success", "attempts": 1, "source": "redis"
    }
    missing = cli(audit_env, "status", "nope")
    assert missing.returncode == 1
    assert "unknown request 'nope'" in missing.stderr


def out_text(out: Collector, request_id: str) -> Any:
    """The ``text`` of a result's output on the results topic."""
    for value in out.values(out.topics[1]):
        if value["request_id"] == request_id:
            return value["output"]["text"]
    raise AssertionError(f"no result for {request_id}")
