"""AuditWriter and the record -> row mapping against the real PostgreSQL (no Kafka needed)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from graphwire.processors.audit.db import migrate
from graphwire.processors.audit.rows import Record, Row, to_row
from graphwire.processors.audit.writer import AuditWriter
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.helpers import connect

T = TopicNames("gw")
MAX = 1024 * 1024


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = f"a{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await migrate(conn, name)
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
        await conn.close()


@pytest.fixture
async def writer(schema: str) -> AsyncIterator[AuditWriter]:
    w = AuditWriter(TEST_DATABASE_URL, schema=schema)
    try:
        yield w
    finally:
        await w.close()


@pytest.fixture
async def db(schema: str) -> AsyncIterator[Any]:
    """A connection with this module's audit schema alone on the search_path."""
    async with connect(schema) as conn:
        yield conn


def rec(topic: str, offset: int, value: Any, *, headers: Any = (), ts: float = 1_700_000_000.0,
        key: bytes | None = b"k") -> Record:
    raw = value if isinstance(value, bytes | None) else orjson.dumps(value)
    return Record(topic, 0, offset, key, raw, list(headers), ts)


def row(record: Record) -> Row:
    return to_row(record, T, max_request_bytes=MAX)


REQUEST = {"request_id": "r1", "graph": "pipeline", "input": {"text": "hi"},
           "metadata": {"who": "a"}, "thread_id": "t1"}
RESULT = {"request_id": "r1", "graph": "pipeline", "status": "success", "output": {"text": "HI"},
          "error": None, "interrupts": [], "thread_id": "t1", "attempts": 2, "cached": False,
          "duration_ms": 12.5, "metadata": {"who": "a"}}


async def run_row(db: Any, rid: str = "r1") -> dict[str, Any]:
    found = await db.fetchrow("SELECT * FROM graphwire_runs WHERE request_id = $1", rid)
    assert found is not None
    return dict(found)


async def test_request_and_result_in_either_order_give_the_same_row(
    writer: AuditWriter, db: Any
) -> None:
    """Result first (status success, no input, no requested_at yet) then request, or request first
    (status accepted, no output, no finished_at yet) then result: both orders leave the same run
    row, success with input {"text": "hi"}, output {"text": "HI"}, metadata {"who": "a"}, 2
    attempts, 12.5 ms, thread t1, requested at 100 s and finished at 101 s, sources
    gw.requests/0/5 and gw.results/0/9."""
    request_row = row(rec(T.requests, 5, REQUEST, ts=100.0))
    result_row = row(rec(T.results, 9, RESULT, ts=101.0))
    await writer.write([result_row])
    partial = await run_row(db)
    assert (partial["status"], partial["input"], partial["requested_at"]) == ("success", None, None)
    await writer.write([request_row])
    late = await run_row(db)

    await db.execute("DELETE FROM graphwire_runs")
    await writer.write([request_row])
    accepted = await run_row(db)
    assert (accepted["status"], accepted["output"], accepted["finished_at"]) == (
        "accepted", None, None
    )
    await writer.write([result_row])
    early = await run_row(db)

    assert late == early
    assert early["status"] == "success"
    assert orjson.loads(early["input"]) == {"text": "hi"}
    assert orjson.loads(early["output"]) == {"text": "HI"}
    assert orjson.loads(early["metadata"]) == {"who": "a"}
    assert (early["attempts"], early["duration_ms"], early["thread_id"]) == (2, 12.5, "t1")
    assert early["requested_at"].timestamp() == 100.0
    assert early["finished_at"].timestamp() == 101.0
    assert (early["request_source"], early["result_source"]) == ("gw.requests/0/5",
                                                                 "gw.results/0/9")


async def test_a_replayed_batch_adds_and_changes_nothing(writer: AuditWriter, db: Any) -> None:
    """A batch of a request, 3 events, its result and a dead letter writes 2 run rows, 3 events and
    1 dead letter; writing the same batch again rewrites only the result half (1 run row), adds no
    event or dead letter, and leaves every table unchanged; the dead letter keeps the source
    gw.requests/3/7, origin runner, reason "bad" and value b"raw" from its headers."""
    batch = [
        row(rec(T.requests, 1, REQUEST)),
        *(row(rec(T.events, i, {"request_id": "r1", "seq": i, "type": "node", "graph": "g",
                                  "node": f"n{i}", "data": {"i": i}, "ts": 5.0 + i}))
          for i in range(3)),
        row(rec(T.results, 2, RESULT)),
        row(rec(T.dlq, 0, b"raw", headers=[("x-graphwire-error", b"bad"),
                                           ("x-graphwire-source", b"gw.requests/3/7")])),
    ]
    first = await writer.write(batch)
    before = {t: await db.fetch(f"SELECT * FROM {t} ORDER BY 1, 2")
              for t in ("graphwire_runs", "graphwire_events", "graphwire_dead_letters")}
    second = await writer.write(batch)
    after = {t: await db.fetch(f"SELECT * FROM {t} ORDER BY 1, 2") for t in before}
    assert first == {"graphwire_runs": 2, "graphwire_events": 3, "graphwire_dead_letters": 1}
    # the result half is rewritten with the same values; events and dead letters: nothing
    assert second == {"graphwire_runs": 1, "graphwire_events": 0, "graphwire_dead_letters": 0}
    assert before == after
    letter = before["graphwire_dead_letters"][0]
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
        "gw.requests", 3, 7
    )
    assert (letter["origin"], letter["reason"], letter["value"]) == ("runner", "bad", b"raw")


async def test_first_request_wins_over_a_duplicate_request_id(
    writer: AuditWriter, db: Any
) -> None:
    """Two later requests with the same request_id (one in the same batch, one in the next) leave
    the first request's input {"text": "hi"} in the run row."""
    again = {**REQUEST, "input": {"text": "second"}}
    await writer.write([row(rec(T.requests, 1, REQUEST)), row(rec(T.requests, 2, again))])
    await writer.write([row(rec(T.requests, 3, again))])
    assert orjson.loads((await run_row(db))["input"]) == {"text": "hi"}


async def test_a_row_postgres_refuses_becomes_a_dead_letter_and_the_rest_is_written(
    writer: AuditWriter, db: Any
) -> None:
    """A batch with one good event and one row PostgreSQL refuses (invalid JSON) writes the good
    event and one audit dead letter at gw.events offset 1, whose reason starts "gw.events:
    PostgreSQL refused the row (InvalidTextRepresentationError: invalid input"; the "data" write
    failure counter reads 2 (the batch, then the row)."""
    good = row(rec(T.events, 0, {"request_id": "r1", "seq": 0, "type": "run_started",
                                 "graph": "g", "ts": 1.0}))
    bad_record = rec(T.events, 1, b"{}")
    bad = Row("events", ("r1", 1, "node", None, "{not json", good.values[5]), bad_record)
    written = await writer.write_until_done([good, bad])
    assert written == {"graphwire_events": 1, "graphwire_dead_letters": 1}
    assert await db.fetchval("SELECT count(*) FROM graphwire_events") == 1
    letter = await db.fetchrow("SELECT * FROM graphwire_dead_letters")
    assert (letter["source_topic"], letter["source_offset"], letter["origin"]) == (
        T.events, 1, "audit"
    )
    assert letter["reason"].startswith(
        "gw.events: PostgreSQL refused the row (InvalidTextRepresentationError: invalid input"
    )
    assert writer.metrics.write_failures.labels("data")._value.get() == 2  # batch, then the row


def test_records_that_break_the_contract_become_dead_letters_with_the_reason() -> None:
    """Seven records that break the contract (a tombstone, a JSON list, an unknown event type, a
    non-numeric ts, a bad result status, a request with neither input nor command, an unknown
    topic) each become an audit dead letter row with its topic, partition 0 and offset, and a
    reason starting with the expected sentence."""
    cases = [
        (rec(T.events, 0, None), "gw.events: no value (a tombstone)"),
        (rec(T.events, 1, b"[1]"), "gw.events: value is a JSON list, not an object"),
        (rec(T.events, 2, {"request_id": "r", "seq": 0, "type": "nope", "ts": 1}),
            "gw.events: event type 'nope' is not one of"),
        (rec(T.events, 3, {"request_id": "r", "seq": 0, "type": "node", "ts": "x"}),
            "gw.events: event ts must be Unix seconds, got 'x'"),
        (rec(T.results, 4, {"request_id": "r", "graph": "g", "status": "meh",
                           "duration_ms": 1}), "gw.results: not a result: status: Input should be"),
        (rec(T.requests, 5, {"request_id": "r", "graph": "g"}),
            "gw.requests: invalid request: request: give 'input' or 'command': a null input "
            "continues a thread's run (from a breakpoint), so it needs 'thread_id'"),
        (rec("other", 6, {}), "other: topic 'other' is not one of graphwire's"),
    ]
    for record, reason in cases:
        got = row(record)
        assert got.table == "dead_letters", record
        assert got.values[3] == "audit"
        assert got.values[8].startswith(reason), (got.values[8], reason)
        assert got.values[:3] == (record.topic, 0, record.offset)


def test_nul_characters_are_replaced_not_lost() -> None:
    """NUL characters in an event's data, in a key and in a value, are each replaced by U+FFFD
    (key "a" + U+FFFD, value "b" + U+FFFD + "c"), and the event is still stored as an event."""
    event = {"request_id": "r", "seq": 0, "type": "node", "node": "n", "ts": 1.0,
             "data": {"a\u0000": "b\u0000c"}}
    got = row(rec(T.events, 0, event))
    assert got.table == "events"
    assert orjson.loads(got.values[4]) == {"a\ufffd": "b\ufffdc"}


def test_a_dead_letter_without_graphwire_headers_is_kept_with_its_own_position() -> None:
    """A dead letter without graphwire headers is kept at its own position (dlq topic, partition 0,
    offset 42), origin runner, no source, reason "(no reason header)", and its non-UTF-8 header
    kept as ["custom", the escaped byte 0xff]."""
    got = row(rec(T.dlq, 42, b"\xff\xfe", headers=[("custom", b"\xff")]))
    assert got.values[:5] == (T.dlq, 0, 42, "runner", None)
    assert got.values[8] == "(no reason header)"
    assert orjson.loads(got.values[7]) == [["custom", "\\xff"]]


async def test_db_migrate_and_prune_from_the_cli(schema: str, writer: AuditWriter, db: Any) -> None:
    """`graphwire db migrate` on a migrated schema prints "audit tables at version 8 (nothing to
    do)"; `db prune --older-than 30d` deletes the 2 events 40 and 31 days old and keeps seq 2 and
    3; `--older-than soon` exits 1 saying how to write an age."""
    from tests.test_audit import cli

    env = {"GRAPHWIRE_DATABASE_URL": TEST_DATABASE_URL, "GRAPHWIRE_AUDIT_SCHEMA": schema}
    migrated = cli(env, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == "audit tables at version 8 (nothing to do)\n"
    now = time.time()
    rows = [row(rec(T.events, i, {"request_id": "r", "seq": i, "type": "node", "graph": "g",
                                  "ts": now - age * 86400}))
            for i, age in enumerate([40, 31, 29, 0])]
    await writer.write(rows)
    pruned = cli(env, "db", "prune", "--older-than", "30d")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("deleted 2 events older than 30 days")
    left = await db.fetch("SELECT seq FROM graphwire_events ORDER BY seq")
    assert [r["seq"] for r in left] == [2, 3]
    bad = cli(env, "db", "prune", "--older-than", "soon")
    assert bad.returncode == 1
    assert "cannot read the age 'soon': write it like 90s, 15m, 1h, 7d or 2w" in bad.stderr


async def test_a_value_asyncpg_cannot_encode_is_isolated_not_retried_forever(
    writer: AuditWriter, db: Any
) -> None:
    """A result whose attempts (2**40) asyncpg cannot encode becomes one audit dead letter at offset
    1 whose reason names OverflowError, the other result is written (1 run row), and the writer
    reports no problem (/ready stays ready)."""
    huge = {**RESULT, "request_id": "big", "attempts": 2**40}  # the contract has no upper bound
    rows = [row(rec(T.results, 1, huge)), row(rec(T.results, 2, RESULT))]
    written = await writer.write_until_done(rows)
    assert written == {"graphwire_runs": 1, "graphwire_dead_letters": 1}
    letter = await db.fetchrow("SELECT source_offset, origin, reason FROM graphwire_dead_letters")
    assert (letter["source_offset"], letter["origin"]) == (1, "audit")
    assert "PostgreSQL refused the row (OverflowError" in letter["reason"]
    assert writer.problem is None  # not an outage: /ready stays ready


async def test_an_older_result_written_late_never_overwrites_a_newer_one(
    writer: AuditWriter, db: Any
) -> None:
    """After the result at offset 9 (error, 3 attempts), a late result at offset 4 leaves the row at
    error/3/9; a result at offset 12 then replaces it (success, 2 attempts, offset 12)."""
    newer = {**RESULT, "status": "error", "output": None, "attempts": 3}
    await writer.write([row(rec(T.results, 9, newer))])
    await writer.write([row(rec(T.results, 4, RESULT))])  # a stale owner's batch lands late
    run = await run_row(db)
    assert (run["status"], run["attempts"], run["result_offset"]) == ("error", 3, 9)
    await writer.write([row(rec(T.results, 12, RESULT))])
    run = await run_row(db)
    assert (run["status"], run["attempts"], run["result_offset"]) == ("success", 2, 12)


def test_a_nonsense_kafka_timestamp_becomes_now_instead_of_failing_the_batch() -> None:
    """A request whose Kafka timestamp is 1e15, -5 or NaN still becomes a request row, with a
    timestamp within 60 s of now."""
    for ts in (1e15, -5.0, float("nan")):
        got = row(rec(T.requests, 0, REQUEST, ts=ts))
        assert got.table == "requests"
        assert abs(got.values[6].timestamp() - time.time()) < 60


def test_failures_are_told_apart_by_sqlstate() -> None:
    """The writer classifies a refused connection, CannotConnectNow and UndefinedTable as
    "unavailable", a deadlock and a serialization failure as "conflict", and invalid text, a
    unique violation and an OverflowError as "data"."""
    from graphwire.processors.audit.writer import _kind

    assert _kind(ConnectionRefusedError()) == "unavailable"
    assert _kind(asyncpg.CannotConnectNowError("starting")) == "unavailable"
    assert _kind(asyncpg.UndefinedTableError("no table")) == "unavailable"  # migrate fixes it
    assert _kind(asyncpg.DeadlockDetectedError("deadlock")) == "conflict"
    assert _kind(asyncpg.SerializationError("retry")) == "conflict"
    assert _kind(asyncpg.InvalidTextRepresentationError("bad json")) == "data"
    assert _kind(asyncpg.UniqueViolationError("dup")) == "data"
    assert _kind(OverflowError("int32")) == "data"
