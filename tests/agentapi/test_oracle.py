"""graphwire's Agent Server API against LangGraph's own server (``langgraph dev``, langgraph-api
0.16.7) as an oracle: the same ``langgraph_sdk`` flows (tests/agentapi/oracle/flows.py) run on
both, serving the same graphs on the same LangGraph, and their answers are compared (fields,
status codes, event names and order, final state) with ids and timestamps normalised. Every
difference is either listed here as documented (README, "What differs from LangGraph's server")
or fails the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client

from graphwire.graphs.registry import BUILTINS
from graphwire.processors.gateway.agentapi.ids import default_assistant_id
from graphwire.topics.specs import TopicNames
from tests.agentapi.oracle import flows
from tests.agentapi.oracle.compare import SERVER_STAMPS, differences, normalise, without_stamps
from tests.agentapi.oracle.flows import Flow, Side
from tests.agentapi.routes import RUNS, needs_runs, needs_store, served_paths
from tests.gateway_helpers import gateway_settings, serve_app
from tests.helpers.runners import StartRunner

pytestmark = pytest.mark.integration

SAME_IDS = frozenset(default_assistant_id(graph) for graph in BUILTINS)
"""The default assistants' ids: LangGraph's uuid5 of the graph name on both servers."""
ON_KAFKA = RUNS not in served_paths()
"""No runs routes yet: the state flow runs its graph by producing the request to Kafka."""
RUN_STAMPS = frozenset({"run_id", "thread_id", "graph_id", "assistant_id"})
"""Checkpoint metadata an Agent Server run adds; a request produced to Kafka is no such run."""


@asynccontextmanager
async def graphwire(worker_env: dict[str, str], start_runner: StartRunner) -> AsyncIterator[Side]:
    """A runner and a gateway (authentication off, as ``langgraph dev`` has none) on this
    test's topics; runs go through ``runs.wait`` once the gateway has runs routes, through
    Kafka before."""
    await start_runner()
    async with (serve_app(gateway_settings(worker_env, gateway_auth=False)) as (app, http),
                get_client(url=str(http.base_url)) as client):
        gw = app.state.gateway

        async def on_kafka(graph: str, thread_id: str, input: Any) -> Any:
            result = await gw.client.invoke(graph, input, thread_id=thread_id, wait_timeout=60)
            return result.output

        yield Side("graphwire", client, http, on_kafka if ON_KAFKA else None)


async def both(flow: Flow, oracle_url: str, worker_env: dict[str, str],
               start_runner: StartRunner,
               stamps: frozenset[str] = SERVER_STAMPS) -> tuple[Any, Any, list[str]]:
    """``flow`` on the oracle and on graphwire: both transcripts normalised (ids, times,
    each server's metadata ``stamps``), and every difference, one line each."""
    async with (get_client(url=oracle_url) as client,
                httpx.AsyncClient(base_url=oracle_url, timeout=60) as http):
        oracle = normalise(without_stamps(await flow(Side("oracle", client, http)), stamps),
                           SAME_IDS)
    async with graphwire(worker_env, start_runner) as side:
        theirs = normalise(without_stamps(await flow(side), stamps), SAME_IDS)
    return oracle, theirs, differences(oracle, theirs)


async def test_assistants_match_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``assistants.search``/``get``/``get_graph`` (plain and xray)/``get_schemas`` and an
    unknown assistant answer as on ``langgraph dev``, but for the documented differences: a
    graph name is accepted where the oracle wants a UUID (422), and ``X-Pagination-Total`` is
    the real total (the oracle's is the next offset + 1 while pages remain)."""
    oracle, theirs, found = await both(flows.assistants, oracle_url, worker_env, start_runner)
    by_name = ["body", "status"]
    assistant = ["assistant_id", "config", "context", "created_at", "description", "graph_id",
                 "metadata", "name", "updated_at", "version"]
    schemas = ["config_schema", "context_schema", "graph_id", "input_schema", "output_schema",
               "state_schema"]
    assert found == [
        *[f".get by name: only the oracle has {k!r}" for k in by_name],
        *[f".get by name: only graphwire has {k!r}" for k in assistant],
        *[f".get_schemas by name: only the oracle has {k!r}" for k in by_name],
        *[f".get_schemas by name: only graphwire has {k!r}" for k in schemas],
        ".search page.x-pagination-total: oracle '3' != graphwire '5'",
    ]
    assert oracle["get by name"] == {"status": 422, "body": {"detail": "<detail>"}}
    assert theirs["get by name"] == theirs["get by id"]
    assert theirs["get_schemas by name"] == theirs["get_schemas"]
    assert [a["graph_id"] for a in theirs["search"]] == [
        "approval", "chat", "echo", "pipeline", "slow"]
    assert theirs["get unknown"] == {"status": 404, "body": {"detail": "<detail>"}}
    assert list(theirs["get_schemas"]["input_schema"]["properties"]) == [
        "count", "text", "tokens"]


async def test_threads_match_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``threads.create`` (409 again, ``do_nothing``), ``get``, ``update``, ``search`` with
    pagination headers, ``count``, unknown and bad ids and ``delete`` answer as on
    ``langgraph dev``, but that a thread nothing ran on has ``interrupts: {}`` on graphwire
    (the oracle adds the key with the first run; the SDK's ``Thread`` always has it)."""
    _oracle, theirs, found = await both(flows.threads, oracle_url, worker_env, start_runner)
    assert found == [
        f".{step}: only graphwire has 'interrupts'"
        for step in ("create", "create do_nothing", "get", "search[0]", "search[1]",
                     "search page.body[0]", "update")]
    assert [theirs[k] for k in ("create again", "get unknown", "get bad id", "delete",
                                "get deleted", "count")] == [
        {"status": 409, "body": {"detail": "<detail>"}},
        {"status": 404, "body": {"detail": "<detail>"}},
        {"status": 422, "body": {"detail": "<detail>"}},
        {"status": 204, "body": None},
        {"status": 404, "body": {"detail": "<detail>"}},
        2]
    assert (theirs["get"]["status"], theirs["update"]["metadata"]) == (
        "idle", {"marker": "<id:0>", "n": 1})


async def test_state_and_history_match_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """After a ``pipeline`` run: ``get_state``, ``get_history`` (5 checkpoints, newest first),
    the state at a checkpoint id and at a checkpoint, RemoteGraph's ``aget_state``,
    ``update_state`` as ``count`` and the state and thread after it answer as on
    ``langgraph dev``, but for the documented differences: a new thread has ``interrupts: {}``
    (see the threads test); the state at a checkpoint id names its ``checkpoint_ns`` (the
    oracle leaves it out, and RemoteGraph needs it); checkpoint metadata has no ``thread_id``
    (LangGraph's savers leave it out; the oracle's adds it). While graphwire has no runs
    routes, its run is produced to Kafka, so the thread lacks ``metadata.assistant_id``."""
    stamps = SERVER_STAMPS | RUN_STAMPS if ON_KAFKA else SERVER_STAMPS
    _oracle, theirs, found = await both(flows.state, oracle_url, worker_env, start_runner,
                                       stamps)
    assert found == [
        ".create: only graphwire has 'interrupts'",
        # LangGraph's savers leave thread_id out of checkpoint metadata (the thread is the
        # checkpoint's key); langgraph dev's saver adds it
        *[f".history[{i}].metadata: only the oracle has 'thread_id'" for i in range(5)],
        ".state.metadata: only the oracle has 'thread_id'",
        ".state after update.metadata: only the oracle has 'thread_id'",
        ".state at checkpoint.metadata: only the oracle has 'thread_id'",
        ".state at first checkpoint.checkpoint: only graphwire has 'checkpoint_ns'",
        ".state at first checkpoint.metadata: only the oracle has 'thread_id'",
        *([".thread after run.metadata: only the oracle has 'assistant_id'",
           ".thread after update.metadata: only the oracle has 'assistant_id'"] if ON_KAFKA
          else []),
    ]
    assert theirs["output"] == flows.PIPELINE_VALUES
    assert [h["metadata"]["step"] for h in theirs["history"]] == [3, 2, 1, 0, -1]
    assert theirs["state after update"]["values"] == {**flows.PIPELINE_VALUES, "count": 7}
    assert theirs["remote get_state"]["config"]["configurable"]["checkpoint_map"] == {}


# -- runs: these run as soon as graphwire's runs routes are merged ---------------------------

@needs_runs
async def test_chat_stream_matches_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``runs.stream`` on ``chat`` with ``values``, ``updates``, ``messages-tuple`` and
    ``custom`` sends the same events in the same order with the same data (tokens one by one,
    the tool's custom event), and leaves the same state and thread, as ``langgraph dev``."""
    _oracle, theirs, found = await both(flows.stream_chat, oracle_url, worker_env, start_runner)
    assert found == [  # LangGraph's savers leave thread_id out of checkpoint metadata (the
        # thread is the checkpoint's key); langgraph dev's saver adds it
        ".state.metadata: only the oracle has 'thread_id'"]
    tokens = [data[0]["content"] for event, data in theirs["events"]
              if event == "messages" and data[0]["type"] == "AIMessageChunk"]
    assert tokens == ["", "", "The ", "answer ", "is ", "5.", ""]
    assert ["custom", {"tool": "add", "a": 2, "b": 3}] in theirs["events"]
    assert theirs["events"][0][0] == "metadata"


@needs_runs
async def test_wait_matches_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``runs.wait`` on ``pipeline`` answers the final values (JSON, ``Location`` of the
    join), then ``runs.list``/``get`` and the thread as on ``langgraph dev``."""
    _oracle, theirs, found = await both(flows.wait_pipeline, oracle_url, worker_env,
                                       start_runner)
    assert found == []
    assert theirs["wait"]["body"] == flows.PIPELINE_VALUES


@needs_runs
async def test_interrupt_and_resume_match_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``approval`` stops at its interrupt (wait answer with ``__interrupt__``, thread
    ``interrupted``, state with the task's interrupt) and ``Command(resume=...)`` finishes it,
    events and state as on ``langgraph dev``."""
    _oracle, theirs, found = await both(flows.interrupt_resume, oracle_url, worker_env,
                                       start_runner)
    assert found == [  # thread_id in checkpoint metadata: as in the chat stream test
        ".state.metadata: only the oracle has 'thread_id'",
        ".state interrupted.metadata: only the oracle has 'thread_id'"]
    assert theirs["thread interrupted"]["status"] == "interrupted"
    assert theirs["state"]["values"]["published"] is True


@needs_runs
async def test_cancel_matches_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """A running run cancelled with ``wait`` and a pending one without (202, empty): the
    pending one ends ``interrupted`` as on ``langgraph dev``; the running one finishes its node
    first (graphwire stops at step boundaries) and so ends ``success``."""
    _oracle, theirs, found = await both(flows.cancel, oracle_url, worker_env, start_runner)
    # graphwire stops a run at its next step boundary: ``slow``'s one node finishes first (its
    # state has ``seconds`` as the node returns it, 5.0), then the run ends ``success``;
    # langgraph dev cancels the node's task at once. It reports the run ``running`` before or
    # after it saved the input's checkpoint, so its state has no ``seconds`` or the input's 5.
    assert found[0] in (".cancel with wait.body: only graphwire has 'seconds'",
                        ".cancel with wait.body.seconds: oracle 5 != graphwire 5.0")
    assert found[1:] == [".cancelled run.status: oracle 'interrupted' != graphwire 'success'"]
    assert theirs["cancel pending"] == {"status": 202, "body": None}
    assert theirs["cancelled run"]["status"] == "success"


@needs_runs
async def test_reject_matches_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``multitask_strategy="reject"`` on a busy thread is a 409, and the busy run succeeds,
    as on ``langgraph dev``."""
    _oracle, theirs, found = await both(flows.reject, oracle_url, worker_env, start_runner)
    assert found == []
    assert theirs["reject"] == {"status": 409, "body": {"detail": "<detail>"}}


@needs_runs
async def test_remote_graph_matches_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``RemoteGraph.ainvoke``, ``astream`` of updates and ``aget_state`` give what they give
    on ``langgraph dev``."""
    _oracle, theirs, found = await both(flows.remote_graph, oracle_url, worker_env,
                                       start_runner)
    assert found == []
    assert theirs["invoke"] == flows.PIPELINE_VALUES


@needs_store
async def test_store_matches_the_oracle(
    oracle_url: str, worker_env: dict[str, str], topics: TopicNames, start_runner: StartRunner
) -> None:
    """``store.put_item``/``get_item``/``search_items`` (prefix, filter)/``list_namespaces``/
    ``delete_item`` answer as on ``langgraph dev``."""
    _oracle, theirs, found = await both(flows.store, oracle_url, worker_env, start_runner)
    # search order: newest first, as LangGraph's PostgresStore (graphwire's store) orders it;
    # langgraph dev's in-memory store answers in the order the items were put
    assert found == [
        ".search.items[0].key: oracle 'a' != graphwire 'b'",
        ".search.items[0].namespace: oracle ['oracle', '<id:0>'] != graphwire "
        "['oracle', '<id:0>', 'deep']",
        ".search.items[0].value.kind: oracle 'x' != graphwire 'y'",
        ".search.items[0].value.n: oracle 1 != graphwire 2",
        ".search.items[1].key: oracle 'b' != graphwire 'a'",
        ".search.items[1].namespace: oracle ['oracle', '<id:0>', 'deep'] != graphwire "
        "['oracle', '<id:0>']",
        ".search.items[1].value.kind: oracle 'y' != graphwire 'x'",
        ".search.items[1].value.n: oracle 2 != graphwire 1",
    ]
    assert theirs["get"]["value"] == {"kind": "x", "n": 1}
