"""The run inspector's audit-table queries on a table of many callers' runs: keyset pages that
are exact (no row twice, none skipped, ties broken by request_id) and plans that stay one index
range scan with no sort (migration 0007), checked with EXPLAIN."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from graphwire.processors.audit.db import migrate, server_settings
from graphwire.processors.gateway.ui import queries
from tests.conftest import TEST_DATABASE_URL

SCOPES = 40
PER_SCOPE = 1500
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def db(prefix: str) -> AsyncIterator[Any]:
    """This test's audit schema with 60,000 runs of 40 callers (1,500 each: 4 graphs, 5
    statuses, 10 threads; every 3 runs share a timestamp), and 2,000 dead letters."""
    conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings=server_settings(prefix))
    try:
        await migrate(conn, prefix)
        await conn.execute(f"""
            INSERT INTO graphwire_runs (request_id, graph, thread_id, status, requested_at,
                                        finished_at, duration_ms, command)
            SELECT format('s%s.r%s', s, lpad(i::text, 5, '0')), 'g' || (i % 4),
                   format('s%s.t%s', s, i % 10),
                   (ARRAY['success','error','interrupted','accepted','timeout'])[i % 5 + 1],
                   $1::timestamptz + ((i / 3) * interval '1 second'),
                   $1::timestamptz + ((i / 3) * interval '1 second') + interval '2 seconds',
                   i % 97, CASE WHEN i % 7 = 0 THEN '{{"resume": 1}}'::jsonb END
            FROM generate_series(1, {SCOPES}) s, generate_series(1, {PER_SCOPE}) i""", T0)
        await conn.execute("""
            INSERT INTO graphwire_dead_letters (source_topic, source_partition, source_offset,
                origin, request_id, value, reason, received_at)
            SELECT 'x.requests', 0, i, 'runner', format('s%s.d%s', i % 20, i), '{}'::bytea,
                   'unknown graph', now()
            FROM generate_series(1, 2000) i""")
        await conn.execute("ANALYZE graphwire_runs; ANALYZE graphwire_dead_letters")
        yield conn
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')
        await conn.close()


async def every_page(db: Any, flt: queries.RunFilter, limit: int) -> list[str]:
    found: list[str] = []
    cursor = None
    while True:
        rows, cursor = await queries.runs_page(db, flt, cursor, limit)
        assert len(rows) <= limit
        found += [r["request_id"] for r in rows]
        if cursor is None:
            return found


async def test_keyset_pages_are_exact_newest_first(db: Any) -> None:
    """Paging 1,500 runs 70 at a time yields each run once, in (seen, request_id) descending
    order, ties included; filters by graph, status, thread and time are exact."""
    truth = [r["request_id"] for r in await db.fetch(
        "SELECT request_id FROM graphwire_runs WHERE request_id LIKE 's7.%' ORDER BY "
        "coalesce(requested_at, finished_at) DESC, request_id DESC")]
    assert len(truth) == PER_SCOPE
    assert await every_page(db, queries.RunFilter(scope="s7"), 70) == truth
    cases = {
        queries.RunFilter(scope="s7", graph="g1"): "graph = 'g1'",
        queries.RunFilter(scope="s7", status="error"): "status = 'error'",
        queries.RunFilter(scope="s7", thread_id="s7.t3"): "thread_id = 's7.t3'",
        queries.RunFilter(scope="s7", since=T0 + timedelta(seconds=100),
                          until=T0 + timedelta(seconds=200)):
            f"requested_at >= '{T0 + timedelta(seconds=100)}' AND "
            f"requested_at < '{T0 + timedelta(seconds=200)}'",
    }
    for flt, where in cases.items():
        want = [r["request_id"] for r in await db.fetch(
            f"SELECT request_id FROM graphwire_runs WHERE request_id LIKE 's7.%' AND {where} "
            "ORDER BY requested_at DESC, request_id DESC")]
        assert want and await every_page(db, flt, 33) == want, flt
    time_window = await every_page(db, list(cases)[-1], 1000)
    assert len(time_window) == 300  # 3 runs a second for 100 seconds
    rows, _ = await queries.runs_page(db, queries.RunFilter(scope="s7"), None, 3)
    assert [(r["request_id"], r["resume"]) for r in rows] == [
        ("s7.r01500", False), ("s7.r01499", False), ("s7.r01498", True)]  # 1498 = 7 * 214
    assert await every_page(db, queries.RunFilter(scope="nobody"), 50) == []


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += plan_nodes(child)
    return found


async def explain(db: Any, sql: str, args: list[Any]) -> list[dict[str, Any]]:
    plan = await db.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    import orjson

    return plan_nodes(orjson.loads(plan)[0]["Plan"])


@pytest.mark.parametrize(("flt", "index"), [
    (queries.RunFilter(scope="s3"), "graphwire_runs_scope_seen"),
    (queries.RunFilter(scope="s3", graph="g2"), "graphwire_runs_scope_graph_seen"),
    (queries.RunFilter(scope="s3", status="timeout"), "graphwire_runs_scope_status_seen"),
    (queries.RunFilter(scope="s3", since=T0 + timedelta(minutes=3)), "graphwire_runs_scope_seen"),
])
async def test_every_page_is_one_index_range_scan_without_a_sort(
    db: Any, flt: queries.RunFilter, index: str
) -> None:
    """First and deep pages (cursor) read the page's rows from one index in order: no Sort,
    no sequential scan, the cursor inside the index condition."""
    deep = (T0 + timedelta(seconds=200), "s3.r00600")
    for cursor in (None, deep):
        sql, args = queries.runs_page_sql(flt, cursor, 50)
        nodes = await explain(db, sql, args)
        types = [n["Node Type"] for n in nodes]
        assert "Sort" not in types and "Seq Scan" not in types, types
        scans = [n for n in nodes if n["Node Type"] in ("Index Scan", "Index Only Scan")]
        assert [n["Index Name"] for n in scans] == [index], types
        assert scans[0]["Scan Direction"] == "Backward"
        if cursor is not None:
            assert "request_id" in scans[0]["Index Cond"], scans[0]["Index Cond"]


async def test_a_thread_page_reads_only_that_thread(db: Any) -> None:
    """A thread filter reads the thread's own index entries (150 here; the planner may sort
    that few) and never the caller's whole slice of a scope index."""
    sql, args = queries.runs_page_sql(queries.RunFilter(scope="s3", thread_id="s3.t4"), None, 50)
    nodes = await explain(db, sql, args)
    types = [n["Node Type"] for n in nodes]
    assert "Seq Scan" not in types, types
    indexes = [n["Index Name"] for n in nodes if "Index Name" in n]
    assert indexes and set(indexes) <= {"graphwire_runs_thread", "graphwire_runs_thread_seen"}
    assert [r["request_id"] for r in await db.fetch(sql, *args)][:3] == [
        "s3.r01494", "s3.r01484", "s3.r01474"]


async def test_overview_live_feed_and_dead_letters_use_their_indexes(db: Any) -> None:
    """The last hour's aggregate, the live feed's newest change and a dead-letter page each
    read one caller's slice of an index."""
    since = datetime.now(UTC) - timedelta(hours=1)
    sql = ("SELECT count(*) FROM graphwire_runs WHERE split_part(request_id, '.', 1) = $1 "
           "AND finished_at IS NOT NULL AND finished_at >= $2")
    names = {n.get("Index Name") for n in await explain(db, sql, ["s3", since])}
    assert "graphwire_runs_scope_finished" in names
    rows, following = await queries.dead_letters_page(db, "s4", None, 30)
    assert [r["request_id"] for r in rows] == [f"s4.d{i}" for i in range(1984, 1384, -20)]
    assert following == rows[-1]["id"]
    rest, _ = await queries.dead_letters_page(db, "s4", following, 1000)
    assert len(rows) + len(rest) == 100
    dl_sql = ("SELECT id FROM graphwire_dead_letters WHERE split_part(request_id, '.', 1) = $1 "
              "AND request_id IS NOT NULL ORDER BY id DESC LIMIT 30")
    names = {n.get("Index Name") for n in await explain(db, dl_sql, ["s4"])}
    assert names & {"graphwire_dead_letters_scope"}
    seen, finished = await queries.latest_change(db, "s5")
    assert (seen, finished) == (T0 + timedelta(seconds=500), T0 + timedelta(seconds=502))


def test_a_cursor_the_gateway_did_not_make_is_refused() -> None:
    """Cursors round-trip; garbage, or one without a time zone, is a BadCursor with what to
    do."""
    when = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    assert queries.decode_cursor(queries.encode_cursor(when, "ab.c/d")) == (when, "ab.c/d")
    for bad in ("", "!!!", "W10", queries.encode_cursor(when, "x")[:-3],
                "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwieCJd"):  # ["2026-01-01T00:00:00","x"]
        with pytest.raises(queries.BadCursor, match="start from page 1"):
            queries.decode_cursor(bad)


async def test_an_operators_pages_span_every_caller_on_the_scopeless_indexes(db: Any) -> None:
    """An operator's filter (scope None) pages every caller's runs exactly, newest first; its
    first and deep pages read graphwire_runs_seen (graphwire_runs_status_seen with a status)
    in its order, without a full Sort (at most an incremental one, over a timestamp's ties) or
    a sequential scan; its dead letters are all 2,000, and its live feed's newest change is the
    whole table's, read from graphwire_runs_seen alone; its overview counts every caller's
    runs of the last hour."""
    truth = [r["request_id"] for r in await db.fetch(
        "SELECT request_id FROM graphwire_runs WHERE status = 'error' ORDER BY "
        "coalesce(requested_at, finished_at) DESC, request_id DESC")]
    assert len(truth) == SCOPES * PER_SCOPE // 5
    assert await every_page(db, queries.RunFilter(scope=None, status="error"), 1000) == truth
    rows, _ = await queries.runs_page(db, queries.RunFilter(scope=None), None, 4)
    assert [r["request_id"] for r in rows] == ["s9.r01500", "s8.r01500", "s7.r01500",
                                               "s6.r01500"]  # request_id DESC breaks ties
    deep = (T0 + timedelta(seconds=200), "s3.r00600")
    for flt, index in ((queries.RunFilter(scope=None), "graphwire_runs_seen"),
                       (queries.RunFilter(scope=None, status="timeout"),
                        "graphwire_runs_status_seen")):
        for cursor in (None, deep):
            sql, args = queries.runs_page_sql(flt, cursor, 50)
            nodes = await explain(db, sql, args)
            types = [n["Node Type"] for n in nodes]
            assert "Sort" not in types and "Seq Scan" not in types, types
            scans = [n for n in nodes if n["Node Type"] in ("Index Scan", "Index Only Scan")]
            assert [(n["Index Name"], n["Scan Direction"]) for n in scans] == [
                (index, "Forward")], types  # these indexes are DESC on seen
    letters, following = await queries.dead_letters_page(db, None, None, 1500)
    rest, last = await queries.dead_letters_page(db, None, following, 1500)
    assert (len(letters), len(rest), last) == (1500, 500, None)
    assert await queries.latest_change(db, None) == (T0 + timedelta(seconds=500),
                                                     T0 + timedelta(seconds=502))
    now = T0 + timedelta(minutes=30)
    mine = await queries.overview_totals(db, "s1", now)
    every = await queries.overview_totals(db, None, now)
    assert [(t["graph"], t["runs"]) for t in mine] == [(f"g{g}", PER_SCOPE // 4) for g in range(4)]
    assert [(t["graph"], t["runs"]) for t in every] == [(f"g{g}", SCOPES * PER_SCOPE // 4)
                                                        for g in range(4)]
    assert sum(m["runs"] for m in await queries.overview(db, None, now)) == SCOPES * PER_SCOPE
    feed = await explain(db, queries.LATEST_CHANGE_ALL, [])
    assert "Seq Scan" not in [n["Node Type"] for n in feed]
    assert {n.get("Index Name") for n in feed} - {None} == {"graphwire_runs_seen"}
