"""Event positions survive a resumed run: every try of a request numbers its events from its own
base, so the Python client, the gateway's SSE stream and the audit table, which all dedupe on
(request_id, seq), get every event and the run_finished. Real broker, Redis, PostgreSQL, worker
processes stopped by SIGTERM and SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pydantic import SecretStr

from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.dev.broker import DevBroker
from graphwire.processors.gateway.auth import Principal, hash_key
from graphwire.processors.runner.runner import GraphRunner
from graphwire.processors.settings import Settings
from graphwire.topics.admin import ensure_topics
from graphwire.topics.client import GraphwireClient
from graphwire.topics.models import Event
from graphwire.topics.specs import TopicNames
from tests.conftest import PARTITIONS, TEST_DATABASE_URL
from tests.gateway_helpers import serve
from tests.helpers import eventually
from tests.kafka_helpers import WorkerProcess
from tests.private_services import PrivatePostgres
from tests.test_durable import _node_runs_table, _wait_for_node
from tests.test_gateway import sse

pytestmark = pytest.mark.integration

KEY = "gw_test_key_positions_0123456789"
HEADERS = {"X-API-Key": KEY}
SCOPE = Principal("api_key", "svc-positions", frozenset(), 0).scope
GRAPHS = (
    "steps=tests.sample_graphs:make_recorded_steps,"
    "flaky_steps=tests.sample_graphs:make_flaky_steps"
)

Seen = list[tuple[int, str, str | None]]


def pos(delivery_attempt: int, try_index: int, i: int) -> int:
    """The position the contract promises (README, "Event positions"), written out again here."""
    return (delivery_attempt * 256 + try_index) * 2**24 + i


class Watchers:
    """The three consumers of a run's events: the Python client, the SSE stream, the audit table."""

    def __init__(
        self, http: httpx.AsyncClient, client: GraphwireClient, settings: Settings
    ) -> None:
        self.http = http
        self.settings = settings
        self.client = client
        self.prefix = settings.topic_prefix
        self.request_id = f"{SCOPE}.{uuid.uuid4().hex}"
        self._reading: asyncio.Task[list[Event]] | None = None
        self._streaming: asyncio.Task[httpx.Response] | None = None
        self.client_replayed: list[int] = []
        """The seqs of the replayed events ``client.events()`` yielded."""
        self.sse_replayed: list[int] = []
        """The seqs of the replayed events of the SSE stream."""

    def submit(self, graph: str, input_data: dict[str, Any]) -> None:
        """Watch with the client, then submit through the gateway's stream endpoint."""
        self.client.watch(self.request_id)
        self._reading = asyncio.create_task(self._read())
        own = self.request_id.partition(".")[2]
        body = {"workflow_name": graph, "input_data": input_data, "request_id": own}
        self._streaming = asyncio.create_task(
            self.http.post("/workflow/stream", json=body, headers=HEADERS)
        )

    async def _read(self) -> list[Event]:
        return [e async for e in self.client.events(self.request_id)]

    async def client_events(self) -> Seen:
        """What ``client.events()`` yielded, up to and including run_finished."""
        assert self._reading is not None
        events = await asyncio.wait_for(self._reading, 120)
        self.client_replayed = [e.seq for e in events if e.replayed]
        return [(e.seq, e.type, e.node) for e in events]

    async def sse_frames(self) -> tuple[Seen, dict[str, Any]]:
        """The SSE stream's event frames (``id:`` checked against the data) and its result."""
        assert self._streaming is not None
        response = await asyncio.wait_for(self._streaming, 120)
        assert response.status_code == 200, response.text
        frames = sse(response.text)
        assert frames[-1]["event"] == "result", frames[-1]
        events = frames[:-1]
        assert all(int(f["id"]) == f["data"]["seq"] for f in events)
        self.sse_replayed = [f["data"]["seq"] for f in events if f["data"].get("replayed")]
        return [(f["data"]["seq"], f["event"], f["data"]["node"]) for f in events], frames[-1][
            "data"
        ]

    async def audit_rows(self, count: int) -> Seen:
        """The audit table's events of the request, once ``count`` are there (60 s at most)."""
        conn = await asyncpg.connect(
            TEST_DATABASE_URL, server_settings={"search_path": self.prefix}
        )
        try:
            rows: list[Any] = []
            for _ in range(600):
                try:
                    rows = await conn.fetch(
                        "SELECT seq, type, node FROM graphwire_events WHERE request_id = $1 "
                        "ORDER BY seq",
                        self.request_id,
                    )
                except asyncpg.UndefinedTableError:
                    rows = []
                if len(rows) >= count:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # nothing more may arrive
            rows = await conn.fetch(
                "SELECT seq, type, node FROM graphwire_events WHERE request_id = $1 ORDER BY seq",
                self.request_id,
            )
            return [(r["seq"], r["type"], r["node"]) for r in rows]
        finally:
            await conn.close()


@asynccontextmanager
async def watchers(worker_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Watchers]:
    """The audit sink (a process), the gateway (in this loop) and a client, on this test's
    topics; the sink writes to the test's own schema."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    audit_env = {**worker_env, "GRAPHWIRE_AUDIT_SCHEMA": prefix,
                 "GRAPHWIRE_AUDIT_GROUP_ID": f"{prefix}-audit",
                 "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.1", "GRAPHWIRE_AUDIT_HTTP_PORT": "0"}
    sink = WorkerProcess(audit_env, "--migrate", command="audit",
                         log_path=tmp_path / "sink.log").start()
    keys = [{"name": "svc-positions", "key_sha256": hash_key(KEY), "graphs": ["*"]}]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{k.removeprefix("GRAPHWIRE_").lower(): v for k, v in worker_env.items()},
        gateway_api_keys=SecretStr(orjson.dumps(keys).decode()),
        audit_schema=prefix,
        gateway_wait_timeout_s=120,
    )
    try:
        async with serve(settings) as http, GraphwireClient(
            worker_env["GRAPHWIRE_BOOTSTRAP_SERVERS"], topic_prefix=prefix
        ) as client:
            yield Watchers(http, client, settings)
    finally:
        sink.stop()


async def _assert_everyone_saw(
    watch: Watchers, expected: Seen, replayed: list[int] | None = None
) -> dict[str, Any]:
    """The client, the SSE stream and the audit table each hold exactly ``expected``; the
    client and the SSE stream mark exactly the seqs ``replayed`` (none by default) as replays."""
    assert await watch.client_events() == expected
    streamed, result = await watch.sse_frames()
    assert streamed == expected
    assert await watch.audit_rows(len(expected)) == expected
    assert watch.client_replayed == watch.sse_replayed == (replayed or [])
    return result


async def test_drained_run_resumed_on_a_second_worker_keeps_every_event(
    topics: TopicNames, worker_env: dict[str, str], worker_log: Path, prefix: str, tmp_path: Path
) -> None:
    """SIGTERM during step3 of 4 (the drain), resumed on a second worker: attempt 1's four events,
    then attempt 2's from a higher base (step1-3 replayed, then step4); all three consumers get
    step4 and run_finished."""
    conn, table = await _node_runs_table(prefix)
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS}
    first = WorkerProcess(env, log_path=worker_log).start()
    second = None
    try:
        async with watchers(worker_env, tmp_path) as watch:
            watch.submit("steps", {"table": table, "pause": 2})
            await _wait_for_node(conn, table, "step3")
            assert await asyncio.to_thread(first.terminate) == 0
            second = WorkerProcess(env, log_path=worker_log).start()
            expected: Seen = [
                (pos(1, 0, 0), "run_started", None),
                (pos(1, 0, 1), "node", "step1"),
                (pos(1, 0, 2), "node", "step2"),
                (pos(1, 0, 3), "node", "step3"),
                (pos(2, 0, 0), "run_started", None),
                (pos(2, 0, 1), "node", "step1"),  # replays of the steps attempt 1 finished
                (pos(2, 0, 2), "node", "step2"),
                (pos(2, 0, 3), "node", "step3"),
                (pos(2, 0, 4), "node", "step4"),
                (pos(2, 0, 5), "run_finished", None),
            ]
            result = await _assert_everyone_saw(watch, expected, [pos(2, 0, i) for i in (1, 2, 3)])
            # a gateway that never saw the run reads it back from the audit table, across the
            # try boundary, from the start and from the last event of attempt 1
            async with serve(watch.settings) as other:
                url = f"/workflow/stream/{watch.request_id}"
                replayed = sse((await other.get(url, headers=HEADERS)).text)
                rest = sse((await other.get(
                    url, headers={**HEADERS, "Last-Event-ID": str(pos(1, 0, 3))})).text)
        assert [f.get("id") for f in replayed] == [str(seq) for seq, _, _ in expected] + [None]
        assert [f.get("id") for f in rest] == [str(pos(2, 0, i)) for i in range(6)] + [None]
        assert [f["event"] for f in rest] == ["run_started", *["node"] * 4, "run_finished",
                                              "result"]
        assert (result["status"], result["attempts"]) == ("success", 2)
        assert result["output"]["done"] == ["step1", "step2", "step3", "step4"]
    finally:
        first.stop()
        if second:
            second.stop()
        await conn.close()


async def test_sigkilled_run_redelivered_keeps_every_event(
    topics: TopicNames, worker_env: dict[str, str], worker_log: Path, prefix: str, tmp_path: Path
) -> None:
    """SIGKILL during step3 (no drain, its event never sent), redelivered to a second worker that
    resumes from step2's checkpoint: step1 and step2 replayed, then step3, step4 and
    run_finished at attempt 2's positions."""
    conn, table = await _node_runs_table(prefix)
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS}
    first = WorkerProcess(env, log_path=worker_log).start()
    second = None
    try:
        async with watchers(worker_env, tmp_path) as watch:
            watch.submit("steps", {"table": table, "pause": 4})
            await _wait_for_node(conn, table, "step3")
            first.kill()
            second = WorkerProcess(env, log_path=worker_log).start()
            result = await _assert_everyone_saw(watch, [
                (pos(1, 0, 0), "run_started", None),
                (pos(1, 0, 1), "node", "step1"),
                (pos(1, 0, 2), "node", "step2"),
                (pos(2, 0, 0), "run_started", None),
                (pos(2, 0, 1), "node", "step1"),  # replays of the steps attempt 1 finished
                (pos(2, 0, 2), "node", "step2"),
                (pos(2, 0, 3), "node", "step3"),
                (pos(2, 0, 4), "node", "step4"),
                (pos(2, 0, 5), "run_finished", None),
            ], [pos(2, 0, 1), pos(2, 0, 2)])
        assert (result["status"], result["attempts"]) == ("success", 2)
        assert result["output"]["done"] == ["step1", "step2", "step3", "step4"]
    finally:
        first.stop()
        if second:
            second.stop()
        await conn.close()


async def _checkpointed(prefix: str, thread: str, step: int) -> None:
    """Wait (30 s at most) until the thread's checkpoint of LangGraph step ``step`` (the one
    written after the graph's ``step``-th node, for ``steps``) is in PostgreSQL."""
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await eventually(lambda: conn.fetchval(
            f'SELECT count(*) FROM "{prefix}".checkpoints WHERE thread_id = $1 '
            "AND checkpoint_ns = '' AND (metadata->>'step')::int = $2", thread, step),
            30, what=f"the checkpoint of step {step}")
    finally:
        await conn.close()


async def _killed_between_checkpoint_and_ack(
    worker_env: dict[str, str], worker_log: Path, prefix: str, tmp_path: Path,
    stop_during: str, pauses: dict[str, float], checkpointed: int,
) -> tuple[Watchers, Seen, dict[str, Any]]:
    """Run ``steps`` on a private broker; pause the broker (SIGSTOP) while ``stop_during`` runs,
    so the event of that step is the one produce request in flight and the events after it
    wait in the worker (aiokafka sends one request to a broker at a time). Once the checkpoint
    of LangGraph step ``checkpointed`` is written, SIGKILL the worker, resume the broker and
    start a second worker. Returns the watchers, what the client saw and the result."""
    conn, table = await _node_runs_table(prefix)
    with DevBroker(log_file=tmp_path / "broker.log") as broker:
        assert broker.pid is not None
        await ensure_topics(broker.bootstrap_servers, TopicNames(prefix).specs(PARTITIONS))
        env = {**worker_env, "GRAPHWIRE_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
        first = WorkerProcess({**env, "GRAPHWIRE_GRAPHS": GRAPHS}, log_path=worker_log).start()
        second = None
        try:
            async with watchers(env, tmp_path) as watch:
                watch.submit("steps", {"table": table, "pauses": pauses})
                before = {"step2": "step1", "step3": "step2"}[stop_during]
                await eventually(lambda: any(  # the step before's event was acknowledged
                    e.node == before for e in watch.client.seen_events(watch.request_id)),
                    30, what=f"{before}'s event")
                await _wait_for_node(conn, table, stop_during)
                os.kill(broker.pid, signal.SIGSTOP)
                try:
                    await _checkpointed(prefix, watch.request_id, checkpointed)
                    first.kill()
                finally:
                    os.kill(broker.pid, signal.SIGCONT)
                second = WorkerProcess({**env, "GRAPHWIRE_GRAPHS": GRAPHS},
                                       log_path=worker_log).start()
                seen = await watch.client_events()
                streamed, result = await watch.sse_frames()
                assert streamed == seen
                assert await watch.audit_rows(len(seen)) == seen
                assert watch.client_replayed == watch.sse_replayed
                return watch, seen, result
        finally:
            first.stop()
            if second:
                second.stop()
            await conn.close()


async def test_sigkill_after_a_step_checkpoint_before_its_ack_replays_the_step(
    worker_env: dict[str, str], worker_log: Path, prefix: str, tmp_path: Path
) -> None:
    """The broker paused during step2: step2's event is in flight, step3's waits in the worker;
    step3's checkpoint is written, then the worker is SIGKILLed (step4 running). The second
    worker resumes at step4 after replaying step1-3 (replayed: true): every consumer holds
    step3, which no start published live, and every node, ending at run_finished."""
    watch, seen, result = await _killed_between_checkpoint_and_ack(
        worker_env, worker_log, prefix, tmp_path, "step2",
        {"step2": 1.0, "step3": 0.5, "step4": 3.0}, checkpointed=3)
    first_try: Seen = [(pos(1, 0, 0), "run_started", None), (pos(1, 0, 1), "node", "step1")]
    second_try: Seen = [
        (pos(2, 0, 0), "run_started", None),
        (pos(2, 0, 1), "node", "step1"),
        (pos(2, 0, 2), "node", "step2"),
        (pos(2, 0, 3), "node", "step3"),
        (pos(2, 0, 4), "node", "step4"),
        (pos(2, 0, 5), "run_finished", None),
    ]
    # step2's event had reached the broker's socket when it was paused: the broker may append
    # it once it runs again (no acknowledgement reached the dead worker); step3's never left
    assert seen in (
        first_try + second_try,
        [*first_try, (pos(1, 0, 2), "node", "step2"), *second_try],
    )
    assert watch.client_replayed == [pos(2, 0, i) for i in (1, 2, 3)]
    assert (result["status"], result["attempts"]) == ("success", 2)
    assert result["output"]["done"] == ["step1", "step2", "step3", "step4"]


async def test_sigkill_after_the_last_checkpoint_before_its_ack_replays_the_whole_run(
    worker_env: dict[str, str], worker_log: Path, prefix: str, tmp_path: Path
) -> None:
    """The broker paused during step3: step3's event is in flight, step4's waits in the worker;
    the run's last checkpoint is written (its result may be kept in Redis too), then the worker
    is SIGKILLed. The second worker runs nothing: it replays step1-4 (replayed: true) and
    publishes the result; every consumer holds step4 and ends at run_finished."""
    watch, seen, result = await _killed_between_checkpoint_and_ack(
        worker_env, worker_log, prefix, tmp_path, "step3",
        {"step3": 1.0, "step4": 0.5}, checkpointed=4)
    first_try: Seen = [
        (pos(1, 0, 0), "run_started", None),
        (pos(1, 0, 1), "node", "step1"),
        (pos(1, 0, 2), "node", "step2"),
    ]
    second_try: Seen = [
        (pos(2, 0, 0), "run_started", None),
        *[(pos(2, 0, i), "node", f"step{i}") for i in range(1, 5)],
        (pos(2, 0, 5), "run_finished", None),
    ]
    assert seen in (
        first_try + second_try,
        [*first_try, (pos(1, 0, 3), "node", "step3"), *second_try],
    )
    assert watch.client_replayed == [pos(2, 0, i) for i in range(1, 5)]
    # the first worker kept its result in Redis right after the last checkpoint (Redis was not
    # paused) unless the kill came first: the second publishes that one again (attempts 1,
    # its run_started says republished), else the finished run's state (attempts 2)
    restart = [e.data for e in watch.client.seen_events(watch.request_id)
               if e.type == "run_started"][-1]
    assert (result["status"], result["attempts"]) == ("success", 1 if restart.get(
        "republished") else 2)
    assert (restart["attempt"], restart["resumed"]) == (2, True)
    assert result["output"]["done"] == ["step1", "step2", "step3", "step4"]


async def test_retry_after_a_retriable_error_opens_a_new_try(
    topics: TopicNames, worker_env: dict[str, str], worker_log: Path, tmp_path: Path
) -> None:
    """step2 raises ConnectionError once: the retry in the same process is try 1 of attempt 1,
    with its own run_started (resumed) and positions; every consumer gets every event."""
    env = {**worker_env, "GRAPHWIRE_GRAPHS": GRAPHS, "GRAPHWIRE_RETRY_BACKOFF_S": "0.05"}
    worker = WorkerProcess(env, log_path=worker_log).start()
    try:
        async with watchers(worker_env, tmp_path) as watch:
            watch.submit("flaky_steps", {})
            result = await _assert_everyone_saw(watch, [
                (pos(1, 0, 0), "run_started", None),
                (pos(1, 0, 1), "node", "step1"),
                (pos(1, 1, 0), "run_started", None),
                (pos(1, 1, 1), "node", "step2"),
                (pos(1, 1, 2), "node", "step3"),
                (pos(1, 1, 3), "run_finished", None),
            ])
            starts = [e for e in watch.client.seen_events(watch.request_id)
                      if e.type == "run_started"]
        assert [(s.data["attempt"], s.data["resumed"]) for s in starts] == [(1, False), (2, True)]
        assert (result["status"], result["attempts"]) == ("success", 2)
        assert result["output"]["done"] == ["step1", "step2", "step3"]
    finally:
        worker.stop()


async def test_outage_retry_after_postgres_returns_keeps_every_event(
    topics: TopicNames, settings: Settings, worker_env: dict[str, str], tmp_path: Path
) -> None:
    """The checkpoints' PostgreSQL (a private server) crashes during step2: the runner waits
    out the outage and starts the request again (attempt 2, from step1's checkpoint): step1
    replayed, then step2 and step3 at attempt 2's positions; all three consumers hold the
    same events."""
    pg = await asyncio.to_thread(PrivatePostgres)
    await asyncio.to_thread(pg.start)
    try:
        private = settings.model_copy(update={
            "database_url": settings.database_url.__class__(pg.url),
            "checkpoint_schema": None,
            "durability": "sync",
        })
        registry = GraphRegistry.from_sources(specs="paused=tests.sample_graphs:make_paused_steps")
        async with GraphRunner(private, registry), watchers(worker_env, tmp_path) as watch:
            watch.submit("paused", {"pause": 3})
            for _ in range(300):
                if any(e.node == "step1" for e in watch.client.seen_events(watch.request_id)):
                    break
                await asyncio.sleep(0.1)
            await asyncio.to_thread(pg.stop)  # step2 sleeps on; its checkpoint cannot be saved
            await asyncio.sleep(5)
            await asyncio.to_thread(pg.start)
            seen = await watch.client_events()
            streamed, result = await watch.sse_frames()
            stored = await watch.audit_rows(len(seen))
    finally:
        await asyncio.to_thread(pg.remove)
    first_try: Seen = [(pos(1, 0, 0), "run_started", None), (pos(1, 0, 1), "node", "step1")]
    second_try: Seen = [
        (pos(2, 0, 0), "run_started", None),
        (pos(2, 0, 1), "node", "step1"),  # the replay of the step attempt 1 finished
        (pos(2, 0, 2), "node", "step2"),
        (pos(2, 0, 3), "node", "step3"),
        (pos(2, 0, 4), "run_finished", None),
    ]
    # step2's own event may or may not have left before its checkpoint failed: if it did, it
    # keeps attempt 1's position and step2 is sent again, after attempt 2's run_started
    assert seen in (
        first_try + second_try,
        [*first_try, (pos(1, 0, 2), "node", "step2"), *second_try],
    )
    assert streamed == seen
    assert stored == seen
    assert watch.client_replayed == watch.sse_replayed == [pos(2, 0, 1)]
    assert (result["status"], result["attempts"]) == ("success", 2)
    assert result["output"]["done"] == ["step1", "step2", "step3"]


def test_next_event_follows_a_try_then_moves_on_to_the_next_run_started() -> None:
    """next_event: +1 within a try; a gap holding a later run_started jumps to the first one;
    a gap without one waits (None); positions past 2**53 are refused with the bound."""
    from graphwire.topics.positions import event_position, next_event

    def event(seq: int, type_: str) -> Event:
        return Event(request_id="r", seq=seq, type=type_, graph="g", ts=0.0)  # type: ignore[arg-type]

    held = {e.seq: e for e in [
        event(pos(1, 0, 0), "run_started"), event(pos(1, 0, 1), "node"),
        event(pos(2, 0, 0), "run_started"), event(pos(3, 1, 0), "run_started"),
        event(pos(3, 1, 1), "node"),
    ]}
    walked, last = [], -1
    while (found := next_event(held, last)) is not None:
        walked.append(found.seq)
        last = found.seq
    assert walked == [pos(1, 0, 0), pos(1, 0, 1), pos(2, 0, 0), pos(3, 1, 0), pos(3, 1, 1)]
    assert next_event({pos(1, 0, 3): event(pos(1, 0, 3), "node")}, pos(1, 0, 1)) is None
    assert event_position(2**21 - 1, 255, 2**24 - 1) == 2**53 - 1
    with pytest.raises(ValueError, match=r"delivery attempt 2097152 is outside 1\.\.2097151"):
        event_position(2**21, 0, 0)
    with pytest.raises(ValueError, match="past the 16777216 a try may publish"):
        event_position(1, 0, 2**24)


def test_kept_events_hold_by_position_and_drop_the_oldest_arrival() -> None:
    """KeptEvents: arrival order for dropping, one event per position (the later arrival of a
    record published twice), the run_started positions ascending, the lowest position held;
    next_event with those starts walks the same path as next_event scanning."""
    from graphwire.topics.positions import KeptEvents, next_event

    def event(seq: int, type_: str, node: str | None = None) -> Event:
        return Event(request_id="r", seq=seq, type=type_, graph="g", node=node,  # type: ignore[arg-type]
                     ts=0.0)

    kept = KeptEvents()
    arrivals = [
        event(pos(1, 0, 0), "run_started"), event(pos(1, 0, 1), "node", "a"),
        event(pos(2, 0, 0), "run_started"), event(pos(1, 0, 1), "node", "again"),
        event(pos(2, 0, 1), "node", "b"), event(pos(3, 1, 0), "run_started"),
    ]
    for size, item in enumerate(arrivals, start=10):
        kept.add(item, size)
    assert len(kept) == 6
    assert [e.seq for e in kept.in_order()] == [
        pos(1, 0, 0), pos(1, 0, 1), pos(2, 0, 0), pos(2, 0, 1), pos(3, 1, 0)]
    assert kept.by_seq[pos(1, 0, 1)].node == "again"
    assert kept.starts == [pos(1, 0, 0), pos(2, 0, 0), pos(3, 1, 0)]
    assert kept.first == pos(1, 0, 0)

    def walk(after: int, starts: bool) -> list[int]:
        walked = []
        while (found := next_event(kept.by_seq, after, kept.starts if starts else None)):
            walked.append(found.seq)
            after = found.seq
        return walked

    assert walk(-1, True) == walk(-1, False) == [
        pos(1, 0, 0), pos(1, 0, 1), pos(2, 0, 0), pos(2, 0, 1), pos(3, 1, 0)]
    assert walk(pos(2, 0, 0), True) == walk(pos(2, 0, 0), False) == [pos(2, 0, 1), pos(3, 1, 0)]

    assert kept.pop_oldest() == 10  # the first run_started: its position is gone
    assert kept.starts == [pos(2, 0, 0), pos(3, 1, 0)]
    assert kept.first == pos(1, 0, 1)
    assert kept.pop_oldest() == 11  # "a": replaced by "again", which stays held
    assert kept.by_seq[pos(1, 0, 1)].node == "again" and kept.first == pos(1, 0, 1)
    assert kept.pop_oldest() == 12
    assert kept.pop_oldest() == 13  # "again" now
    assert kept.first == pos(2, 0, 1) and kept.starts == [pos(3, 1, 0)]
    assert walk(-1, True) == walk(-1, False) == [pos(3, 1, 0)]
    kept.pop_oldest()
    kept.pop_oldest()
    assert (len(kept), kept.by_seq, kept.starts, kept.first) == (0, {}, [], None)
