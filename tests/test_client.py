"""GraphwireClient and its sync facade against a real worker on the test broker."""

from __future__ import annotations

import asyncio

import pytest

from graphwire.topics.client import GraphwireClient
from graphwire.topics.errors import GraphwireError, RunRejected, RunTimedOut
from graphwire.topics.positions import event_position
from graphwire.topics.specs import TopicNames
from graphwire.topics.syncclient import Client
from tests.conftest import TEST_REDIS_URL
from tests.kafka_helpers import WorkerProcess, wait_for_members

pytestmark = pytest.mark.integration


async def test_many_concurrent_requests_are_demultiplexed_from_one_consumer(
    bootstrap: str, topics: TopicNames, worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """One client submits 40 pipeline requests and awaits them concurrently: the results come back
    in the order of the ids, each with its own lowercased text; c7's events are numbered from
    2**32 without gaps, run_started first, run_finished last, nodes normalize, tokenize, count;
    the client's two consumers are assigned the 4 results and the 4 events partitions."""
    await wait_for_members(bootstrap, worker_env["GRAPHWIRE_GROUP_ID"], 1)
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix) as client:
        ids = [
            await client.submit("pipeline", {"text": f"Word{i} Other{i}"}, request_id=f"c{i}")
            for i in range(40)
        ]
        results = await asyncio.gather(*(client.result(rid, timeout=60) for rid in ids))
        assert [r.request_id for r in results] == ids
        assert [r.output["text"] for r in results] == [f"word{i} other{i}" for i in range(40)]
        events = [e async for e in client.events("c7")]
        assert [e.seq for e in events] == list(range(2**32, 2**32 + len(events)))
        assert events[0].type == "run_started"
        assert events[-1].type == "run_finished"
        assert [e.node for e in events if e.type == "node"] == ["normalize", "tokenize", "count"]
        assert client._consumer is not None and client._events_consumer is not None
        assert {tp.topic for tp in client._consumer.assignment()} == {topics.results}
        assert {tp.topic for tp in client._events_consumer.assignment()} == {topics.events}
        assert len(client._consumer.assignment()) == len(client._events_consumer.assignment()) == 4


async def test_typed_errors_when_asked_and_results_otherwise(
    bootstrap: str, topics: TopicNames, worker: WorkerProcess
) -> None:
    """An unknown graph's result has status "rejected", and with raise_on_error it raises
    RunRejected naming UnknownGraph; a slow run with timeout_s 0.2 raises RunTimedOut carrying the
    "timeout" result; ``invoke("echo")`` returns success with its input as output."""
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix) as client:
        rejected = await client.submit("no-such-graph", {"x": 1})
        assert (await client.result(rejected, timeout=60)).status == "rejected"
        with pytest.raises(RunRejected, match="was rejected: UnknownGraph: unknown graph"):
            await client.result(rejected, timeout=60, raise_on_error=True)
        slow = await client.submit("slow", {"seconds": 5}, timeout_s=0.2)
        with pytest.raises(RunTimedOut) as caught:
            await client.result(slow, timeout=60, raise_on_error=True)
        assert caught.value.result.status == "timeout"  # type: ignore[attr-defined]
        ok = await client.invoke("echo", {"text": "x"}, wait_timeout=60)
        assert (ok.status, ok.output) == ("success", {"text": "x"})


async def test_resume_an_interrupted_thread(
    bootstrap: str, topics: TopicNames, worker: WorkerProcess
) -> None:
    """The approval graph on thread th-1 ends "interrupted" with a draft starting "Announcing t";
    resuming th-1 with approved False and comment "no" ends success with published False and that
    comment; resuming an unknown thread raises GraphwireError asking which graph runs it."""
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix) as client:
        first = await client.submit("approval", {"topic": "t"}, thread_id="th-1")
        asked = await client.result(first, timeout=60)
        assert asked.status == "interrupted"
        assert asked.interrupts[0]["value"]["draft"].startswith("Announcing t")
        second = await client.resume("th-1", {"approved": False, "comment": "no"})
        done = await client.result(second, timeout=60)
        assert (done.status, done.output["published"], done.output["comment"]) == (
            "success", False, "no"
        )
        with pytest.raises(GraphwireError, match="which graph runs thread 'other'"):
            await client.resume("other", {"approved": True})


async def test_a_client_started_after_the_result_finds_it_through_redis(
    bootstrap: str, topics: TopicNames, worker: WorkerProcess
) -> None:
    """A client started after a run finished finds its result (output {"text": "earlier"}) through
    Redis; a client without Redis reads only from its start position and times out after 1 s."""
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix) as first:
        rid = await first.submit("echo", {"text": "earlier"})
        await first.result(rid, timeout=60)
    async with GraphwireClient(
        bootstrap, topic_prefix=topics.prefix, redis_url=TEST_REDIS_URL
    ) as later:
        found = await later.result(rid, timeout=10)
        assert (found.request_id, found.output) == (rid, {"text": "earlier"})
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix) as no_redis:
        with pytest.raises(TimeoutError):  # reads from its start position only
            await no_redis.result(rid, timeout=1)


def test_sync_client_for_scripts(
    bootstrap: str, topics: TopicNames, worker: WorkerProcess
) -> None:
    """The synchronous client streams a pipeline run's events (run_started, 3 node events,
    run_finished), gets its result with count 2, and invokes echo returning {"text": "again"}."""
    with Client(bootstrap, topic_prefix=topics.prefix) as client:
        rid = client.submit("pipeline", {"text": "Sync Client"})
        kinds = [e.type for e in client.events(rid, timeout=60)]
        assert kinds == ["run_started", "node", "node", "node", "run_finished"]
        assert client.result(rid, timeout=60).output["count"] == 2
        result = client.invoke("echo", {"text": "again"}, wait_timeout=60)
        assert result.output == {"text": "again"}


async def test_memory_bounds_drop_the_oldest_events_and_results_and_count_them(
    bootstrap: str, topics: TopicNames, worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """Per run only the newest max_events_per_run events stay, in all at most max_kept_events
    (the runs with the oldest activity go first) and max_kept_results results; every dropped
    event is counted per run and in total."""
    await wait_for_members(bootstrap, worker_env["GRAPHWIRE_GROUP_ID"], 1)
    small = GraphwireClient(bootstrap, topic_prefix=topics.prefix, max_kept_results=3,
                            max_events_per_run=3, max_kept_events=7)
    few_runs = GraphwireClient(bootstrap, topic_prefix=topics.prefix, max_kept_results=2)
    async with small, few_runs:
        ids = ["ra", "rb", "rc", "rd"]
        for rid in ids:  # one after the other: the order of activity is the order of runs
            few_runs.watch(rid)
            await small.submit("pipeline", {"text": "A B"}, request_id=rid)  # 5 events
            await small.result(rid, timeout=60)
            await few_runs.result(rid, timeout=60)
            for client in (small, few_runs):
                for _ in range(200):
                    if len(client.seen_events(rid)) + client.dropped_events(rid) == 5:
                        break
                    await asyncio.sleep(0.05)
        kept = {rid: [e.seq - event_position(1, 0, 0) for e in small.seen_events(rid)]
                for rid in ids}
        assert kept == {"ra": [], "rb": [], "rc": [2, 3, 4], "rd": [2, 3, 4]}
        assert [small.dropped_events(rid) for rid in ids] == [5, 5, 2, 2]
        assert small.dropped_events_total == 14
        assert [small.known_result(rid) is not None for rid in ids] == [False, True, True, True]
        kept = {rid: [e.seq - event_position(1, 0, 0) for e in few_runs.seen_events(rid)]
                for rid in ids}
        assert kept == {"ra": [], "rb": [], "rc": [0, 1, 2, 3, 4], "rd": [0, 1, 2, 3, 4]}
        assert [few_runs.dropped_events(rid) for rid in ids] == [5, 5, 0, 0]
        assert [few_runs.known_result(rid) is not None for rid in ids] == [False, False, True,
                                                                          True]
        # an events() loop that needs a dropped event says so instead of waiting in vain
        with pytest.raises(GraphwireError) as dropped:
            async for _ in small.events("rc"):
                pass
        assert str(dropped.value) == (
            "2 events of 'rc' were dropped at this client's memory bound "
            "(max_events_per_run=3, max_kept_events=7) before events() read them: read the run "
            "with `graphwire runs show rc`, or raise the bounds")
        seen = [e.seq - event_position(1, 0, 0) async for e in small.events(
            "rc", after_seq=event_position(1, 0, 1))]
        assert seen == [2, 3, 4]


def test_memory_bounds_that_cannot_hold_one_run_are_refused() -> None:
    """A per-run bound above the total bound is refused at construction, saying what to do."""
    with pytest.raises(ValueError, match=r"needs 1 <= max_events_per_run <= max_kept_events "
                                         r"and max_kept_results >= 1 \(got 10, 5, 10000\); "
                                         r"raise max_kept_events"):
        GraphwireClient("127.0.0.1:9", max_events_per_run=10, max_kept_events=5)


async def test_events_are_read_only_while_a_request_wants_them(
    bootstrap: str, topics: TopicNames, worker: WorkerProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs submitted without keep_events leave the events partitions paused (their positions
    do not move: no event is fetched) while results come; events() of one of them resumes
    reading from where it paused and yields its whole stream (run_started, the three nodes,
    run_finished); 0.3 s after the last wanted result the partitions are paused again."""
    import graphwire.topics.client as client_module

    monkeypatch.setattr(client_module, "EVENTS_AFTER_RESULT_S", 0.3)
    monkeypatch.setattr(client_module, "WANTS_CHECK_S", 0.05)
    async with GraphwireClient(bootstrap, topic_prefix=topics.prefix) as client:
        consumer = client._events_consumer
        assert consumer is not None
        events_tps = consumer.assignment()
        assert len(events_tps) == 4 and consumer.paused() == events_tps
        start = {tp: await consumer.position(tp) for tp in events_tps}
        ids = [await client.submit_request(
            client.build_request("pipeline", {"text": f"A{i} B"}), keep_events=False)
            for i in range(5)]
        results = await asyncio.gather(*(client.result(rid, timeout=60) for rid in ids))
        assert [r.output["text"] for r in results] == [f"a{i} b" for i in range(5)]
        assert not client.reading_events
        assert {tp: await consumer.position(tp) for tp in events_tps} == start

        events = [e async for e in client.events(ids[2])]
        assert client.reading_events and not consumer.paused()
        assert [e.type for e in events] == ["run_started", "node", "node", "node", "run_finished"]
        assert [e.node for e in events if e.type == "node"] == ["normalize", "tokenize", "count"]
        for _ in range(100):
            if not client.reading_events:
                break
            await asyncio.sleep(0.05)
        assert consumer.paused() == events_tps
