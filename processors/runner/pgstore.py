"""GroupCommitStore: LangGraph's long-term memory store (``BaseStore``) on asyncpg.

A node reaches it as ``runtime.store`` (or an injected ``store: BaseStore``) to remember things
across threads: user preferences, facts, summaries. Every worker shares the one table, so what
a run wrote on one worker is read by the next run on any other.

- Same table, same migrations as ``langgraph-checkpoint-postgres``'s ``PostgresStore``: the
  namespace is stored dot-joined in ``prefix``, values as jsonb, TTL as ``expires_at`` and
  ``ttl_minutes``, versions in ``store_migrations``. LangGraph's own store reads what graphwire
  wrote, and the other way round; filters, ordering (newest ``updated_at`` first) and
  ``list_namespaces`` are upstream's SQL (including its text comparison for ``$gt``/``$lt``).
- Puts and deletes of every run in the process go on one bounded queue; one writer folds what
  is queued into ONE statement (an upsert and a delete over ``unnest`` arrays) and resolves each
  caller when it committed, as ``GroupCommitSaver`` does for checkpoints. A value PostgreSQL
  refuses fails only its own caller (``StoreDataRefused``); a lost connection is an outage
  (``StoreDatabaseUnavailable``), which the runner treats like a checkpoint outage: the
  request is retried once PostgreSQL is back. Reads go straight to the pool.
- No semantic search: an ``index`` (embeddings) needs pgvector, so it is refused up front.
- The sync API (``batch``, ``get``, ``put`` ...) works from another thread, such as a sync node
  LangGraph runs in its thread pool: it runs ``abatch`` on the store's event loop, as
  upstream's ``AsyncPostgresStore`` does. On the loop itself (an inline sync node) it raises
  instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)

from graphwire.processors.runner.failures import pg_data_error
from graphwire.processors.runner.pgsaver import (
    CheckpointDatabaseUnavailable,
    CheckpointDataRefused,
    _dumps,
    is_outage,
)
from graphwire.topics.errors import GraphwireError

log = logging.getLogger(__name__)

# langgraph-checkpoint-postgres's store migrations, verbatim: the position is the version kept
# in store_migrations, so either store sees the other's table as up to date.
MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS store (
    -- 'prefix' represents the doc's 'namespace'
    prefix text NOT NULL,
    key text NOT NULL,
    value jsonb NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (prefix, key)
);
""",
    """
-- For faster lookups by prefix
CREATE INDEX CONCURRENTLY IF NOT EXISTS store_prefix_idx ON store USING btree (prefix text_pattern_ops);
""",  # noqa: E501 (upstream's text, byte for byte)
    """
-- Add expires_at column to store table
ALTER TABLE store
ADD COLUMN IF NOT EXISTS expires_at TIMESTAMP WITH TIME ZONE,
ADD COLUMN IF NOT EXISTS ttl_minutes INT;
""",
    """
-- Add indexes for efficient TTL sweeping
CREATE INDEX IF NOT EXISTS idx_store_expires_at ON store (expires_at)
WHERE expires_at IS NOT NULL;
""",
]

_MIGRATION_LOCK = 0x67_77_73_74  # "gwst": graphwire store migrations (when set up alone)

# One statement for a whole group. Rows are deduplicated per (prefix, key) before (last wins,
# in queue order), so no row is both deleted and upserted, nor upserted twice. The upsert is
# upstream's; a TTL of NULL gives expires_at NULL.
GROUP_WRITE_SQL = """
WITH deleted AS (
    DELETE FROM store s
    USING unnest($1::text[], $2::text[]) AS d(prefix, key)
    WHERE s.prefix = d.prefix AND s.key = d.key
), upserted AS (
    INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes)
    SELECT p, k, v::jsonb, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP,
           NOW() + make_interval(secs => t * 60), t
    FROM unnest($3::text[], $4::text[], $5::text[], $6::float8[]) AS u(p, k, v, t)
    ON CONFLICT (prefix, key) DO UPDATE
    SET value = EXCLUDED.value,
        updated_at = CURRENT_TIMESTAMP,
        expires_at = EXCLUDED.expires_at,
        ttl_minutes = EXCLUDED.ttl_minutes
)
SELECT 1
"""

SWEEP_SQL = "DELETE FROM store WHERE expires_at IS NOT NULL AND expires_at < NOW()"

_NO_INDEX = (
    "graphwire's store has no semantic search: an `index` (embeddings) needs the pgvector "
    "extension in PostgreSQL and graphwire does not support it; drop `index` from the store "
    "configuration (search then filters by namespace and value), or compile the graph with "
    "LangGraph's own PostgresStore on a database that has pgvector"
)

_SYNC_ON_LOOP = (
    "a synchronous call of the graphwire store ({method}) on its own event loop would deadlock: "
    "in an async node use `await store.a{method}(...)`; a sync node must run in a thread "
    "(GRAPHWIRE_SYNC_NODES=thread, the default for plain sync nodes)"
)


class StoreIndexUnsupported(GraphwireError):
    """A store configured with an ``index``: semantic search needs pgvector (not supported)."""


class StoreDatabaseUnavailable(CheckpointDatabaseUnavailable):
    """PostgreSQL for the store could not be reached or dropped the connection. The store and
    the checkpoints share one database (and pool), so the runner treats both alike: an outage,
    the request retried once PostgreSQL answers."""


class StoreDataRefused(CheckpointDataRefused):
    """PostgreSQL answered and refused a value of this caller (a NUL in a key or a string of the
    value): the data is bad, the database is fine; never retried."""


def _unavailable(exc: BaseException) -> StoreDatabaseUnavailable:
    unavailable = StoreDatabaseUnavailable(
        f"PostgreSQL for the store is unavailable ({type(exc).__name__}: {exc})"
    )
    unavailable.__cause__ = exc
    return unavailable


def _refused(exc: BaseException) -> StoreDataRefused:
    refused = StoreDataRefused(
        f"PostgreSQL refused a value put in the store ({type(exc).__name__}: {exc}); store "
        "JSON without NUL characters (\\u0000) in keys and strings"
    )
    refused.__cause__ = exc
    return refused


def _text(namespace: tuple[str, ...]) -> str:
    """A namespace as upstream stores it in ``prefix``: its labels joined by dots."""
    return ".".join(namespace)


def _namespace(prefix: str) -> tuple[str, ...]:
    return tuple(prefix.split("."))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _match_pattern(path: tuple[str, ...], match_type: str) -> str:
    """Upstream's regex for ``list_namespaces`` prefix/suffix conditions (``*``: one label)."""
    body = r"\.".join("[^.]+" if part == "*" else re.escape(part) for part in path)
    if match_type == "suffix":
        return rf"(^|\.){body}\Z"
    return rf"^{body}(\.|\Z)"


class _Args:
    """Positional parameters of one asyncpg statement: ``arg(value)`` gives its ``$n``."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _filter_condition(key: str, op: str, value: Any, arg: _Args) -> str:
    """Upstream's filter operators: jsonb equality for $eq/$ne, text comparison for the rest."""
    if op == "$eq":
        return f"store.value -> {arg(key)}::text = {arg(value)}::jsonb"
    if op == "$ne":
        return f"store.value -> {arg(key)}::text != {arg(value)}::jsonb"
    compare = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}.get(op)
    if compare is None:
        raise ValueError(f"Unsupported operator: {op}")
    return f"store.value ->> {arg(key)}::text {compare} {arg(str(value))}::text"


@dataclass
class _Puts:
    """One caller's puts (deduplicated, last wins); ``done`` resolves when they committed."""

    done: asyncio.Future[None]
    rows: dict[tuple[str, str], tuple[str, float | None] | None]
    """(prefix, key) -> (value as JSON text, ttl minutes), or None to delete."""


def _group_params(batch: Sequence[_Puts]) -> list[list[Any]]:
    rows: dict[tuple[str, str], tuple[str, float | None] | None] = {}
    for puts in batch:
        rows.update(puts.rows)  # queue order: a later put of the same key wins
    deleted = [k for k, row in rows.items() if row is None]
    upserted = [(k, row) for k, row in rows.items() if row is not None]
    return [
        [p for p, _ in deleted], [k for _, k in deleted],
        [p for (p, _), _ in upserted], [k for (_, k), _ in upserted],
        [row[0] for _, row in upserted], [row[1] for _, row in upserted],
    ]


Observer = Callable[[str, int, float], None]
"""Told of each store call: (kind: get/put/search/list_namespaces, ops, seconds)."""


class GroupCommitStore(BaseStore):
    """LangGraph's ``BaseStore`` on an asyncpg pool, with group-committed writes.

    ``pool`` needs ``init=init_connection`` of ``pgsaver`` (the jsonb codec). ``ttl`` is
    LangGraph's ``TTLConfig`` (``default_ttl`` and ``refresh_on_read`` in minutes/bool,
    ``omit_expired``); ``index`` is refused (``StoreIndexUnsupported``). ``max_queued`` bounds
    the puts waiting for a commit (callers wait beyond it), ``max_group`` the puts in one
    statement.
    """

    supports_ttl: bool = True

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        index: Mapping[str, Any] | None = None,
        ttl: TTLConfig | None = None,
        max_queued: int = 1024,
        max_group: int = 512,
    ) -> None:
        if index:
            raise StoreIndexUnsupported(_NO_INDEX)
        self.pool = pool
        self.ttl_config = ttl
        self._max_group = max_group
        self._queue: asyncio.Queue[_Puts] = asyncio.Queue(maxsize=max_queued)
        self._writer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self.observer: Observer | None = None
        self.commits = 0
        """Group statements committed (tests and benchmarks compare it with the puts)."""
        self.committed_puts = 0
        """Callers' put batches those statements carried."""

    # -- set-up and lifecycle ----------------------------------------------------------------

    async def setup(self, conn: asyncpg.Connection | None = None) -> None:
        """Create the ``store`` table and apply upstream's migrations not applied yet. On
        ``conn`` when given (the caller holds its migration lock); else on a pooled connection
        under graphwire's store migration lock."""
        if conn is not None:
            await _migrate(conn)
            return
        async with self.pool.acquire() as own:
            while not await own.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK):
                await asyncio.sleep(0.2)
            try:
                await _migrate(own)
            finally:
                await own.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    async def aclose(self) -> None:
        """Stop the sweeper, commit what is queued, stop the writer. Idempotent."""
        await self.stop_ttl_sweeper()
        if self._writer is None:
            return
        await self._queue.join()
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        self._writer = None

    async def sweep_ttl(self) -> int:
        """Delete the items whose TTL expired; returns how many."""
        try:
            async with self.pool.acquire(timeout=10) as conn:
                status = await conn.execute(SWEEP_SQL)
        except Exception as exc:
            if is_outage(exc):
                raise _unavailable(exc) from exc
            raise
        return int(status.split()[-1])

    def start_ttl_sweeper(self, interval_s: float) -> None:
        """Sweep expired items every ``interval_s`` seconds in the background (again: no-op)."""
        if self._sweeper is not None and not self._sweeper.done():
            return
        self._sweeper = asyncio.create_task(self._sweep_every(interval_s), name="store-sweeper",
                                            context=contextvars.Context())

    async def stop_ttl_sweeper(self) -> None:
        """Stop the background sweeper, if it runs."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    async def _sweep_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                deleted = await self.sweep_ttl()
            except Exception as exc:  # the next sweep catches up
                log.warning("store TTL sweep failed: %s", exc)
                continue
            if deleted:
                log.info("store TTL sweep deleted %d expired items", deleted)

    # -- the BaseStore contract --------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """``abatch`` from another thread (a sync node in LangGraph's thread pool), run on the
        store's event loop; on that loop itself it raises rather than deadlock."""
        ops = list(ops)
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is None or running is self._loop:
            method = type(ops[0]).__name__.removesuffix("Op").lower() if ops else "batch"
            raise RuntimeError(_SYNC_ON_LOOP.format(method=method))
        return asyncio.run_coroutine_threadsafe(self.abatch(ops), self._loop).result()

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` in upstream's order: gets, searches, namespace listings (on one pooled
        connection), then puts (group-committed); results in the order of ``ops``."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        ops = list(ops)
        results: list[Result] = [None] * len(ops)
        gets: list[tuple[int, GetOp]] = []
        searches: list[tuple[int, SearchOp]] = []
        lists: list[tuple[int, ListNamespacesOp]] = []
        puts: list[PutOp] = []
        for i, op in enumerate(ops):
            validate_op_namespace(op)
            if isinstance(op, GetOp):
                gets.append((i, op))
            elif isinstance(op, SearchOp):
                searches.append((i, op))
            elif isinstance(op, ListNamespacesOp):
                lists.append((i, op))
            elif isinstance(op, PutOp):
                puts.append(op)
            else:
                raise ValueError(f"unknown store operation: {type(op).__name__}")
        started = time.perf_counter()
        if gets or searches or lists:
            await self._read(gets, searches, lists, results)
        if puts:
            await self._put(puts)
        if self.observer is not None:
            seconds = time.perf_counter() - started
            for kind, count in (("get", len(gets)), ("search", len(searches)),
                                ("list_namespaces", len(lists)), ("put", len(puts))):
                if count:
                    self.observer(kind, count, seconds)
        return results

    # -- reads -------------------------------------------------------------------------------

    @property
    def _omit_expired(self) -> bool:
        return bool(self.ttl_config and self.ttl_config.get("omit_expired"))

    async def _read(
        self,
        gets: list[tuple[int, GetOp]],
        searches: list[tuple[int, SearchOp]],
        lists: list[tuple[int, ListNamespacesOp]],
        results: list[Result],
    ) -> None:
        try:
            async with self.pool.acquire(timeout=10) as conn:
                if gets:
                    await self._get(conn, gets, results)
                for i, search in searches:
                    sql, args = self._search_sql(search)
                    results[i] = [
                        SearchItem(namespace=_namespace(row["prefix"]), key=row["key"],
                                   value=row["value"], created_at=row["created_at"],
                                   updated_at=row["updated_at"])
                        for row in await conn.fetch(sql, *args)
                    ]
                for i, listing in lists:
                    sql, args = self._list_sql(listing)
                    results[i] = [_namespace(row[0]) for row in await conn.fetch(sql, *args)]
        except Exception as exc:
            if is_outage(exc):
                raise _unavailable(exc) from exc
            if pg_data_error(exc):  # a NUL in a key, say
                raise _refused(exc) from exc
            raise

    async def _get(
        self, conn: asyncpg.Connection, gets: list[tuple[int, GetOp]], results: list[Result]
    ) -> None:
        """All gets in one statement (refreshing the TTL of those that ask, as upstream)."""
        expiry = "AND (s.expires_at IS NULL OR s.expires_at > NOW())" if self._omit_expired else ""
        sql = f"""
            WITH passed_in AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::bool[]) AS p(prefix, key, refresh)
            ), updated AS (
                UPDATE store s
                SET expires_at = NOW() + (s.ttl_minutes || ' minutes')::interval
                FROM passed_in p
                WHERE s.prefix = p.prefix AND s.key = p.key AND p.refresh
                  AND s.ttl_minutes IS NOT NULL {expiry}
            )
            SELECT s.prefix, s.key, s.value, s.created_at, s.updated_at
            FROM store s JOIN passed_in p ON s.prefix = p.prefix AND s.key = p.key
            WHERE TRUE {expiry}
        """
        rows = await conn.fetch(
            sql, [_text(op.namespace) for _, op in gets], [op.key for _, op in gets],
            [bool(op.refresh_ttl) for _, op in gets],
        )
        found = {(row["prefix"], row["key"]): row for row in rows}
        for i, op in gets:
            row = found.get((_text(op.namespace), op.key))
            if row is not None:
                results[i] = Item(value=row["value"], key=row["key"], namespace=op.namespace,
                                  created_at=row["created_at"], updated_at=row["updated_at"])

    def _search_sql(self, op: SearchOp) -> tuple[str, list[Any]]:
        """Upstream's search without vectors: namespace prefix, filter, newest first."""
        arg = _Args()
        wheres: list[str] = []
        if op.namespace_prefix:
            path = _text(op.namespace_prefix)
            wheres.append(f"(store.prefix = {arg(path)} OR store.prefix LIKE "
                          f"{arg(_escape_like(path) + '.%')} ESCAPE '\\')")
        for key, value in (op.filter or {}).items():
            if isinstance(value, dict):
                wheres.extend(_filter_condition(key, name, v, arg) for name, v in value.items())
            else:
                wheres.append(f"store.value -> {arg(key)}::text = {arg(value)}::jsonb")
        if self._omit_expired:
            wheres.append("(store.expires_at IS NULL OR store.expires_at > NOW())")
        # prefix, key after updated_at: the rows of one group commit share their updated_at
        sql = f"""
            SELECT store.prefix, store.key, store.value, store.created_at, store.updated_at
            FROM store WHERE {" AND ".join(wheres) or "TRUE"}
            ORDER BY store.updated_at DESC, store.prefix, store.key
            LIMIT {arg(op.limit)} OFFSET {arg(op.offset)}
        """
        if op.refresh_ttl:
            sql = f"""
                WITH search_results AS ({sql}),
                updated AS (
                    UPDATE store s
                    SET expires_at = NOW() + (s.ttl_minutes || ' minutes')::interval
                    FROM search_results sr
                    WHERE s.prefix = sr.prefix AND s.key = sr.key AND s.ttl_minutes IS NOT NULL
                )
                SELECT * FROM search_results
                ORDER BY updated_at DESC, prefix, key
            """
        return sql, arg.values

    def _list_sql(self, op: ListNamespacesOp) -> tuple[str, list[Any]]:
        """Upstream's namespace listing: distinct prefixes cut at ``max_depth``, sorted."""
        arg = _Args()
        depth = arg(op.max_depth)
        sql = rf"""
            SELECT DISTINCT ON (truncated_prefix) truncated_prefix, prefix
            FROM (
                SELECT prefix,
                    CASE WHEN {depth}::integer IS NOT NULL THEN
                        (SELECT STRING_AGG(part, '.' ORDER BY idx)
                         FROM (
                             SELECT part, ROW_NUMBER() OVER () AS idx
                             FROM UNNEST(REGEXP_SPLIT_TO_ARRAY(prefix, '\.')) AS part
                             LIMIT {depth}::integer
                         ) subquery)
                    ELSE prefix
                    END AS truncated_prefix
                FROM store
        """
        conditions: list[str] = []
        if self._omit_expired:
            conditions.append("(expires_at IS NULL OR expires_at > NOW())")
        for condition in op.match_conditions or ():
            if condition.match_type in ("prefix", "suffix") and condition.path:
                conditions.append(
                    f"prefix ~ {arg(_match_pattern(condition.path, condition.match_type))}"
                )
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += f") AS subquery ORDER BY truncated_prefix LIMIT {arg(op.limit)} OFFSET " \
               f"{arg(op.offset)}"
        return sql, arg.values

    # -- writes ------------------------------------------------------------------------------

    async def _put(self, ops: list[PutOp]) -> None:
        """Queue the puts (value None: delete) and return once their group committed."""
        rows: dict[tuple[str, str], tuple[str, float | None] | None] = {}
        for op in ops:
            key = (_text(op.namespace), str(op.key))
            if op.value is None:
                rows[key] = None
            else:
                ttl = None if op.ttl is None else float(op.ttl)
                rows[key] = (_dumps(dict(op.value)), ttl)
        puts = _Puts(asyncio.get_running_loop().create_future(), rows)
        if self._writer is None or self._writer.done():
            # an empty context: the writer serves every run, it must not log as the first one
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer",
                                               context=contextvars.Context())
        await self._queue.put(puts)  # waits while the queue is full: backpressure
        await puts.done

    async def _write_loop(self) -> None:
        """Take everything queued, commit it as one statement, resolve the callers; repeat."""
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_group and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                _fail(batch, StoreDatabaseUnavailable("the store writer stopped"))
                raise
            finally:
                for _ in batch:
                    queue.task_done()

    async def _commit(self, batch: list[_Puts]) -> None:
        try:
            async with self.pool.acquire(timeout=10) as conn:
                await conn.execute(GROUP_WRITE_SQL, *_group_params(batch))
        except Exception as exc:
            if is_outage(exc):
                _fail(batch, _unavailable(exc))
                return
            if len(batch) == 1:
                _fail(batch, _refused(exc) if pg_data_error(exc) else exc)
                return
            # one caller's bad value must not fail the group: commit each alone
            log.debug("store group commit failed (%s); committing its %d parts one by one",
                      exc, len(batch))
            for puts in batch:
                await self._commit([puts])
            return
        self.commits += 1
        self.committed_puts += len(batch)
        for puts in batch:
            if not puts.done.done():
                puts.done.set_result(None)


def store_attachment(name: str, graph: Any, store: GroupCommitStore | None) -> dict[str, Any]:
    """``{"store": store}`` for ``graph.copy(update=...)`` when the graph has no store of its
    own; a graph compiled with one keeps it, and that is logged (once per graph)."""
    if store is None:
        return {}
    own = getattr(graph, "store", None)
    if own is None:
        return {"store": store}
    log.warning(
        "graph %s was compiled with its own store (%s): its runs use that one, which lives in "
        "each worker process and is not shared between workers nor kept across restarts "
        "(unless it is a database store); compile it without a store to get graphwire's "
        "shared PostgreSQL store", name, type(own).__name__,
    )
    return {}


async def _migrate(conn: asyncpg.Connection) -> None:
    """Upstream's ``setup()``: the version table, then each migration after its version."""
    await conn.execute("CREATE TABLE IF NOT EXISTS store_migrations (v INTEGER PRIMARY KEY)")
    version = await conn.fetchval("SELECT v FROM store_migrations ORDER BY v DESC LIMIT 1")
    start = -1 if version is None else version
    for v, sql in enumerate(MIGRATIONS[start + 1:], start=start + 1):
        await conn.execute(sql)
        await conn.execute("INSERT INTO store_migrations (v) VALUES ($1)", v)


def _fail(batch: Sequence[_Puts], exc: BaseException) -> None:
    for puts in batch:
        if not puts.done.done():
            puts.done.set_exception(exc)
            puts.done.exception()  # retrieved: a caller cancelled meanwhile must not log it
