"""GroupCommitSaver: LangGraph's checkpointer on asyncpg, with group commits.

Every ``aput``/``aput_writes`` of every run in the process goes on one bounded queue. One writer
task takes whatever is queued, folds it into ONE multi-row statement (``unnest`` of arrays into
the three tables: one round trip, one implicit transaction) and resolves each caller's future
when that statement commits. So 64 runs in flight share a commit instead of paying ~3 round
trips each per step, and PostgreSQL plans and commits once per tick instead of once per row.

- ``aput`` returns only after its group committed, so ``durability="sync"`` (LangGraph awaits
  the put before the next step) still means "committed before the next step"; with ``async``
  LangGraph runs the put in the background and does not wait; ``exit`` puts once.
- Inside ``pipelined()`` (the runner wraps each run in it) an ``async``/``exit`` run's writes
  return once queued, not once committed: LangGraph chains each checkpoint's ``aput`` after the
  previous one, so a run of five checkpoints otherwise waits for five commits one after the
  other, though the queue already keeps their order. The run's ``settle()`` then waits for all
  of them before its result goes out; after one of its writes failed, its later ones are
  refused (never a checkpoint committed over a missing parent or blob), and its reads first
  wait for its queued writes (it reads what it wrote).
- No instance lock: reads use their own pooled connection, writes are ordered by the queue.
- The queue is bounded: when PostgreSQL falls behind, ``aput`` waits for room (backpressure)
  instead of growing memory without limit.
- The tables are ``langgraph-checkpoint-postgres``'s (same columns, same JSON, same blob
  encoding, same migrations table), so a deployment can switch savers either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
import orjson
from langchain_core.runnables import RunnableConfig
from langgraph._internal._constants import CONFIG_KEY_DURABILITY
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import TASKS, _DeltaSnapshot

from graphwire.processors.runner.failures import pg_data_error

log = logging.getLogger(__name__)

SHARED_TICK_S = 0.002
"""How long a group waits for more writes when the one before it was shared (see
``GroupCommitSaver``): under ``runs.wait`` load it cut PostgreSQL's CPU per run by a seventh."""

FRESH_THREAD = "__graphwire_fresh_thread__"
"""A ``configurable`` key: True when the caller knows the thread has no checkpoint yet, so the
root graph's opening ``aget_tuple`` can answer None without a round trip (see graphrun.py)."""

# langgraph-checkpoint-postgres's migrations, verbatim: the position is the version number kept
# in checkpoint_migrations, so either saver sees the other's tables as up to date.
MIGRATIONS = [
    """CREATE TABLE IF NOT EXISTS checkpoint_migrations (
    v INTEGER PRIMARY KEY
);""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    type TEXT,
    checkpoint JSONB NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}',
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);""",
    """CREATE TABLE IF NOT EXISTS checkpoint_blobs (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    type TEXT NOT NULL,
    blob BYTEA,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
);""",
    """CREATE TABLE IF NOT EXISTS checkpoint_writes (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    channel TEXT NOT NULL,
    type TEXT,
    blob BYTEA NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);""",
    "ALTER TABLE checkpoint_blobs ALTER COLUMN blob DROP not null;",
    "SELECT 1;",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS checkpoints_thread_id_idx ON checkpoints(thread_id);",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS checkpoint_blobs_thread_id_idx "
    "ON checkpoint_blobs(thread_id);",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS checkpoint_writes_thread_id_idx "
    "ON checkpoint_writes(thread_id);",
    "ALTER TABLE checkpoint_writes ADD COLUMN IF NOT EXISTS task_path TEXT NOT NULL DEFAULT '';",
]

SELECT_SQL = """
select
    thread_id, checkpoint, checkpoint_ns, checkpoint_id, parent_checkpoint_id, metadata,
    (
        select array_agg(array[bl.channel::bytea, bl.type::bytea, bl.blob])
        from jsonb_each_text(checkpoint -> 'channel_versions')
        inner join checkpoint_blobs bl
            on bl.thread_id = checkpoints.thread_id
            and bl.checkpoint_ns = checkpoints.checkpoint_ns
            and bl.channel = jsonb_each_text.key
            and bl.version = jsonb_each_text.value
    ) as channel_values,
    (
        select array_agg(array[cw.task_id::text::bytea, cw.channel::bytea, cw.type::bytea,
                               cw.blob, convert_to(cw.task_path, 'UTF8'), cw.idx::text::bytea])
        from checkpoint_writes cw
        where cw.thread_id = checkpoints.thread_id
            and cw.checkpoint_ns = checkpoints.checkpoint_ns
            and cw.checkpoint_id = checkpoints.checkpoint_id
    ) as pending_writes
from checkpoints """

SELECT_PENDING_SENDS_SQL = f"""
select checkpoint_id, array_agg(array[type::bytea, blob] order by task_path, task_id, idx) as sends
from checkpoint_writes
where thread_id = $1 and checkpoint_id = any($2::text[]) and channel = '{TASKS}'
group by checkpoint_id
"""

# One statement for a whole group: each CTE inserts its table's rows from parallel arrays. The
# ON CONFLICT clauses are langgraph-checkpoint-postgres's; rows are deduplicated per key before
# (``_Group``) because one INSERT ... DO UPDATE may not touch a row twice.
GROUP_WRITE_SQL = """
WITH blobs AS (
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])
    ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING
), saved AS (
    INSERT INTO checkpoints
        (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
    SELECT t, n, i, p, c::jsonb, m::jsonb
    FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
        AS u(t, n, i, p, c, m)
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
    DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
), replaced AS (
    INSERT INTO checkpoint_writes
        (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
    SELECT * FROM unnest($13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
                         $18::int[], $19::text[], $20::text[], $21::bytea[])
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
    DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob
), added AS (
    INSERT INTO checkpoint_writes
        (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
    SELECT * FROM unnest($22::text[], $23::text[], $24::text[], $25::text[], $26::text[],
                         $27::int[], $28::text[], $29::text[], $30::bytea[])
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO NOTHING
)
SELECT 1
"""

COPY_THREAD_SQL = (
    """INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
                                type, checkpoint, metadata)
    SELECT $2, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata
    FROM checkpoints WHERE thread_id = $1 ON CONFLICT DO NOTHING""",
    """INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT $2, checkpoint_ns, channel, version, type, blob
    FROM checkpoint_blobs WHERE thread_id = $1 ON CONFLICT DO NOTHING""",
    """INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path,
                                      idx, channel, type, blob)
    SELECT $2, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
    FROM checkpoint_writes WHERE thread_id = $1 ON CONFLICT DO NOTHING""",
)
"""``acopy_thread``: every checkpoint, blob and write of thread $1 again under thread $2 (the
whole parent chain, so delta channels rebuild on the copy)."""

DELETE_THREADS_SQL = (
    "DELETE FROM checkpoints WHERE thread_id = ANY($1::text[])",
    "DELETE FROM checkpoint_blobs WHERE thread_id = ANY($1::text[])",
    "DELETE FROM checkpoint_writes WHERE thread_id = ANY($1::text[])",
)

# What a lost or refused connection looks like from asyncpg: the server went away or cancelled
# the statement (AdminShutdown, QueryCanceled: OperatorInterventionError), ran out of
# connections, memory or disk (InsufficientResourcesError), the socket failed (OSError), the
# pool found no connection in time (TimeoutError), or the connection was closed under us.
# psycopg's OperationalError, which graphwire treated as an outage before, covers the same.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


def is_outage(exc: BaseException) -> bool:
    """A lost or refused connection, not a value PostgreSQL (or asyncpg) refused: asyncpg's
    client-side ``DataError`` is an ``InterfaceError`` too, and retrying it would loop."""
    return isinstance(exc, CONNECTION_ERRORS) and not pg_data_error(exc)


class CheckpointDatabaseUnavailable(Exception):
    """PostgreSQL for checkpoints could not be reached or dropped the connection."""


class CheckpointDataRefused(Exception):
    """PostgreSQL answered, and refused a value of this run (a NUL in an id, a number out of
    range, a key too long for an index): the run's data is bad, the database is fine."""

    retriable = False  # the same value is refused on every retry


def _refused(exc: BaseException) -> CheckpointDataRefused:
    refused = CheckpointDataRefused(
        f"PostgreSQL refused a value of this run ({type(exc).__name__}: {exc})"
    )
    refused.__cause__ = exc
    return refused


def _unavailable(exc: BaseException) -> CheckpointDatabaseUnavailable:
    return CheckpointDatabaseUnavailable(
        f"PostgreSQL for checkpoints is unavailable ({type(exc).__name__}: {exc})"
    )


def _dumps(value: Any) -> str:
    """JSON for a jsonb column; orjson's fast path, stdlib for what it refuses (big ints)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Decode jsonb into Python values (asyncpg hands out text by default)."""
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=_loads, schema="pg_catalog")


Row = tuple[Any, ...]


class Pipelined:
    """One run's checkpoint writes that returned before their commit (see ``pipelined``)."""

    def __init__(self) -> None:
        self.pending: set[asyncio.Future[None]] = set()
        self.failed: BaseException | None = None

    def add(self, done: asyncio.Future[None]) -> None:
        self.pending.add(done)
        done.add_done_callback(self._settled)

    def _settled(self, done: asyncio.Future[None]) -> None:
        self.pending.discard(done)
        if not done.cancelled() and done.exception() is not None and self.failed is None:
            self.failed = done.exception()

    async def wait(self) -> None:
        """Until every write queued so far committed or failed."""
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)

    async def settle(self) -> BaseException | None:
        """Wait for the run's writes; the first failure among them, if any."""
        await self.wait()
        return self.failed


_PIPELINED: contextvars.ContextVar[Pipelined | None] = contextvars.ContextVar(
    "graphwire_pipelined_checkpoints", default=None)


@dataclass
class _Write:
    """One caller's rows; ``done`` resolves when the group holding them commits."""

    done: asyncio.Future[None]
    blobs: list[Row] = field(default_factory=list)
    checkpoints: list[Row] = field(default_factory=list)
    writes: list[tuple[Row, bool]] = field(default_factory=list)  # (row, replace on conflict)
    run: Pipelined | None = None  # set: the caller did not wait for the commit
    thread: str = ""  # whose rows (groups of several threads' writes are shared)


@dataclass
class _Exec:
    """Statements run in the writer, in queue order between groups: deletes and copies."""

    done: asyncio.Future[None]
    statements: list[tuple[str, tuple[Any, ...]]]


class _Group:
    """Consecutive writes merged into the parameters of one ``GROUP_WRITE_SQL``."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[Any, ...], Row] = {}
        self.checkpoints: dict[tuple[Any, ...], Row] = {}
        self.writes: dict[tuple[Any, ...], tuple[Row, bool]] = {}

    def add(self, op: _Write) -> None:
        for row in op.blobs:  # DO NOTHING: the first one stays
            self.blobs.setdefault(row[:4], row)
        for row in op.checkpoints:  # DO UPDATE: the last one wins
            self.checkpoints[row[:3]] = row
        for row, replace in op.writes:
            # Upstream runs these one statement at a time: a replacing write wins over any
            # earlier one, an adding write (DO NOTHING) only fills an empty key.
            key = (row[0], row[1], row[2], row[3], row[5])
            if replace or key not in self.writes:
                self.writes[key] = (row, replace)

    def params(self) -> list[list[Any]]:
        replaced = [row for row, replace in self.writes.values() if replace]
        added = [row for row, replace in self.writes.values() if not replace]
        return [
            *_columns(list(self.blobs.values()), 6),
            *_columns(list(self.checkpoints.values()), 6),
            *_columns(replaced, 9),
            *_columns(added, 9),
        ]


def _columns(rows: list[Row], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


class GroupCommitSaver(BaseCheckpointSaver[str]):
    """An async LangGraph checkpointer on an asyncpg pool that group-commits writes.

    ``pool`` needs ``init=init_connection`` (jsonb codec). ``max_queued`` bounds the writes
    waiting for a commit (callers wait beyond it), ``max_group`` the writes in one statement,
    ``tick_s`` a wait for more writes to join a group when the previous group was shared
    (writes of several threads: others are writing too), so under load groups grow and
    PostgreSQL and the worker spend less per write, while a write that comes alone waits for
    nothing (0: never wait; a group is whatever queued while the previous commit ran).
    ``inline=False`` stores even primitive channel values as (encrypted)
    blobs, never as plain JSON in the checkpoint row.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        serde: SerializerProtocol | None = None,
        max_queued: int = 4096,
        max_group: int = 1024,
        tick_s: float = SHARED_TICK_S,
        inline: bool = True,
    ) -> None:
        super().__init__(serde=serde)
        self.pool = pool
        self._inline = inline
        self._queue: asyncio.Queue[_Write | _Exec] = asyncio.Queue(maxsize=max_queued)
        self._max_group = max_group
        self._tick_s = tick_s
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0  # group statements sent (for measurements)
        self.committed_ops = 0  # aput/aput_writes/delete calls they carried
        self.reads = 0  # read queries sent
        self.skipped_reads = 0  # aget_tuple answered None for a FRESH_THREAD config

    # -- setup -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[Pipelined]:
        """Within it (and the tasks it starts), the writes of a run whose durability is not
        ``sync`` return once queued; ``settle()`` the result before the run's end counts."""
        run = Pipelined()
        token = _PIPELINED.set(run)
        try:
            yield run
        finally:
            _PIPELINED.reset(token)

    async def setup(self) -> None:
        """Create the tables and run the migrations upstream's saver would run."""
        async with self.pool.acquire() as conn:
            await conn.execute(MIGRATIONS[0])
            version = await conn.fetchval("SELECT max(v) FROM checkpoint_migrations")
            start = -1 if version is None else version
            for v in range(start + 1, len(MIGRATIONS)):
                # simple protocol, outside a transaction: CREATE INDEX CONCURRENTLY needs that
                await conn.execute(MIGRATIONS[v])
                await conn.execute("INSERT INTO checkpoint_migrations (v) VALUES ($1)", v)

    async def aclose(self) -> None:
        """Commit what is queued, then stop the writer."""
        if self._writer is None:
            return
        await self._queue.join()
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        self._writer = None

    # -- writes ------------------------------------------------------------------------------

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Save a checkpoint; returns once the group holding it committed (once queued when
        pipelined)."""
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        parent_id = configurable.get("checkpoint_id")
        copy = checkpoint.copy()
        values = copy["channel_values"] = dict(copy["channel_values"])
        # Like upstream: primitives stay inline in the checkpoint's JSON, the rest are blobs.
        blob_values: dict[str, Any] = {}
        for k, v in checkpoint["channel_values"].items():
            if isinstance(v, _DeltaSnapshot):
                blob_values[k] = values.pop(k)
                values[k] = True
            elif self._inline and (v is None or isinstance(v, int | float | bool)
                                   or (isinstance(v, str) and "\x00" not in v)):
                pass  # with inline=False (encryption on) a str must not sit in plain JSON
                # (nor one with a NUL anywhere: jsonb refuses U+0000, the blob keeps it exactly)
            else:
                blob_values[k] = values.pop(k)
        op = _Write(asyncio.get_running_loop().create_future(), thread=thread_id)
        for channel, version in new_versions.items():
            if channel in blob_values:
                type_, blob = self.serde.dumps_typed(blob_values[channel])
                op.blobs.append((thread_id, checkpoint_ns, channel, str(version), type_, blob))
        op.checkpoints.append((
            thread_id, checkpoint_ns, checkpoint["id"], parent_id, _dumps(copy),
            _dumps(get_serializable_checkpoint_metadata(config, metadata)),
        ))
        await self._submit(op, configurable)
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                                 "checkpoint_id": checkpoint["id"]}}

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Save a task's writes; returns once the group holding them committed (once queued
        when pipelined)."""
        configurable = config["configurable"]
        replace = all(w[0] in WRITES_IDX_MAP for w in writes)
        op = _Write(asyncio.get_running_loop().create_future(),
                    thread=configurable["thread_id"])
        for idx, (channel, value) in enumerate(writes):
            type_, blob = self.serde.dumps_typed(value)
            row = (configurable["thread_id"], configurable.get("checkpoint_ns", ""),
                   configurable["checkpoint_id"], task_id, task_path,
                   WRITES_IDX_MAP.get(channel, idx), channel, type_, blob)
            op.writes.append((row, replace))
        await self._submit(op, configurable)

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread's checkpoints, blobs and writes (after what is queued before)."""
        await self.adelete_threads([str(thread_id)])

    async def adelete_threads(self, thread_ids: Sequence[str]) -> None:
        """Delete several threads in one transaction, ordered after earlier queued writes."""
        ids = [str(t) for t in thread_ids]
        op = _Exec(asyncio.get_running_loop().create_future(),
                     [(sql, (ids,)) for sql in DELETE_THREADS_SQL])
        await self._submit(op)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a thread's checkpoints, blobs and writes to another thread id, in one transaction
        ordered after the writes queued before it (what the source thread has is copied)."""
        args = (str(source_thread_id), str(target_thread_id))
        op = _Exec(asyncio.get_running_loop().create_future(),
                     [(sql, args) for sql in COPY_THREAD_SQL])
        await self._submit(op)

    async def _submit(self, op: _Write | _Exec, configurable: dict[str, Any] | None = None,
                      ) -> None:
        if self._writer is None or self._writer.done():
            # an empty context: the writer serves every run, it must not log as the first one
            self._writer = asyncio.create_task(
                self._write_loop(), name="checkpoint-writer", context=contextvars.Context()
            )
        run = _PIPELINED.get()
        if (run is not None and isinstance(op, _Write) and configurable is not None
                and configurable.get(CONFIG_KEY_DURABILITY) != "sync"):
            if run.failed is not None:  # nothing after a write that failed
                raise run.failed
            op.run = run
            run.add(op.done)
            try:
                await self._queue.put(op)  # waits while the queue is full: backpressure
            except BaseException:
                op.done.cancel()  # never queued: the run must not wait for it
                raise
            return
        await self._queue.put(op)  # waits while the queue is full: backpressure
        await op.done

    async def _write_loop(self) -> None:
        """Take everything queued, commit it as one group, resolve the callers; repeat."""
        queue = self._queue
        shared = False
        while True:
            first = await queue.get()
            if self._tick_s and shared:
                await asyncio.sleep(self._tick_s)  # let more runs join this group
            batch = [first]
            while len(batch) < self._max_group and not queue.empty():
                batch.append(queue.get_nowait())
            shared = len({op.thread for op in batch if isinstance(op, _Write)}) > 1
            try:
                await self._commit(_after_failures(batch))
            except asyncio.CancelledError:
                _fail(batch, CheckpointDatabaseUnavailable("the checkpoint writer stopped"))
                raise
            finally:
                for _ in batch:
                    queue.task_done()

    async def _commit(self, batch: list[_Write | _Exec]) -> None:
        if not batch:
            return
        try:
            await self._run_batch(batch)
        except Exception as exc:
            if is_outage(exc):
                _fail(batch, _unavailable(exc))
                return
            if len(batch) == 1:
                _fail(batch, _refused(exc) if pg_data_error(exc) else exc)
                return
            # One caller's bad row (say, a NUL in a string) must not fail the whole group:
            # commit each alone so only its own caller sees the error.
            log.debug("group commit failed (%s); committing its %d parts one by one",
                      exc, len(batch))
            for op in batch:
                if kept := _after_failures([op]):
                    await self._commit(kept)
            return
        self.commits += 1
        self.committed_ops += len(batch)
        for op in batch:
            if not op.done.done():
                op.done.set_result(None)

    async def _run_batch(self, batch: list[_Write | _Exec]) -> None:
        # Writes merge into one statement; a delete keeps its place between them.
        steps: list[_Group | _Exec] = []
        for op in batch:
            if isinstance(op, _Exec):
                steps.append(op)
                continue
            if not steps or not isinstance(steps[-1], _Group):
                steps.append(_Group())
            cast(_Group, steps[-1]).add(op)
        async with self.pool.acquire(timeout=10) as conn:
            if len(steps) == 1 and isinstance(steps[0], _Group):
                # a single statement is its own transaction: no BEGIN/COMMIT round trips
                await conn.execute(GROUP_WRITE_SQL, *steps[0].params())
                return
            async with conn.transaction():
                for step in steps:
                    if isinstance(step, _Group):
                        await conn.execute(GROUP_WRITE_SQL, *step.params())
                    else:
                        for sql, args in step.statements:
                            await conn.execute(sql, *args)

    # -- reads -------------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The thread's checkpoint named by ``checkpoint_id``, else its latest one."""
        configurable = config["configurable"]
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if configurable.get(FRESH_THREAD) and not checkpoint_ns and not checkpoint_id:
            self.skipped_reads += 1
            return None  # the caller vouches that nothing was written on this thread yet
        thread_id = configurable["thread_id"]
        await self._own_writes()
        if checkpoint_id:
            args: tuple[Any, ...] = (thread_id, checkpoint_ns, checkpoint_id)
            where = "WHERE thread_id = $1 AND checkpoint_ns = $2 AND checkpoint_id = $3"
        else:
            args = (thread_id, checkpoint_ns)
            where = ("WHERE thread_id = $1 AND checkpoint_ns = $2 "
                     "ORDER BY checkpoint_id DESC LIMIT 1")
        rows = await self._fetch(SELECT_SQL + where, *args)
        if not rows:
            return None
        return self._tuple(rows[0])

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints matching ``config``/``filter``/``before``, newest first."""
        wheres: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if config:
            wheres.append(f"thread_id = {arg(config['configurable']['thread_id'])}")
            checkpoint_ns = config["configurable"].get("checkpoint_ns")
            if checkpoint_ns is not None:
                wheres.append(f"checkpoint_ns = {arg(checkpoint_ns)}")
            if checkpoint_id := get_checkpoint_id(config):
                wheres.append(f"checkpoint_id = {arg(checkpoint_id)}")
        if filter:
            wheres.append(f"metadata @> {arg(filter)}::jsonb")
        if before is not None:
            wheres.append(f"checkpoint_id < {arg(get_checkpoint_id(before))}")
        query = SELECT_SQL + ("WHERE " + " AND ".join(wheres) if wheres else "")
        query += " ORDER BY checkpoint_id DESC"
        if limit is not None:
            query += f" LIMIT {arg(int(limit))}"
        await self._own_writes()
        for row in await self._fetch(query, *args):
            yield self._tuple(row)

    @staticmethod
    async def _own_writes() -> None:
        """A pipelined run reads what it wrote: its queued writes commit first."""
        run = _PIPELINED.get()
        if run is not None:
            await run.wait()

    async def _fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        """Rows as dicts, with pending sends of pre-v4 checkpoints migrated like upstream."""
        try:
            async with self.pool.acquire(timeout=10) as conn:
                self.reads += 1
                rows = [dict(r) for r in await conn.fetch(query, *args)]
                old = [r for r in rows if r["checkpoint"]["v"] < 4 and r["parent_checkpoint_id"]]
                if old:
                    by_parent: dict[str, list[dict[str, Any]]] = defaultdict(list)
                    for r in old:
                        by_parent[r["parent_checkpoint_id"]].append(r)
                    sends = await conn.fetch(
                        SELECT_PENDING_SENDS_SQL, old[0]["thread_id"], list(by_parent)
                    )
                    for s in sends:
                        for r in by_parent[s["checkpoint_id"]]:
                            self._migrate_pending_sends(s["sends"], r)
        except Exception as exc:
            if is_outage(exc):
                raise _unavailable(exc) from exc
            if pg_data_error(exc):  # a NUL in a thread_id or checkpoint_ns, say
                raise _refused(exc) from exc
            raise
        return rows

    def _migrate_pending_sends(self, sends: list[list[bytes]], row: dict[str, Any]) -> None:
        if not sends:
            return
        values = row["channel_values"] = list(row["channel_values"] or [])
        enc, blob = self.serde.dumps_typed(
            [self.serde.loads_typed((c.decode(), b)) for c, b in sends]
        )
        values.append([TASKS.encode(), enc.encode(), blob])
        versions = row["checkpoint"]["channel_versions"]
        versions[TASKS] = max(versions.values()) if versions else self.get_next_version(None, None)

    def _tuple(self, row: dict[str, Any]) -> CheckpointTuple:
        thread_id, ns = row["thread_id"], row["checkpoint_ns"]
        checkpoint = row["checkpoint"]
        blobs = {
            k.decode(): self.serde.loads_typed((t.decode(), v))
            for k, t, v in row["channel_values"] or []
            if t.decode() != "empty"
        }
        writes = [
            (tid.decode(), channel.decode(), self.serde.loads_typed((t.decode(), v)))
            for tid, channel, t, v, _, _ in sorted(
                row["pending_writes"] or [],
                key=lambda w: writes_sort_key(w[4].decode(), w[0].decode(), int(w[5])),
            )
        ]
        parent = row["parent_checkpoint_id"]
        return CheckpointTuple(
            {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                              "checkpoint_id": row["checkpoint_id"]}},
            cast(Checkpoint, {**checkpoint, "channel_values": {
                **(checkpoint.get("channel_values") or {}), **blobs}}),
            row["metadata"],
            ({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns,
                               "checkpoint_id": parent}} if parent else None),
            writes,
        )

    # -- the rest of the contract ------------------------------------------------------------

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Upstream's version format (``<counter:032>.<random:016>``), so both read alike."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Not supported: this saver is async only."""
        raise NotImplementedError(_SYNC)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Not supported: this saver is async only."""
        raise NotImplementedError(_SYNC)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Not supported: this saver is async only."""
        raise NotImplementedError(_SYNC)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Not supported: this saver is async only."""
        raise NotImplementedError(_SYNC)

    def delete_thread(self, thread_id: str) -> None:
        """Not supported: this saver is async only."""
        raise NotImplementedError(_SYNC)


# LangGraph asks inspect.signature(saver.aput_writes) whether it takes task_path when every run
# starts (put_writes_accepts_task_path): 6% of a worker running 0.2 s async steps (py-spy).
# inspect returns a function's __signature__ as it is, so it is computed once, here.
GroupCommitSaver.aput_writes.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    GroupCommitSaver.aput_writes
)

_SYNC = ("GroupCommitSaver is async only: use the graph's async API (ainvoke, astream, "
         "aget_state)")


def _after_failures(batch: list[_Write | _Exec]) -> list[_Write | _Exec]:
    """The batch without the pipelined writes of runs one of whose writes already failed
    (each fails with that run's failure)."""
    kept: list[_Write | _Exec] = []
    for op in batch:
        run = op.run if isinstance(op, _Write) else None
        if run is not None and run.failed is not None:
            _fail([op], run.failed)
        else:
            kept.append(op)
    return kept


def _fail(batch: Sequence[_Write | _Exec], exc: BaseException) -> None:
    for op in batch:
        run = op.run if isinstance(op, _Write) else None
        if run is not None and run.failed is None:
            run.failed = exc  # at once: the run's next write, maybe in this batch, is refused
        if not op.done.done():
            op.done.set_exception(exc)
            op.done.exception()  # retrieved: a caller cancelled meanwhile must not log it
