"""PgEffectJournal: the effect journal behind ``once`` (graphs/effects.py), in PostgreSQL.

One row per effect key in ``graphwire_effects``, next to the checkpoint tables (same pool, same
schema) and deleted with them (``CheckpointStore``): a thread's journal lives exactly as long
as the checkpoints that would re-run its nodes.

Writes are group commits, as in ``GroupCommitSaver``: every run's ``begin`` (intent) and
``finish`` (outcome) go on one queue; a writer task folds what is queued into ONE statement
(data-modifying CTEs over ``unnest`` arrays: one round trip, one implicit transaction) and
answers each caller when it commits. A separate queue from the saver's: ``begin`` returns rows
(what an earlier execution recorded), and the saver's conformance-tested writer stays as it is.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from langgraph.checkpoint.serde.base import CipherProtocol

from graphwire.graphs.effects import EffectIntent, EffectRecord
from graphwire.processors.runner.pgsaver import _unavailable, is_outage
from graphwire.topics.errors import GraphwireError

log = logging.getLogger(__name__)

TABLE_SQL = """
CREATE TABLE IF NOT EXISTS graphwire_effects (
    key         text PRIMARY KEY,
    thread_id   text NOT NULL,
    request_id  text NOT NULL,           -- the request whose run started it last
    name        text NOT NULL,
    node        text NOT NULL,
    status      text NOT NULL DEFAULT 'pending',  -- pending | done | failed
    calls       integer NOT NULL DEFAULT 1,       -- times started (in-doubt retries, failures)
    result      text,                 -- the JSON result as orjson wrote it (jsonb refuses the
                                      -- escaped NUL character), or with an encryption key:
    sealed      bytea,                -- the result's JSON encrypted by ``cipher``
    cipher      text,
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS graphwire_effects_thread ON graphwire_effects (thread_id);
"""

# $1-$5 the outcomes, $6-$11 the intents. Every CTE runs to completion whether read or not;
# the final SELECT reads the snapshot from before the statement: a fresh key shows no row, a
# bumped one its old calls (``again`` has the new).
GROUP_SQL = """
WITH finished AS (
    UPDATE graphwire_effects e
    SET status = CASE WHEN u.error IS NULL THEN 'done' ELSE 'failed' END,
        result = u.result, sealed = u.sealed, cipher = u.cipher, error = u.error,
        finished_at = now()
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])
        AS u(key, result, error, sealed, cipher)
    WHERE e.key = u.key
), input AS (
    SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::bool[])
        AS u(key, thread_id, request_id, name, node, retry)
), fresh AS (
    INSERT INTO graphwire_effects (key, thread_id, request_id, name, node)
    SELECT key, thread_id, request_id, name, node FROM input
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), again AS (
    UPDATE graphwire_effects e
    SET calls = e.calls + 1, status = 'pending', request_id = i.request_id, error = NULL,
        started_at = now(), finished_at = NULL
    FROM input i
    WHERE e.key = i.key AND (e.status = 'failed' OR (e.status = 'pending' AND i.retry))
    RETURNING e.key, e.calls
)
SELECT i.key, f.key IS NOT NULL AS fresh, a.calls AS again_calls, e.status, e.calls,
       e.result, e.sealed, e.cipher
FROM input i
LEFT JOIN fresh f ON f.key = i.key
LEFT JOIN again a ON a.key = i.key
LEFT JOIN graphwire_effects e ON e.key = i.key
"""

DELETE_SQL = "DELETE FROM graphwire_effects WHERE thread_id = ANY($1)"


_Outcome = tuple[str, str | None, str | None, bytes | None, str | None]
"""key, result JSON (plain), error, result JSON (sealed), cipher"""


@dataclass(slots=True)
class _Op:
    done: asyncio.Future[Any]
    intent: EffectIntent | None = None
    outcome: _Outcome | None = None


@dataclass(slots=True)
class _Group:
    finishes: list[_Outcome] = field(default_factory=list)
    begins: list[_Op] = field(default_factory=list)

    def params(self) -> list[list[Any]]:
        intents = [op.intent for op in self.begins if op.intent is not None]
        return [
            [f[0] for f in self.finishes], [f[1] for f in self.finishes],
            [f[2] for f in self.finishes], [f[3] for f in self.finishes],
            [f[4] for f in self.finishes],
            [i.key for i in intents], [i.thread_id for i in intents],
            [i.request_id for i in intents], [i.name for i in intents],
            [i.node for i in intents], [i.retry_in_doubt for i in intents],
        ]


class PgEffectJournal:
    """The ``EffectJournal`` of a worker; ``aclose()`` commits what is queued.

    With ``cipher`` (the checkpoints' encryption key) results are stored encrypted, as the
    checkpoints are."""

    def __init__(
        self, pool: asyncpg.Pool, *, cipher: CipherProtocol | None = None, max_group: int = 512
    ) -> None:
        self.pool = pool
        self._cipher = cipher
        self._queue: asyncio.Queue[_Op] = asyncio.Queue(maxsize=4 * max_group)
        self._max_group = max_group
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0
        """Statements committed (each one group); with ``committed_ops`` the grouping ratio."""
        self.committed_ops = 0

    async def begin(self, intent: EffectIntent) -> EffectRecord:
        """Record the intent durably, or return what an earlier execution recorded."""
        op = _Op(asyncio.get_running_loop().create_future(), intent=intent)
        row = await self._submit(op)
        if row["fresh"]:
            return EffectRecord("call", 1)
        if row["again_calls"] is not None:
            return EffectRecord("call", int(row["again_calls"]))
        if row["status"] == "done":
            return EffectRecord("done", int(row["calls"]), self._result(row))
        # pending without retry_in_doubt; or no row at all: another transaction (a worker
        # whose lease was taken over) holds the key uncommitted, so this one is in doubt too
        return EffectRecord("in_doubt", int(row["calls"] or 1))

    async def finish(self, key: str, result: bytes | None, error: str | None) -> None:
        """Record the outcome; returns once committed."""
        text, sealed, cipher = None, None, None
        if result is not None and self._cipher is not None:
            cipher, sealed = self._cipher.encrypt(result)
        elif result is not None:
            text = result.decode()
        op = _Op(asyncio.get_running_loop().create_future(),
                 outcome=(key, text, error, sealed, cipher))
        await self._submit(op)

    def _result(self, row: Any) -> Any:
        if row["sealed"] is not None:
            if self._cipher is None:
                raise GraphwireError(
                    "an effect result in the journal is encrypted: set the same "
                    "GRAPHWIRE_CHECKPOINT_ENCRYPTION_KEY as the worker that recorded it"
                )
            return orjson.loads(self._cipher.decrypt(row["cipher"], row["sealed"]))
        return orjson.loads(row["result"]) if row["result"] is not None else None

    async def aclose(self) -> None:
        """Commit what is queued, then stop the writer. Idempotent."""
        if self._writer is None:
            return
        await self._queue.join()
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        self._writer = None

    async def _submit(self, op: _Op) -> Any:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(
                self._write_loop(), name="effect-journal-writer", context=contextvars.Context()
            )
        await self._queue.put(op)  # waits while the queue is full: backpressure
        return await op.done

    async def _write_loop(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_group and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                _fail(batch, _unavailable(RuntimeError("the effect journal writer stopped")))
                raise
            finally:
                for _ in batch:
                    queue.task_done()

    async def _commit(self, batch: list[_Op]) -> None:
        group = _Group()
        for op in batch:
            if op.outcome is not None:
                group.finishes.append(op.outcome)
            else:
                group.begins.append(op)
        try:
            async with self.pool.acquire(timeout=10) as conn:
                rows = await conn.fetch(GROUP_SQL, *group.params())
        except Exception as exc:
            if is_outage(exc):
                _fail(batch, _unavailable(exc))
                return
            if len(batch) == 1:
                _fail(batch, exc)
                return
            log.debug("effect group failed (%s); committing its %d parts one by one", exc,
                      len(batch))
            for op in batch:
                await self._commit([op])
            return
        self.commits += 1
        self.committed_ops += len(batch)
        by_key = {row["key"]: row for row in rows}
        for op in batch:
            if op.done.done():
                continue
            op.done.set_result(by_key[op.intent.key] if op.intent is not None else None)


def _fail(batch: list[_Op], exc: BaseException) -> None:
    for op in batch:
        if not op.done.done():
            op.done.set_exception(exc)
            op.done.exception()  # retrieved: a caller cancelled meanwhile must not log it
