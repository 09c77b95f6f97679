"""Side effects at most once (graphs/effects.py, processors/runner/effects.py): keys, the
PostgreSQL journal, cleanup, and SIGKILLed workers against a real HTTP server the test starts."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import asyncpg
import orjson
import pytest
from aiohttp import web
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from graphwire import EffectInDoubt, effect_key, once
from graphwire.graphs.effects import EffectIntent, EffectResultNotJSON, bind_effects
from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.runner.checkpoints import CheckpointStore
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.kafka_helpers import Collector, WorkerProcess, encode, produce, request

Events = list[tuple[str, str | None, Any]]


@pytest.fixture
async def store(worker_env: dict[str, str], prefix: str) -> AsyncIterator[CheckpointStore]:
    """Checkpoints and the effect journal in this test's schema (dropped by worker_env)."""
    async with CheckpointStore(TEST_DATABASE_URL, schema=prefix, pool_size=4) as started:
        yield started


async def _invoke(
    graph: Any, store: CheckpointStore, payload: Any, thread: str, request_id: str,
    events: Events | None = None,
) -> Any:
    """``ainvoke`` with the store's checkpointer, effects journaled as the runner binds them."""
    durable = graph.copy(update={"checkpointer": store.saver})

    async def emit(type_: str, node: str | None, data: Any) -> None:
        if events is not None:
            events.append((type_, node, data))

    with bind_effects(store.effects, thread_id=thread, request_id=request_id, namespace="t",
                      emit=emit):
        return await durable.ainvoke(payload, {"configurable": {"thread_id": thread}})


async def _journal(prefix: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        rows = await conn.fetch(
            f'SELECT key, thread_id, name, node, status, calls, result::text AS result '
            f'FROM "{prefix}".graphwire_effects ORDER BY started_at, key'
        )
    finally:
        await conn.close()
    return [{**dict(r), "result": orjson.loads(r["result"]) if r["result"] else None}
            for r in rows]


class LoopState(TypedDict, total=False):
    rounds: int
    keys: Annotated[list[str], operator.add]


def _looping_graph(calls: list[str]) -> Any:
    """``pay`` runs twice (a loop); each run makes two once("x") calls and records the keys:
    the one effect_key("x") named before the call, and the one the call saw."""

    async def pay(state: LoopState) -> LoopState:
        keys = []
        for _ in range(2):
            before = effect_key("x")

            def seen() -> str:
                calls.append(effect_key("x"))
                return effect_key()

            inside = await once("x", seen)
            assert inside == before
            keys.append(inside)
        return {"rounds": state.get("rounds", 0) + 1, "keys": keys}

    builder = StateGraph(LoopState)
    builder.add_node("pay", pay)
    builder.add_edge(START, "pay")
    builder.add_conditional_edges("pay", lambda s: "pay" if s["rounds"] % 2 else END)
    return builder.compile()


async def test_effect_keys_differ_per_request_turn_iteration_and_call(
    store: CheckpointStore,
) -> None:
    """Two calls in one node, two loop iterations, two requests and two turns of one thread:
    eight distinct keys each; effect_key(name) before once(name) is the key the call uses."""
    calls: list[str] = []
    graph = _looping_graph(calls)
    first = await _invoke(graph, store, {"rounds": 0}, "thread-a", "r1")
    other_request = await _invoke(graph, store, {"rounds": 0}, "r2", "r2")
    second_turn = await _invoke(graph, store, {"rounds": 0}, "thread-a", "r3")
    assert len(first["keys"]) == 4 and len(other_request["keys"]) == 4
    assert second_turn["keys"][:4] == first["keys"]  # the thread's state carries turn 1's keys
    turn_two = second_turn["keys"][4:]
    every = first["keys"] + other_request["keys"] + turn_two
    assert len(set(every)) == 12
    assert calls == every  # each key was called exactly once, in order
    assert all(k.startswith("gw-") and len(k) == 35 for k in every)


class OnceState(TypedDict, total=False):
    receipt: Any
    tries: int


async def test_a_retried_node_gets_the_same_key_and_the_recorded_result(
    store: CheckpointStore, prefix: str
) -> None:
    """A node that raises a retriable error after its effect is retried (RetryPolicy): the
    same key, the effect not called again, the recorded result returned."""
    calls: list[str] = []
    tries: list[str] = []

    async def charge(state: OnceState) -> OnceState:
        receipt = await once("charge", lambda: calls.append(effect_key()) or {"id": len(calls)})
        tries.append(receipt["id"])
        if len(tries) == 1:
            raise ConnectionError("the network dropped after the charge")
        return {"receipt": receipt}

    builder = StateGraph(OnceState)
    builder.add_node("charge", charge, retry_policy=RetryPolicy(initial_interval=0.01))
    builder.add_edge(START, "charge")
    events: Events = []
    out = await _invoke(builder.compile(), store, {}, "th", "r1", events)
    assert out["receipt"] == {"id": 1}
    assert len(calls) == 1
    assert [(t, n, d["outcome"], d["calls"]) for t, n, d in events] == [
        ("effect", "charge", "called", 1), ("effect", "charge", "replayed", 1)
    ]
    assert events[0][2]["key"] == events[1][2]["key"] == calls[0]
    [row] = await _journal(prefix)
    assert (row["key"], row["thread_id"], row["name"], row["node"], row["status"],
            row["calls"], row["result"]) == (calls[0], "th", "charge", "charge", "done", 1,
                                             {"id": 1})


async def test_a_state_graph_node_rerun_after_a_crash_replays_its_effect(
    store: CheckpointStore,
) -> None:
    """StateGraph: the node dies after once() (the run fails); the next run of the thread
    resumes it: the effect is not called again and returns the recorded result."""
    calls: list[int] = []
    crashed: list[bool] = []

    async def charge(state: OnceState) -> OnceState:
        receipt = await once("charge", lambda: calls.append(1) or {"charged": 5})
        if not crashed:
            crashed.append(True)
            raise RuntimeError("died after the charge")
        return {"receipt": receipt}

    builder = StateGraph(OnceState)
    builder.add_node("charge", charge)
    builder.add_edge(START, "charge")
    graph = builder.compile()
    with pytest.raises(RuntimeError, match="died after the charge"):
        await _invoke(graph, store, {}, "th", "r1")
    out = await _invoke(graph, store, None, "th", "r1")  # resume from the checkpoint
    assert out["receipt"] == {"charged": 5}
    assert calls == [1]


async def test_functional_api_tasks_journal_their_effects(store: CheckpointStore) -> None:
    """@entrypoint/@task: a task that dies after its effect is re-run on resume and replays
    it; the two task calls and the entrypoint's own call get three keys, each called once."""
    calls: list[str] = []
    crashed: list[bool] = []

    @task
    async def charge(amount: int) -> dict[str, Any]:
        receipt = await once("charge", lambda: calls.append(effect_key()) or {"amount": amount})
        if amount == 7 and not crashed:
            crashed.append(True)
            raise RuntimeError("died after the charge of 7")
        return receipt

    @entrypoint()
    async def flow(amounts: list[int]) -> dict[str, Any]:
        receipts = [await charge(a) for a in amounts]
        note = await once("note", lambda: calls.append(effect_key()) or "noted")
        return {"receipts": receipts, "note": note}

    with pytest.raises(RuntimeError, match="died after the charge of 7"):
        await _invoke(flow, store, [5, 7], "th", "r1")
    assert len(calls) == 2
    events: Events = []
    out = await _invoke(flow, store, None, "th", "r1", events)
    assert out == {"receipts": [{"amount": 5}, {"amount": 7}], "note": "noted"}
    assert len(calls) == 3 and len(set(calls)) == 3
    assert [(n, d["name"], d["outcome"]) for _, n, d in events] == [
        ("charge", "charge", "replayed"), ("flow", "note", "called")
    ]


async def test_journal_states_group_commits_and_in_doubt_retries(store: CheckpointStore) -> None:
    """begin: fresh -> call; again -> in doubt; with retry_in_doubt -> call (calls 2);
    finished -> done with the result; failed -> call again. 40 concurrent begins share few
    statements."""
    journal = store.effects
    assert journal is not None

    def intent(key: str, retry: bool = False) -> EffectIntent:
        return EffectIntent(key, "th", "r1", "charge", "node", retry)

    assert (await journal.begin(intent("k1"))).state == "call"
    doubt = await journal.begin(intent("k1"))
    assert (doubt.state, doubt.calls) == ("in_doubt", 1)
    again = await journal.begin(intent("k1", retry=True))
    assert (again.state, again.calls) == ("call", 2)
    await journal.finish("k1", orjson.dumps({"ok": [1, 2]}), None)
    done = await journal.begin(intent("k1", retry=True))
    assert (done.state, done.calls, done.result) == ("done", 2, {"ok": [1, 2]})
    await journal.begin(intent("k2"))
    await journal.finish("k2", None, "ConnectionError: refused")
    after_failure = await journal.begin(intent("k2"))
    assert (after_failure.state, after_failure.calls) == ("call", 2)
    before = journal.commits
    states = await asyncio.gather(*(journal.begin(intent(f"g{i}")) for i in range(40)))
    assert [s.state for s in states] == ["call"] * 40
    assert journal.commits - before < 40


async def test_a_result_that_is_not_json_is_a_clear_error_and_stays_in_doubt(
    store: CheckpointStore, prefix: str
) -> None:
    """once() whose fn returns an object: EffectResultNotJSON naming the type; the intent stays
    open (the effect happened), so a re-run is in doubt rather than calling again."""
    calls: list[int] = []

    class Receipt:
        pass

    async def charge(state: OnceState) -> OnceState:
        await once("charge", lambda: calls.append(1) or Receipt())
        return {}

    builder = StateGraph(OnceState)
    builder.add_node("charge", charge)
    builder.add_edge(START, "charge")
    graph = builder.compile()
    with pytest.raises(EffectResultNotJSON, match="Receipt"):
        await _invoke(graph, store, {}, "th", "r1")
    with pytest.raises(EffectInDoubt, match="effect 'charge' \\(key gw-"):
        await _invoke(graph, store, None, "th", "r1")
    assert calls == [1]
    assert [r["status"] for r in await _journal(prefix)] == ["pending"]


async def test_the_journal_goes_with_the_threads_checkpoints(
    store: CheckpointStore, prefix: str
) -> None:
    """forget_later (a finished stateless run) and prune (`graphwire checkpoints prune`)
    delete a thread's journal rows with its checkpoints; prune also takes orphaned rows."""
    graph = _looping_graph([])
    for thread in ("a", "b"):
        await _invoke(graph, store, {"rounds": 0}, thread, thread)
    assert sorted({r["thread_id"] for r in await _journal(prefix)}) == ["a", "b"]
    store.forget_later("a")
    await store.flush_forgotten()
    assert {r["thread_id"] for r in await _journal(prefix)} == {"b"}
    assert store.effects is not None
    await store.effects.begin(EffectIntent("orphan", "gone", "r9", "x", "n", False))
    assert await store.prune(3600) == 0
    assert len(await _journal(prefix)) == 5
    assert await store.prune(0) == 1
    assert await _journal(prefix) == []
