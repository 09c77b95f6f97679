"""A configured audit schema is the only place graphwire reads and writes: never ``public``.

The session fixture ``_graphwire_tables_in_public`` (tests/conftest.py) leaves migrated audit
tables and LangGraph's checkpoint tables in ``public`` of the test database, as any earlier use
of graphwire there would; each test here names a schema that is not migrated (or not there).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from graphwire.processors.audit.db import (
    connect,
    migrate,
    migrations,
    require_migrated,
    schema_version,
)
from graphwire.processors.audit.rows import Record, to_row
from graphwire.processors.audit.writer import AuditWriter
from graphwire.processors.cli.doctor import Check, store_checks
from graphwire.processors.gateway.app import Gateway
from graphwire.processors.gateway.errors import NotFound
from graphwire.processors.settings import Settings
from graphwire.topics.errors import GraphwireError
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.gateway_helpers import gateway_settings
from tests.test_audit import cli

MISSING = (
    "the audit schema {!r} (GRAPHWIRE_AUDIT_SCHEMA) does not exist in this database: run "
    "`graphwire db migrate` to create it, or correct the setting"
)

LATEST = migrations()[-1].version


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A schema name no one uses (not created); dropped afterwards if a test created it."""
    name = f"s{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def public() -> AsyncIterator[Any]:
    """A connection to ``public`` only (where the session fixture put graphwire's tables)."""
    conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings={"search_path": "public"})
    try:
        yield conn
    finally:
        await conn.close()


async def test_the_test_database_has_graphwire_and_checkpoint_tables_in_public(
    public: Any,
) -> None:
    """Every run of the suite sees migrated audit tables and checkpoint tables in public."""
    found = await public.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "AND table_name = ANY($1::text[]) ORDER BY table_name",
        ["checkpoint_blobs", "checkpoint_migrations", "checkpoint_writes", "checkpoints",
         "graphwire_dead_letters", "graphwire_events", "graphwire_runs",
         "graphwire_schema_migrations"],
    )
    assert [r["table_name"] for r in found] == [
        "checkpoint_blobs", "checkpoint_migrations", "checkpoint_writes", "checkpoints",
        "graphwire_dead_letters", "graphwire_events", "graphwire_runs",
        "graphwire_schema_migrations",
    ]
    assert await public.fetchval("SELECT max(version) FROM graphwire_schema_migrations") == LATEST


async def test_an_unmigrated_schema_is_an_error_not_a_fallback_to_public(schema: str) -> None:
    """Missing schema, then empty schema: queries find no table and the check says what to do."""
    conn = await connect(TEST_DATABASE_URL, schema)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.fetchval("SELECT count(*) FROM graphwire_runs")
        assert await schema_version(conn) == 0
        assert await schema_version(conn, schema) == 0
        with pytest.raises(GraphwireError) as missing:
            await require_migrated(conn, schema)
        assert str(missing.value) == MISSING.format(schema)
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        with pytest.raises(GraphwireError) as empty:
            await require_migrated(conn, schema)
        assert str(empty.value) == (
            f"the audit tables are at version 0, this graphwire needs {LATEST}: run "
            "`graphwire db migrate` (or start the sink with --migrate)"
        )
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.fetchval("SELECT count(*) FROM graphwire_runs")
    finally:
        await conn.close()


async def test_the_sink_writer_never_writes_public_when_its_schema_is_missing(
    schema: str, public: Any
) -> None:
    """A write to a missing schema fails with UndefinedTable; public gains no row."""
    rid = f"schema-test-{uuid.uuid4().hex}"
    body = {"request_id": rid, "graph": "pipeline", "status": "success", "output": {}}
    record = Record("gw.results", 0, 7, rid.encode(), orjson.dumps(body), [], 1_700_000_000.0)
    writer = AuditWriter(TEST_DATABASE_URL, schema=schema)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await writer.write([to_row(record, TopicNames("gw"), max_request_bytes=1 << 20)])
        assert await public.fetchval(
            "SELECT count(*) FROM graphwire_runs WHERE request_id = $1", rid
        ) == 0
    finally:
        await writer.close()
        await public.execute("DELETE FROM graphwire_runs WHERE request_id = $1", rid)


def test_db_commands_refuse_a_missing_schema_and_migrate_creates_it(schema: str) -> None:
    """runs list/show, db prune and status exit 1 naming the fix; db migrate creates the schema."""
    env = {"GRAPHWIRE_DATABASE_URL": TEST_DATABASE_URL, "GRAPHWIRE_AUDIT_SCHEMA": schema,
           "GRAPHWIRE_REDIS_URL": "redis://127.0.0.1:6379/0",
           "GRAPHWIRE_TOPIC_PREFIX": schema}
    for args in (("runs", "list"), ("runs", "show", "r1"), ("db", "prune"), ("status", "r1")):
        done = cli(env, *args)
        assert (done.returncode, done.stdout) == (1, ""), (args, done.stdout, done.stderr)
        assert done.stderr == f"graphwire: error: {MISSING.format(schema)}\n", args
    migrated = cli(env, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == "".join(
        f"applied {m.version:04d}_{m.name}\n" for m in migrations()
    ) + f"audit tables at version {LATEST}\n"
    listed = cli(env, "runs", "list")  # the new schema's empty table, not public's
    assert (listed.returncode, listed.stderr) == (0, "0 runs\n")
    assert listed.stdout.splitlines()[1:] == []


async def test_doctor_names_a_missing_audit_schema_and_finds_checkpoints_on_the_default_path(
    schema: str,
) -> None:
    """Audit check fails with the fix for a missing schema, passes once migrated; with no
    checkpoint schema the checkpoint tables are looked up where the runner puts them."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=TEST_DATABASE_URL,
        audit_schema=schema,
        checkpoint_schema=None,
        dedup=False,
    )
    checks = await store_checks(settings)
    # [1] is the server's autovacuum (pass or warn as the server is set: test_ops has it)
    assert checks[1].name == "PostgreSQL autovacuum" and checks[1].status in ("pass", "warn")
    assert checks[2:] == [
        Check("audit tables migrated", "fail",
              f"the schema {schema!r} (GRAPHWIRE_AUDIT_SCHEMA) does not exist",
              "graphwire db migrate (creates it)"),
        Check("checkpoint tables", "pass", "present"),
    ]
    assert checks[0].name == "PostgreSQL reachable" and checks[0].status == "pass"
    conn = await connect(TEST_DATABASE_URL)
    try:
        await migrate(conn, schema)
    finally:
        await conn.close()
    checks = await store_checks(settings)
    assert checks[2:] == [
        Check("audit tables migrated", "pass", f"version {LATEST} of {LATEST}"),
        Check("scheduler", "pass", "nothing overdue"),
        Check("checkpoint tables", "pass", "present"),
    ]


@pytest.mark.integration
async def test_gateway_status_reads_only_the_configured_schema(
    topics: TopicNames, worker_env: dict[str, str], public: Any
) -> None:
    """A run only public has is unknown (404) to a gateway on a missing schema; once the schema
    is migrated, the gateway reports that schema's row, not public's."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]  # the schema: dropped by worker_env
    rid = f"svc-a.schema-test-{uuid.uuid4().hex}"
    insert = "INSERT INTO graphwire_runs (request_id, status) VALUES ($1, $2)"
    await public.execute(insert, rid, "success")
    try:
        gateway = Gateway(gateway_settings(worker_env, audit_schema=prefix))
        await gateway.start()
        try:
            with pytest.raises(NotFound) as unknown:
                await gateway.status(rid)
            assert (unknown.value.status, str(unknown.value)) == (
                404, f"unknown request {rid!r}"
            )
            conn = await connect(TEST_DATABASE_URL)
            try:
                await migrate(conn, prefix)
                await conn.execute(insert, rid, "error")
            finally:
                await conn.close()
            status = await gateway.status(rid)
            assert (status.source, status.status) == ("postgresql", "error")
        finally:
            await gateway.stop()
    finally:
        await public.execute("DELETE FROM graphwire_runs WHERE request_id = $1", rid)
