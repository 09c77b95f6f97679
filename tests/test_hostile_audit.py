"""Issue 21, audit sink: a bad row costs O(log n) transactions; a NUL in a text column is kept."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
from asyncpg.exceptions._base import DataError as ClientDataError

from graphwire.processors.audit.rows import Row
from graphwire.processors.audit.writer import AuditWriter
from graphwire.processors.pgerrors import kind
from graphwire.topics.codec import decode_request
from graphwire.topics.errors import InvalidRequest
from tests.conftest import TEST_DATABASE_URL
from tests.test_audit_writer import MAX, REQUEST, RESULT, T, db, rec, row, schema

__all__ = ["db", "schema"]  # fixtures


class CountingWriter(AuditWriter):
    """An AuditWriter that counts its transactions (one per ``write``)."""

    transactions = 0

    async def write(self, rows: Sequence[Row]) -> dict[str, int]:
        self.transactions += 1
        return await super().write(rows)


@pytest.fixture
async def writer(schema: str) -> AsyncIterator[CountingWriter]:
    w = CountingWriter(TEST_DATABASE_URL, schema=schema)
    try:
        yield w
    finally:
        await w.close()


def event(seq: int, node: str | None = "n") -> dict[str, Any]:
    return {"request_id": "r1", "seq": seq, "type": "node", "graph": "pipeline",
            "node": node, "data": {"seq": seq}, "ts": 1_700_000_000.0 + seq, "metadata": {}}


async def test_one_bad_row_in_a_batch_costs_log2_n_transactions_not_n(
    writer: CountingWriter, db: Any
) -> None:
    """A batch of 64 with one row PostgreSQL refuses: the batch, 2 halves per level down to the
    bad row (6 levels), and its dead letter: 14 transactions; the 63 good rows are stored."""
    rows = [row(rec(T.events, i, event(i))) for i in range(64)]
    bad = {**RESULT, "attempts": 2**40}  # asyncpg cannot encode it into an integer column
    rows[37] = row(rec(T.results, 37, bad))
    written = await writer.write_until_done(rows)
    assert written == {"graphwire_events": 63, "graphwire_dead_letters": 1}
    assert writer.transactions == 1 + 2 * 6 + 1
    letters = await db.fetch("SELECT source_offset, origin FROM graphwire_dead_letters")
    assert [(r["source_offset"], r["origin"]) for r in letters] == [(37, "audit")]
    seqs = await db.fetch("SELECT seq FROM graphwire_events ORDER BY seq")
    assert [r["seq"] for r in seqs] == [i for i in range(64) if i != 37]
    assert writer.problem is None


async def test_a_nul_in_a_text_column_is_stored_as_a_replacement_character(
    writer: CountingWriter, db: Any
) -> None:
    """A result whose graph and thread_id hold a NUL (a raw producer's, or an older runner's:
    results are not checked against the request contract) is stored, U+FFFD in place of each
    NUL, in its batch's one transaction (not refused, isolated and dead-lettered). A request
    with the same NULs is refused by the contract: the sink's own dead letter, same batch."""
    nul_request = {**REQUEST, "request_id": "r0", "graph": "pipe\x00line", "thread_id": "t\x00"}
    with pytest.raises(InvalidRequest, match="thread_id must contain only printable characters"):
        decode_request(orjson.dumps(nul_request), max_bytes=MAX)
    nul_result = {**RESULT, "graph": "pipe\x00line", "thread_id": "t\x00"}
    rows = [row(rec(T.requests, 0, nul_request)), row(rec(T.results, 1, nul_result)),
            row(rec(T.events, 2, event(1)))]
    written = await writer.write_until_done(rows)
    assert written == {"graphwire_dead_letters": 1, "graphwire_runs": 1, "graphwire_events": 1}
    assert writer.transactions == 1
    run = await db.fetchrow("SELECT request_id, graph, thread_id FROM graphwire_runs")
    assert (run["request_id"], run["graph"], run["thread_id"]) == (
        "r1", "pipe\ufffdline", "t\ufffd")
    letter = await db.fetchrow("SELECT source_offset, origin FROM graphwire_dead_letters")
    assert (letter["source_offset"], letter["origin"]) == (0, "audit")


async def test_a_value_too_large_for_an_index_is_a_dead_letter_not_an_outage(
    writer: CountingWriter, db: Any
) -> None:
    """A result whose thread_id is too large for the thread index (SQLSTATE 54000, the same
    every time) becomes a dead letter; the event beside it is stored, /ready stays ready."""
    huge = {**RESULT, "request_id": "wide", "thread_id": secrets.token_urlsafe(15_000)}
    rows = [row(rec(T.results, 0, huge)), row(rec(T.events, 1, event(1)))]
    written = await asyncio.wait_for(writer.write_until_done(rows), 120)
    assert written == {"graphwire_events": 1, "graphwire_dead_letters": 1}
    letter = await db.fetchrow("SELECT source_offset, origin, reason FROM graphwire_dead_letters")
    assert (letter["source_offset"], letter["origin"]) == (0, "audit")
    assert "PostgreSQL refused the row (ProgramLimitExceededError: index row" in letter["reason"]
    assert writer.problem is None
    assert kind(ClientDataError("invalid input for query argument $1")) == "data"
