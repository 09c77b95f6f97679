"""Side effects at most once (graphs/effects.py, processors/runner/effectjournal.py): keys, the
PostgreSQL journal, cleanup, and SIGKILLed workers against a real HTTP server the test starts."""

from __future__ import annotations

import asyncio
import contextlib
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
from langgraph.types import Command, RetryPolicy, interrupt

from graphwire import EffectInDoubt, effect_key, once
from graphwire.graphs.effects import EffectIntent, EffectResultNotJSON, bind_effects
from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.runner.checkpoints import CheckpointStore
from graphwire.processors.settings import Settings
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.helpers import eventually, graphwire, runner_for
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
            f'SELECT key, thread_id, name, node, status, calls, result '
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


async def test_a_subgraph_called_in_a_loop_gets_a_key_per_call(store: CheckpointStore) -> None:
    """The same subgraph node in two iterations of its parent's loop: two keys (its steps
    start again at each call; the parent's task tells the calls apart), each called once."""
    calls: list[str] = []

    async def inner(state: LoopState) -> LoopState:
        return {"keys": [await once("x", lambda: calls.append(effect_key()) or effect_key())]}

    child = StateGraph(LoopState)
    child.add_node("inner", inner)
    child.add_edge(START, "inner")
    sub = child.compile()

    async def outer(state: LoopState) -> LoopState:
        out = await sub.ainvoke({"keys": []})
        return {"rounds": state.get("rounds", 0) + 1, "keys": out["keys"]}

    parent = StateGraph(LoopState)
    parent.add_node("outer", outer)
    parent.add_edge(START, "outer")
    parent.add_conditional_edges("outer", lambda s: "outer" if s["rounds"] < 2 else END)
    out = await _invoke(parent.compile(), store, {"rounds": 0}, "th", "r1")
    assert len(out["keys"]) == 2 and len(set(out["keys"])) == 2
    assert calls == out["keys"]


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


async def test_an_effect_before_an_interrupt_is_not_made_again_on_resume(
    store: CheckpointStore,
) -> None:
    """A node charges, then asks a person (interrupt); the resume (another request on the
    thread) runs the node again from its start: the charge is replayed, not made again."""
    calls: list[str] = []

    async def review(state: OnceState) -> OnceState:
        receipt = await once("charge", lambda: calls.append(effect_key()) or {"id": 1})
        approved = interrupt("approve?")
        return {"receipt": {**receipt, "approved": approved}}

    builder = StateGraph(OnceState)
    builder.add_node("review", review)
    builder.add_edge(START, "review")
    graph = builder.compile()
    paused = await _invoke(graph, store, {}, "th", "r1")
    assert [i.value for i in paused["__interrupt__"]] == ["approve?"]
    events: Events = []
    out = await _invoke(graph, store, Command(resume=True), "th", "r2", events)
    assert out["receipt"] == {"id": 1, "approved": True}
    assert len(calls) == 1
    assert [(d["key"], d["outcome"]) for _, _, d in events] == [(calls[0], "replayed")]


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
    await journal.finish("k1", orjson.dumps({"ok": [1, 2], "nul": "a\x00b"}), None)
    done = await journal.begin(intent("k1", retry=True))
    assert (done.state, done.calls, done.result) == ("done", 2, {"ok": [1, 2], "nul": "a\x00b"})
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
    """forget_later (a finished stateless run) and `graphwire checkpoints prune` delete a
    thread's journal rows with its checkpoints; prune also takes orphaned rows that old."""
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
    env = {"GRAPHWIRE_DATABASE_URL": TEST_DATABASE_URL, "GRAPHWIRE_CHECKPOINT_SCHEMA": prefix}
    pruned = await asyncio.to_thread(
        graphwire, "checkpoints", "prune", "--older-than-s", "0", env=env
    )
    assert pruned.stdout.strip() == "deleted the checkpoints of 1 threads idle for more than 0 s"
    assert await _journal(prefix) == []


class EffectServer:
    """An HTTP service that records every call with its idempotency key. ``/pause`` answers
    ``pause_s`` the first time and 0 after; with ``hold_first`` the first call gets no answer
    until the test ends."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.hold_first = False
        self.pause_s = 30.0
        self._pauses = 0
        self._release = asyncio.Event()
        self.url = ""

    async def _charge(self, req: web.Request) -> web.Response:
        body = await req.json()
        self.calls.append((req.path, req.headers["Idempotency-Key"], body))
        if self.hold_first and len(self.calls) == 1:
            await self._release.wait()
        if req.path == "/add":
            return web.json_response({"sum": body["a"] + body["b"]})
        return web.json_response({"charged": body["amount"], "call": len(self.calls)})

    async def _pause(self, req: web.Request) -> web.Response:
        self._pauses += 1
        return web.json_response({"seconds": self.pause_s if self._pauses == 1 else 0})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[EffectServer]:
        app = web.Application()
        app.router.add_post("/charge", self._charge)
        app.router.add_post("/add", self._charge)
        app.router.add_get("/pause", self._pause)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self._release.set()
            await runner.cleanup()

    async def wait_calls(self, count: int, timeout: float = 60.0) -> None:
        """Wait until the server has seen at least ``count`` calls."""
        await eventually(lambda: len(self.calls), timeout, what=f"the server seeing {count} calls",
                         until=lambda seen: seen >= count)


@pytest.fixture
async def server() -> AsyncIterator[EffectServer]:
    """The test's own HTTP service, on a free port."""
    async with EffectServer().running() as started:
        yield started


def _effects(out: Collector, topics: TopicNames) -> list[tuple[str | None, str, str, int]]:
    return [(e["node"], e["data"]["key"], e["data"]["outcome"], e["data"]["calls"])
            for e in out.values(topics.events) if e["type"] == "effect"]


async def _kill_after(
    out: Collector, first: WorkerProcess, ready: Any, env: dict[str, str], worker_log: Path,
) -> WorkerProcess:
    """Wait until ``ready()`` holds, SIGKILL ``first``, start a second worker."""
    await out.wait_until(ready, timeout=60)
    first.kill()
    return WorkerProcess(env, log_path=worker_log).start()


@pytest.mark.integration
async def test_sigkill_after_the_call_the_rerun_replays_it_and_the_server_saw_one_call(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path,
    server: EffectServer,
) -> None:
    """Killed after the server answered (the effect recorded) and before the node ended: the
    redelivered run completes with the recorded receipt; the server saw exactly one call."""
    env = {**worker_env, "GRAPHWIRE_GRAPHS": "charge=tests.effect_graphs:make_charge"}
    first, second = WorkerProcess(env, log_path=worker_log).start(), None
    try:
        async with Collector(bootstrap, topics.results, topics.events, topics.dlq) as out:
            await produce(bootstrap, topics.requests, [(b"k", encode(request(
                "pay-1", graph="charge", input={"url": server.url, "amount": 5})))])
            second = await _kill_after(
                out, first, lambda: any(e[2] == "called" for e in _effects(out, topics)),
                env, worker_log)
            await out.wait_count(topics.results, 1, timeout=60)
            [result] = out.values(topics.results)
            effects = _effects(out, topics)
        [(path, key, body)] = server.calls
        assert (path, body) == ("/charge", {"amount": 5})
        assert (result["status"], result["attempts"]) == ("success", 2)
        assert result["output"]["receipt"] == {"charged": 5, "call": 1}
        assert result["output"]["done"] is True
        assert effects == [("charge", key, "called", 1), ("charge", key, "replayed", 1)]
        assert out.records[topics.dlq] == []
    finally:
        first.stop()
        if second:
            second.stop()


@pytest.mark.integration
@pytest.mark.parametrize("retry_in_doubt", [False, True])
async def test_sigkill_during_the_call_is_in_doubt_unless_the_target_dedupes(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path,
    server: EffectServer, retry_in_doubt: bool,
) -> None:
    """Killed while the server holds its answer: the re-run raises EffectInDoubt, an error
    result naming the key and a dead letter; with retry_in_doubt=True it calls again with the
    same key (the server saw two calls) and succeeds."""
    server.hold_first = True
    env = {**worker_env, "GRAPHWIRE_GRAPHS": "charge=tests.effect_graphs:make_charge"}
    first, second = WorkerProcess(env, log_path=worker_log).start(), None
    body = request("pay-2", graph="charge", input={
        "url": server.url, "amount": 7, "retry_in_doubt": retry_in_doubt})
    try:
        async with Collector(bootstrap, topics.results, topics.events, topics.dlq) as out:
            await produce(bootstrap, topics.requests, [(b"k", encode(body))])
            await server.wait_calls(1)
            second = await _kill_after(out, first, lambda: True, env, worker_log)
            await out.wait_count(topics.results, 1, timeout=60)
            if not retry_in_doubt:
                await out.wait_count(topics.dlq, 1)
            [result] = out.values(topics.results)
            effects = _effects(out, topics)
            dead = [orjson.loads(r.value) for r in out.records[topics.dlq]]
            headers = [dict(r.headers) for r in out.records[topics.dlq]]
        key = server.calls[0][1]
        if retry_in_doubt:
            assert [(p, k) for p, k, _ in server.calls] == [("/charge", key), ("/charge", key)]
            assert (result["status"], result["attempts"]) == ("success", 2)
            assert result["output"]["receipt"] == {"charged": 7, "call": 2}
            assert effects == [("charge", key, "called", 2)]
            assert dead == []
            return
        assert [(p, k) for p, k, _ in server.calls] == [("/charge", key)]
        assert (result["status"], result["attempts"]) == ("error", 2)
        assert result["error"]["type"] == "EffectInDoubt"
        assert result["error"]["message"].startswith(f"effect 'charge' (key {key}) is in doubt")
        assert effects == [("charge", key, "in_doubt", 1)]
        assert dead == [body]
        reason = headers[0]["x-graphwire-error"].decode()
        assert reason.startswith(f"graph failed: effect 'charge' (key {key}) is in doubt")
    finally:
        first.stop()
        if second:
            second.stop()


@pytest.mark.integration
async def test_chat_killed_mid_run_ran_its_effectful_tool_once(
    bootstrap: str, topics: TopicNames, worker_env: dict[str, str], worker_log: Path,
    server: EffectServer,
) -> None:
    """chat with a once_tool ``add``: killed after the tool's call and before its tools node
    ended; the re-run replays the tool call, answers 42, and the server saw one call."""
    env = {**worker_env, "GRAPHWIRE_GRAPHS": "chat=tests.effect_graphs:make_effect_chat",
           "EFFECT_SERVER_URL": server.url}
    first, second = WorkerProcess(env, log_path=worker_log).start(), None
    body = request("chat-1", graph="chat", input={
        "messages": [{"role": "user", "content": "What is 19 + 23?"}]})
    try:
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await produce(bootstrap, topics.requests, [(b"k", encode(body))])
            second = await _kill_after(
                out, first, lambda: any(e[2] == "called" for e in _effects(out, topics)),
                env, worker_log)
            await out.wait_count(topics.results, 1, timeout=60)
            [result] = out.values(topics.results)
            effects = _effects(out, topics)
        [(path, key, call)] = server.calls
        assert (path, call) == ("/add", {"a": 19, "b": 23})
        assert (result["status"], result["attempts"]) == ("success", 2)
        assert result["output"]["messages"][-1]["content"] == "The answer is 42."
        assert effects == [("tools", key, "called", 1), ("tools", key, "replayed", 1)]
    finally:
        first.stop()
        if second:
            second.stop()


@pytest.mark.integration
async def test_a_runner_retry_of_a_retriable_error_keeps_the_key_and_the_effect(
    bootstrap: str, topics: TopicNames, settings: Settings, server: EffectServer,
) -> None:
    """The node raises ConnectionError after its effect; the runner's retry (attempt 2) gets
    the same key and the recorded receipt: one call on the server, a success, and
    graphwire_effects_total counts one call and one replay."""
    registry = GraphRegistry.from_sources(specs="charge=tests.effect_graphs:make_flaky_charge")
    async with runner_for(settings, registry, retry_backoff_s=0.01) as runner:
        async with Collector(bootstrap, topics.results, topics.events) as out:
            await produce(bootstrap, topics.requests, [(b"k", encode(request(
                "retry-1", graph="charge", input={"url": server.url, "amount": 3})))])
            await out.wait_count(topics.results, 1)
            [result] = out.values(topics.results)
            effects = _effects(out, topics)
        counted = {o: runner.metrics.registry.get_sample_value(
            "graphwire_effects_total", {"outcome": o}) for o in ("called", "replayed")}
    assert counted == {"called": 1.0, "replayed": 1.0}
    [(_, key, _)] = server.calls
    assert (result["status"], result["attempts"]) == ("success", 2)
    assert result["output"]["receipt"] == {"charged": 3, "call": 1}
    assert effects == [("charge", key, "called", 1), ("charge", key, "replayed", 1)]


async def test_effect_events_land_in_the_audit_record_and_runs_show(prefix: str) -> None:
    """The sink stores a run's effect events like any other; `graphwire runs show` lists them
    again under ``effects``, in order."""
    from graphwire.processors.audit.db import migrate
    from graphwire.processors.audit.rows import Record, to_row
    from graphwire.processors.audit.writer import AuditWriter
    from graphwire.topics.codec import event_dict, result_dict

    schema, names = f"{prefix}_audit", TopicNames(prefix)
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    await migrate(conn, schema)
    writer = AuditWriter(TEST_DATABASE_URL, schema=schema)
    try:
        data = [("called", 1), ("replayed", 1)]
        records = [
            Record(names.events, 0, i, b"r1", orjson.dumps(event_dict(
                "r1", i, "effect", "charge", "charge",
                {"name": "charge", "key": "gw-k", "outcome": outcome, "calls": calls}, {},
            )), [], 1_700_000_000.0)
            for i, (outcome, calls) in enumerate(data)
        ]
        result = result_dict("r1", "charge", "success", output={"ok": True}, attempts=2)
        records.append(Record(names.results, 0, 0, b"r1", orjson.dumps(result), [],
                              1_700_000_001.0))
        await writer.write([to_row(r, names, max_request_bytes=1 << 20) for r in records])
        shown = await asyncio.to_thread(graphwire, "runs", "show", "r1", env={
            "GRAPHWIRE_DATABASE_URL": TEST_DATABASE_URL, "GRAPHWIRE_AUDIT_SCHEMA": schema})
    finally:
        await writer.close()
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    assert shown.returncode == 0, shown.stderr
    run = orjson.loads(shown.stdout)
    assert [e["type"] for e in run["events"]] == ["effect", "effect"]
    assert run["effects"] == [
        {"seq": 0, "node": "charge", "name": "charge", "key": "gw-k", "outcome": "called",
         "calls": 1},
        {"seq": 1, "node": "charge", "name": "charge", "key": "gw-k", "outcome": "replayed",
         "calls": 1},
    ]


async def test_with_an_encryption_key_results_are_stored_encrypted(
    worker_env: dict[str, str], prefix: str
) -> None:
    """With GRAPHWIRE_CHECKPOINT_ENCRYPTION_KEY the journal holds the result sealed (no JSON
    column), and a replay decrypts it."""
    async with CheckpointStore(TEST_DATABASE_URL, schema=prefix, pool_size=2,
                               encryption_key="0123456789abcdef") as sealed_store:
        journal = sealed_store.effects
        assert journal is not None
        intent = EffectIntent("k1", "th", "r1", "charge", "node", False)
        await journal.begin(intent)
        await journal.finish("k1", orjson.dumps({"card": "4242"}), None)
        replay = await journal.begin(intent)
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        row = await conn.fetchrow(
            f'SELECT result, sealed, cipher FROM "{prefix}".graphwire_effects WHERE key = $1', "k1"
        )
    finally:
        await conn.close()
    assert (replay.state, replay.result) == ("done", {"card": "4242"})
    assert row["result"] is None and row["cipher"] == "aes"
    assert b"4242" not in row["sealed"]
