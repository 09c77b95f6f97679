"""A run produced straight to Kafka, seen through the Agent Server API with the official
``langgraph_sdk``: an operator finds it (``runs.get``, ``runs.list``) and its thread
(``threads.get``, ``threads.search``); another caller does not."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.errors import NotFoundError
from pydantic import SecretStr
from uuid_utils.compat import uuid7

from graphwire.processors.audit.db import migrate
from graphwire.processors.gateway.agentapi.ids import default_assistant_id
from graphwire.processors.gateway.auth import hash_key
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.gateway_helpers import KEYS, gateway_settings, serve_app
from tests.helpers.runners import StartRunner
from tests.helpers.waiting import eventually
from tests.kafka_helpers import WorkerProcess, encode, produce, request

pytestmark = pytest.mark.integration

KEY = "gw_test_key_kafka_runs_0123456"
"""A caller that is not an operator."""
OPERATOR = "gw_test_key_kafka_runs_operator"
"""An operator key."""


@pytest.fixture
async def schema(worker_env: dict[str, str]) -> AsyncIterator[str]:
    """The test's own audit schema, migrated."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await migrate(conn, prefix)
    finally:
        await conn.close()
    yield prefix


@pytest.fixture
def sink(worker_env: dict[str, str], schema: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    """``graphwire audit`` writing the test's topics to its schema."""
    process = WorkerProcess({
        **worker_env,
        "GRAPHWIRE_AUDIT_SCHEMA": schema,
        "GRAPHWIRE_AUDIT_GROUP_ID": f"{schema}-audit",
        "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.2",
        "GRAPHWIRE_AUDIT_HTTP_PORT": "0",
    }, command="audit", log_path=tmp_path / "sink.log").start()
    try:
        yield process
    finally:
        process.stop()


def settings_for(worker_env: dict[str, str], schema: str) -> Settings:
    """The test gateway on the test's schema, with a caller's key and an operator's."""
    keys = [*KEYS,
            {"name": "svc-kafka", "key_sha256": hash_key(KEY), "graphs": ["*"]},
            {"name": "ops-kafka", "key_sha256": hash_key(OPERATOR), "graphs": ["*"],
             "role": "operator"}]
    return gateway_settings(worker_env, gateway_api_keys=SecretStr(orjson.dumps(keys).decode()),
                            audit_schema=schema)


async def test_an_operator_sees_a_run_produced_to_kafka(
    bootstrap: str, worker_env: dict[str, str], schema: str, topics: TopicNames,
    start_runner: StartRunner, sink: WorkerProcess,
) -> None:
    """A producer writes a ``pipeline`` request to the requests topic (request_id a UUIDv7,
    thread_id a UUID). Once the audit table has its result: the operator's ``runs.get`` answers
    it (``success``, the thread, the pipeline's default assistant, its input in ``kwargs``),
    ``runs.list`` of the thread lists it, ``threads.get`` answers the thread (``idle``, the
    pipeline's values, ``metadata.graph_id``) and ``threads.search`` by that metadata finds
    it. The other caller gets 404 for the run and the thread, before and after, and its
    search does not find the thread."""
    await start_runner()
    run_id, thread_id = str(uuid7()), str(uuid.uuid4())
    await produce(bootstrap, topics.requests, [(thread_id.encode(), encode(request(
        run_id, input={"text": "Straight From Kafka"}, thread_id=thread_id)))])
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        async def audited() -> Any:
            return await conn.fetchval(
                f'SELECT status FROM "{schema}".graphwire_runs WHERE request_id = $1', run_id)

        await eventually(audited, 60, until=lambda s: s == "success",
                         what="the audit table has the run's result")
    finally:
        await conn.close()
    async with (serve_app(settings_for(worker_env, schema)) as (_app, http),
                get_client(url=str(http.base_url), api_key=KEY) as caller,
                get_client(url=str(http.base_url), api_key=OPERATOR) as operator):
        with pytest.raises(NotFoundError):
            await caller.runs.get(thread_id, run_id)
        with pytest.raises(NotFoundError):
            await caller.threads.get(thread_id)
        run = await operator.runs.get(thread_id, run_id)
        listed = await operator.runs.list(thread_id)
        thread = await operator.threads.get(thread_id)
        searched = await operator.threads.search(metadata={"graph_id": "pipeline"}, limit=1000)
        state = await operator.threads.get_state(thread_id)
        with pytest.raises(NotFoundError):
            await caller.runs.get(thread_id, run_id)
        with pytest.raises(NotFoundError):
            await caller.threads.get(thread_id)
        theirs = await caller.threads.search(limit=1000)
    values = {"text": "straight from kafka", "tokens": ["straight", "from", "kafka"],
              "count": 3}
    assert (run["run_id"], run["thread_id"], run["status"], run["assistant_id"]) == (
        run_id, thread_id, "success", default_assistant_id("pipeline"))
    assert run["kwargs"] == {"input": {"text": "Straight From Kafka"}}
    assert [r["run_id"] for r in listed] == [run_id]
    assert (thread["thread_id"], thread["status"], thread["values"]) == (
        thread_id, "idle", values)
    assert thread["metadata"] == {"graph_id": "pipeline",
                                  "assistant_id": default_assistant_id("pipeline")}
    assert [t["thread_id"] for t in searched].count(thread_id) == 1
    assert state["values"] == values
    assert thread_id not in [t["thread_id"] for t in theirs]
