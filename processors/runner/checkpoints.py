"""Checkpoints: the group-commit PostgreSQL checkpointer (pgsaver.py) over an asyncpg pool.

With checkpoints, a request redelivered after a crash resumes from its last finished step:
nodes that completed (and the LLM calls in them) are not paid for twice. The thread id is the
request's ``thread_id``, else its ``request_id``.

The long-term memory store (pgstore.py, ``runtime.store``) lives here too: the same database,
schema, pool, migration lock and lifecycle, so it needs no setting of its own beyond
``GRAPHWIRE_STORE`` and is there exactly when the checkpoints are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Self

import asyncpg
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

from graphwire.processors.pgsession import keep_session
from graphwire.processors.runner.effectjournal import DELETE_SQL as DELETE_EFFECTS_SQL
from graphwire.processors.runner.effectjournal import TABLE_SQL as EFFECTS_TABLE_SQL
from graphwire.processors.runner.effectjournal import PgEffectJournal
from graphwire.processors.runner.pgsaver import GroupCommitSaver, init_connection
from graphwire.processors.runner.pgstore import GroupCommitStore
from graphwire.topics.errors import DependencyUnavailable, GraphwireError

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x67_77_63_6B  # "gwck": graphwire checkpoint migrations


class CheckpointStore:
    """Owns the pool, the ``GroupCommitSaver`` and (``store=True``) the ``GroupCommitStore``;
    ``start()`` creates their tables."""

    def __init__(
        self,
        database_url: str,
        *,
        schema: str | None = None,
        pool_size: int = 20,
        encryption_key: str | None = None,
        store: bool = False,
        store_sweep_interval_s: float = 300.0,
    ) -> None:
        self._url = database_url
        self._schema = schema
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self.saver: GroupCommitSaver | None = None
        self._with_store = store
        self._sweep_interval_s = store_sweep_interval_s
        self.store: GroupCommitStore | None = None
        """LangGraph's long-term memory store (``runtime.store``), when asked for."""
        self.effects: PgEffectJournal | None = None
        """The journal of ``once`` effects, deleted with the thread's checkpoints."""
        # With a key, values and writes are stored AES-encrypted (upstream's EncryptedSerializer,
        # so AsyncPostgresSaver with the same serializer reads them); without one, as LangGraph
        # stores them. Unencrypted rows written before a key was set still read back.
        self.serde: SerializerProtocol | None = None
        if encryption_key is not None:
            raw = encryption_key.encode()
            if len(raw) not in (16, 24, 32):
                # names the length only: the key itself never reaches a log
                raise GraphwireError(
                    f"GRAPHWIRE_CHECKPOINT_ENCRYPTION_KEY is {len(raw)} bytes; an AES key must "
                    "be 16, 24 or 32 bytes (e.g. the output of `openssl rand -hex 16`)"
                )
            try:
                self.serde = EncryptedSerializer.from_pycryptodome_aes(key=raw)
            except ImportError:
                raise GraphwireError(
                    "GRAPHWIRE_CHECKPOINT_ENCRYPTION_KEY needs pycryptodome: install "
                    "graphwire[encryption] (or pip install pycryptodome)"
                ) from None
        self.forget_interval_s = 1.0
        self._forget: set[str] = set()
        self._forgetter: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the pool, create the schema (if named) and the checkpoint tables."""
        if self._pool is not None:
            return
        server_settings = {"statement_timeout": "30000"}
        if self._schema:
            server_settings["search_path"] = self._schema
        try:
            # timeout: a server that does not answer must not hang the start; command_timeout:
            # nor a run or the shutdown once started
            pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self._pool_size, init=init_connection,
                timeout=5, command_timeout=30, server_settings=server_settings,
                reset=keep_session,  # no reset query per release: a round trip per group
            )
        except Exception as exc:
            raise DependencyUnavailable(
                f"PostgreSQL for checkpoints does not answer ({type(exc).__name__}: {exc}); "
                "check GRAPHWIRE_DATABASE_URL or set GRAPHWIRE_CHECKPOINTS=false"
            ) from exc
        saver = GroupCommitSaver(pool, serde=self.serde, inline=self.serde is None)
        store = GroupCommitStore(pool) if self._with_store else None
        try:
            # Replicas start together: one migrates at a time (session advisory lock). Try and
            # poll rather than wait in the lock: a session waiting inside a query would block
            # the migration's CREATE INDEX CONCURRENTLY, which waits for every open query.
            async with pool.acquire() as conn:
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK):
                    await asyncio.sleep(0.2)
                try:
                    if self._schema:
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                    await saver.setup()
                    await conn.execute(EFFECTS_TABLE_SQL)
                    if store is not None:
                        await store.setup(conn)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        except Exception as exc:
            await pool.close()
            raise DependencyUnavailable(
                f"could not create the checkpoint tables ({type(exc).__name__}: {exc}); "
                "check that the GRAPHWIRE_DATABASE_URL user may create tables"
            ) from exc
        self._pool, self.saver, self.store = pool, saver, store
        if store is not None:
            store.start_ttl_sweeper(self._sweep_interval_s)
        cipher = self.serde.cipher if isinstance(self.serde, EncryptedSerializer) else None
        self.effects = PgEffectJournal(pool, cipher=cipher)

    async def stop(self) -> None:
        """Delete what is waiting to be forgotten, close the pool. Idempotent."""
        if self._forgetter is not None:
            self._forgetter.cancel()
            await asyncio.gather(self._forgetter, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush_forgotten(), timeout=10)
        if self.saver is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.saver.aclose(), timeout=10)
        if self.store is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.store.aclose(), timeout=10)
        if self.effects is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.effects.aclose(), timeout=10)
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=5)
            except TimeoutError:
                self._pool.terminate()
            self._pool, self.saver, self.effects, self.store = None, None, None, None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def ping(self) -> None:
        """Raise ``DependencyUnavailable`` unless PostgreSQL answers."""
        assert self._pool is not None
        try:
            async with self._pool.acquire(timeout=2) as conn:
                await conn.execute("SELECT 1", timeout=2)
        except Exception as exc:
            raise DependencyUnavailable(f"PostgreSQL does not answer ({exc})") from exc

    def forget_later(self, thread_id: str) -> None:
        """Delete a finished stateless run's checkpoints in the next batch (about a second).

        Batching keeps a DELETE per table per second off each run's path (measured: +20% runs/s
        on ``slow``). A crash can leave a batch behind: ``graphwire checkpoints prune`` removes
        what is older than the retention.
        """
        self._forget.add(thread_id)
        if self._forgetter is None or self._forgetter.done():
            self._forgetter = asyncio.create_task(self._forget_soon())

    async def _forget_soon(self) -> None:
        await asyncio.sleep(self.forget_interval_s)
        await self.flush_forgotten()

    async def flush_forgotten(self) -> None:
        """Delete the checkpoints of every thread handed to ``forget_later`` so far."""
        if not self._forget or self._pool is None:
            return
        batch, self._forget = list(self._forget), set()
        try:
            async with self._pool.acquire(timeout=5) as conn, conn.transaction():
                for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
                    await conn.execute(f"DELETE FROM {table} WHERE thread_id = ANY($1)", batch)
                await conn.execute(DELETE_EFFECTS_SQL, batch)
        except Exception as exc:  # results are out; leftovers only cost space until pruned
            log.warning("could not delete checkpoints of %d finished runs: %s", len(batch), exc)

    async def prune(self, older_than_s: float) -> int:
        """Delete every thread whose newest checkpoint is older than ``older_than_s``, with its
        effect journal (and journal rows that older whose thread has no checkpoint left)."""
        assert self._pool is not None
        cutoff_sql = """
            SELECT thread_id FROM checkpoints
            GROUP BY thread_id
            HAVING max((checkpoint->>'ts')::timestamptz) < now() - make_interval(secs => $1)
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(cutoff_sql, float(older_than_s))
            threads = [row["thread_id"] for row in rows]
            for table in ("checkpoint_writes", "checkpoint_blobs", "checkpoints"):
                await conn.execute(f"DELETE FROM {table} WHERE thread_id = ANY($1)", threads)
            await conn.execute(DELETE_EFFECTS_SQL, threads)
            await conn.execute(
                "DELETE FROM graphwire_effects e WHERE started_at < now() - make_interval(secs "
                "=> $1) AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = "
                "e.thread_id)", float(older_than_s))
        return len(threads)
