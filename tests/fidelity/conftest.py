"""One runner per fidelity module: its own topics, checkpoint schema and Redis namespace.

Tests register their graphs on the running runner's registry (a dict lookup per request), so a
module starts the broker topics, the runner and the collectors once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest_asyncio
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.settings import Settings
from graphwire.topics.admin import ensure_topics
from graphwire.topics.specs import TopicNames
from tests.conftest import PARTITIONS, TEST_DATABASE_URL, TEST_REDIS_URL
from tests.fidelity.harness import Worker
from tests.helpers import runner_for
from tests.kafka_helpers import Collector


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fidelity_worker(bootstrap: str) -> AsyncIterator[Worker]:
    """A started runner on topics, a group, a Redis namespace and a checkpoint schema of this
    module's own, serving the (initially empty) registry the tests register graphs on; a
    collector on its results and events; LangGraph's ``AsyncPostgresSaver`` on its schema."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, names.specs(PARTITIONS))
    fields: dict[str, Any] = {
        "bootstrap_servers": bootstrap, "topic_prefix": prefix, "group_id": f"{prefix}-runners",
        "session_timeout_ms": 3000, "heartbeat_interval_ms": 1000, "redis_url": TEST_REDIS_URL,
        "database_url": TEST_DATABASE_URL, "checkpoint_schema": prefix, "lease_ms": 3000,
        "http_port": 0,
    }
    settings = Settings(_env_file=None, **fields)  # type: ignore[call-arg]
    registry = GraphRegistry.from_sources(builtins=False)
    search_path = quote(f"-c search_path={prefix}")
    try:
        async with (
            runner_for(settings, registry),
            Collector(bootstrap, names.results, names.events) as collector,
            AsyncPostgresSaver.from_conn_string(
                f"{TEST_DATABASE_URL}?options={search_path}") as saver,
        ):
            yield Worker(
                bootstrap=bootstrap, requests_topic=names.requests,
                results_topic=names.results, events_topic=names.events, registry=registry,
                collector=collector, saver=saver,
            )
    finally:
        with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')
