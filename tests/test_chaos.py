"""The proof: 1,000 requests, 3 workers, one of them SIGKILLed and restarted twice.

Mix: pipeline and slow requests, re-produced duplicates of earlier request ids, and 2 threads
of 10 turns each. Every distinct request_id ends with the right output; duplicates never run;
thread turns run in order; checkpointed nodes that completed never run again; every request's
events hold every node of its graph (a killed start's lost events are replayed).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from graphwire.topics.specs import TopicNames
from tests.kafka_helpers import Collector, WorkerProcess, encode, produce, wait_for_members

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _workload(prefix: str) -> tuple[list[tuple[bytes, dict[str, Any]]], dict[str, Any]]:
    """Messages in produce order and the expected output of each distinct request_id."""
    rng = random.Random(7)
    messages: list[tuple[bytes, dict[str, Any]]] = []
    expected: dict[str, Any] = {}
    turns = {f"{prefix}-thread-{t}": 0 for t in range(2)}
    originals: list[tuple[bytes, dict[str, Any]]] = []
    while len(messages) < 1000:
        roll = rng.random()
        if roll < 0.02 and any(n < 10 for n in turns.values()):
            thread = rng.choice([t for t, n in turns.items() if n < 10])
            n = turns[thread]
            turns[thread] += 1
            rid = f"{thread}-turn-{n}"
            body = {
                "request_id": rid,
                "graph": "turns",
                "input": {"turns": [n]},
                "thread_id": thread,
            }
            expected[rid] = {"turns": list(range(n + 1))}
            messages.append((thread.encode(), body))
            continue
        if roll < 0.10 and originals:  # a duplicate of an earlier request
            messages.append(rng.choice(originals))
            continue
        i = len(expected)
        if roll < 0.30:
            seconds = round(rng.uniform(0.05, 0.4), 2)
            body = {"request_id": f"slow-{i}", "graph": "slow", "input": {"seconds": seconds}}
            expected[body["request_id"]] = {"seconds": seconds}
        else:
            body = {
                "request_id": f"pipe-{i}",
                "graph": "pipeline",
                "input": {"text": f"Hello W{i}"},
            }
            expected[body["request_id"]] = {
                "text": f"hello w{i}",
                "tokens": ["hello", f"w{i}"],
                "count": 2,
            }
        message = (body["request_id"].encode(), body)
        originals.append(message)
        messages.append(message)
    for thread, n in turns.items():  # finish the threads
        for k in range(n, 10):
            rid = f"{thread}-turn-{k}"
            body = {
                "request_id": rid,
                "graph": "turns",
                "input": {"turns": [k]},
                "thread_id": thread,
            }
            expected[rid] = {"turns": list(range(k + 1))}
            messages.append((thread.encode(), body))
    return messages, expected


async def test_chaos_1000_requests_3_workers_two_kills(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path, prefix: str
) -> None:
    """Exactly-once effect, order and durability hold through two SIGKILLs."""
    env = {
        **worker_env,
        "GRAPHWIRE_GRAPHS": "turns=tests.sample_graphs:turns",
        "GRAPHWIRE_DURABILITY": "sync",
        "GRAPHWIRE_MAX_IN_FLIGHT": "32",
    }
    workers = [
        WorkerProcess({**env, "GRAPHWIRE_WORKER_ID": f"w{i}"}, log_path=worker_log).start()
        for i in range(3)
    ]
    messages, expected = _workload(prefix)
    kills = 0
    try:
        await wait_for_members(bootstrap, env["GRAPHWIRE_GROUP_ID"], 3)
        async with Collector(bootstrap, topics.results, topics.events) as out:
            for start in range(0, len(messages), 100):
                chunk = messages[start : start + 100]
                await produce(bootstrap, topics.requests, [(k, encode(b)) for k, b in chunk])
                if start in (300, 600):  # kill a worker mid-stream, restart it
                    await asyncio.sleep(0.5)
                    workers[0].kill()
                    kills += 1
                    workers[0] = WorkerProcess(
                        {**env, "GRAPHWIRE_WORKER_ID": f"w0-{kills}"}, log_path=worker_log
                    ).start()
                await asyncio.sleep(0.3)
            await out.wait_until(
                lambda: (
                    {orjson.loads(r.value)["request_id"] for r in out.records[topics.results]}
                    >= set(expected)
                ),
                timeout=120,
            )
            await asyncio.sleep(1)
            results = out.values(topics.results)
            events = out.values(topics.events)
    finally:
        for w in workers:
            w.stop()

    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_id[r["request_id"]].append(r)
    starts: dict[str, list[int]] = defaultdict(list)
    nodes: Counter[tuple[str, str]] = Counter()
    finished: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e["type"] == "run_started":
            starts[e["request_id"]].append(e["data"]["attempt"])
        elif e["type"] == "node" and not e.get("replayed"):  # a replay is no re-run
            nodes[(e["request_id"], e["node"])] += 1
            finished[e["request_id"]].add(e["node"])
        elif e["type"] == "node":
            finished[e["request_id"]].add(e["node"])

    twice = sorted(rid for rid, rs in by_id.items() if len(rs) > 1)
    duplicates = len(messages) - len(expected)
    rerun_nodes = sorted(k for k, n in nodes.items() if n > 1)
    redelivered = sorted(rid for rid, attempts in starts.items() if max(attempts) > 1)
    print(
        f"\nchaos: {len(messages)} messages, {len(expected)} distinct requests, {duplicates} "
        f"duplicates, {kills} kills; {len(results)} results; {len(twice)} requests with a "
        f"second result (in flight at a kill): {twice}; {len(redelivered)} runs redelivered "
        f"after a kill and resumed; re-run nodes: {rerun_nodes}"
    )
    assert set(by_id) == set(expected)
    for rid, rs in by_id.items():
        assert {orjson.dumps(r["output"]) for r in rs} == {orjson.dumps(expected[rid])}, rid
        assert {r["status"] for r in rs} == {"success"}, rid
    # a duplicate never runs: every run of a request has its own attempt number, and only a
    # kill adds one (a killed attempt's events may be lost, so numbers can have gaps)
    for rid, attempts in starts.items():
        assert len(set(attempts)) == len(attempts), (rid, attempts)
        assert max(attempts) <= 1 + kills, (rid, attempts)
    assert len(twice) <= kills * int(env["GRAPHWIRE_MAX_IN_FLIGHT"])
    assert all(max(starts[rid]) > 1 for rid in twice)
    assert rerun_nodes == []
    # every request's events name every node of its graph, live or replayed after a kill
    graph_nodes = {"pipe": {"normalize", "tokenize", "count"}, "slow": {"wait"}}
    for rid in expected:
        assert finished[rid] == graph_nodes.get(rid.partition("-")[0], {"turn"}), rid
