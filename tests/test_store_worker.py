"""The store in the worker and the CLI: what an operator puts with ``graphwire store``, the CLI
reads back and a graph run reads through ``runtime.store``; a graph's own store is kept (and
logged once); ``GRAPHWIRE_STORE=false`` gives runs none."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from langgraph.store.memory import InMemoryStore

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.fidelity.test_store import memory_graph
from tests.helpers import runner_for
from tests.helpers.cli import graphwire_async
from tests.helpers.database import connect
from tests.kafka_helpers import Collector, encode, produce, request

pytestmark = pytest.mark.integration


async def test_a_value_put_with_the_cli_is_read_by_the_cli_and_by_a_graph_run(
    bootstrap: str, topics: TopicNames, settings: Settings, worker_env: dict[str, str]
) -> None:
    """``store put`` prints the item and exits 0; ``store get`` prints the same item; ``store
    search`` and ``store namespaces`` list it; a run of a graph whose node searches the user's
    namespace sees the fact (facts == ["from the cli"]); ``store delete`` exits 0 and a
    second ``get`` exits 4 saying there is no such item."""
    user = f"u{uuid.uuid4().hex[:8]}"
    ns = f"memories/{user}"
    put = await graphwire_async("store", "put", ns, "cli-fact", '{"fact": "from the cli"}',
                                "--ttl", "60", env=worker_env)
    assert (put.returncode, put.stderr) == (0, "")
    item = json.loads(put.stdout)
    assert (item["namespace"], item["key"], item["value"]) == (
        ["memories", user], "cli-fact", {"fact": "from the cli"})
    got = await graphwire_async("store", "get", ns, "cli-fact", env=worker_env)
    assert (got.returncode, json.loads(got.stdout)) == (0, item)
    found = await graphwire_async("store", "search", "memories", "--filter",
                                  '{"fact": "from the cli"}', env=worker_env)
    assert [json.loads(line)["key"] for line in found.stdout.splitlines()] == ["cli-fact"]
    listed = await graphwire_async("store", "namespaces", "--prefix", "memories",
                                   env=worker_env)
    assert listed.stdout.splitlines() == [json.dumps(["memories", user], separators=(",", ":"))]

    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("memory", memory_graph())
    async with runner_for(settings, registry), Collector(bootstrap, topics.results) as out:
        await produce(bootstrap, topics.requests, [
            (b"r", encode(request("reads-cli", "memory", input={"user": user})))])
        await out.wait_count(topics.results, 1, timeout=60)
    result = out.values(topics.results)[0]
    assert (result["status"], result["output"]["facts"]) == ("success", ["from the cli"])

    deleted = await graphwire_async("store", "delete", ns, "cli-fact", env=worker_env)
    assert deleted.returncode == 0
    again = await graphwire_async("store", "get", ns, "cli-fact", env=worker_env)
    assert again.returncode == 4
    assert again.stderr.startswith(f"graphwire: no item 'cli-fact' in namespace '{ns}'")


async def test_a_bad_value_or_namespace_says_what_to_fix(worker_env: dict[str, str]) -> None:
    """A value that is not a JSON object and a namespace with an empty label each exit 1 with
    one line naming what to fix; nothing is written."""
    bad_value = await graphwire_async("store", "put", "users/x", "k", "[1, 2]", env=worker_env)
    assert (bad_value.returncode, bad_value.stderr) == (
        1, "graphwire: error: VALUE must be a JSON object, not list: e.g. "
           "'{\"theme\": \"dark\"}'\n")
    bad_ns = await graphwire_async("store", "put", "users//x", "k", "{}", env=worker_env)
    assert bad_ns.returncode == 1
    assert bad_ns.stderr == (
        "graphwire: error: namespace 'users//x' has an empty label or one with a dot (''): "
        "give labels joined by single slashes, without dots, e.g. users/alice\n")


async def _run_turns(
    bootstrap: str, topics: TopicNames, settings: Settings, graph: object, users: list[str],
    **changes: object,
) -> list[dict[str, object]]:
    """Run the memory graph once per user, one after the other; the results in order."""
    registry = GraphRegistry.from_sources(builtins=False)
    registry.register("memory", graph)
    async with runner_for(settings, registry, **changes), \
            Collector(bootstrap, topics.results) as out:
        for i, user in enumerate(users):
            await produce(bootstrap, topics.requests, [(f"k{i}".encode(), encode(request(
                f"r{i}", "memory", input={"user": user, "fact": f"fact {i}"})))])
            await out.wait_count(topics.results, i + 1, timeout=60)
    return list(out.values(topics.results))


async def test_a_graph_compiled_with_its_own_store_keeps_it_and_the_worker_says_so_once(
    bootstrap: str, topics: TopicNames, settings: Settings, prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two runs of a graph compiled with an InMemoryStore use that store (the second sees both
    facts), nothing reaches PostgreSQL's store table, and the worker logs the per-process
    warning exactly once."""
    caplog.set_level(logging.WARNING, logger="graphwire.processors.runner.pgstore")
    own = InMemoryStore()
    results = await _run_turns(bootstrap, topics, settings, memory_graph(store=own),
                               ["carol", "carol"])
    assert [(r["status"], r["output"]["facts"]) for r in results] == [
        ("success", ["fact 0"]), ("success", ["fact 0", "fact 1"])]
    assert [i.key for i in own.search(("memories", "carol"))] == ["fact-0", "fact-1"]
    async with connect(prefix) as db:
        assert await db.fetchval("SELECT count(*) FROM store") == 0
    warnings = [r.getMessage() for r in caplog.records if "its own store" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("graph memory was compiled with its own store (InMemoryStore)")


async def test_graphwire_store_false_gives_runs_no_store(
    bootstrap: str, topics: TopicNames, settings: Settings,
) -> None:
    """With GRAPHWIRE_STORE=false a node reading runtime.store fails as it does in LangGraph
    without a store: the result is an error (AssertionError: runtime.store is None)."""
    results = await _run_turns(bootstrap, topics, settings, memory_graph(), ["dan"],
                               store=False, max_attempts=1)
    assert [(r["status"], r["error"]["type"]) for r in results] == [("error", "AssertionError")]
