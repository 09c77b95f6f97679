"""The Redis calls of concurrent runs share pipelined round trips (RedisBatcher), and every
caller still gets its own answer: the same claims, attempts, LeaseLost and outage errors as
one round trip per call gave.

Round trips are counted on both ends: the batcher's pipelines, and the reads of a private
Redis server (``total_reads_processed``: one per socket read, so a pipeline is one read and
a lone command another), which no other test or developer talks to."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from graphwire.processors.runner.claims import Claim, LeaseLost, RedisClaims
from graphwire.topics.errors import DependencyUnavailable
from graphwire.topics.runstatus import run_keys
from tests.private_services import PrivateRedis

pytestmark = pytest.mark.integration

N = 64


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _reads(admin: Redis) -> int:
    """The server's socket reads so far, not counting this INFO's own read."""
    return int((await admin.info("stats"))["total_reads_processed"]) - 1


def _outcome(result: Claim | BaseException | None) -> tuple[object, ...]:
    if isinstance(result, BaseException):
        return ("error", type(result).__name__)
    if result is None:
        return ("ok",)
    return (result.state, result.attempt, result.detail, result.deaths)


async def test_concurrent_calls_share_round_trips_and_keep_their_own_answers(
    private_redis: PrivateRedis, prefix: str
) -> None:
    """64 concurrent acquires of one store go out in 1 pipeline (<= 2 server reads, not 64):
    done, busy, fresh and re-started request_ids each get their own claim; then 64 concurrent
    keep_result/complete calls give LeaseLost exactly to the runs whose lease was taken."""
    admin = Redis.from_url(private_redis.url)
    rids = [f"r{i}" for i in range(N)]
    async with (
        RedisClaims(private_redis.url, namespace=prefix) as store,
        RedisClaims(private_redis.url, namespace=prefix) as other,
    ):
        for rid in rids[:16]:  # done by another worker
            await other.acquire(rid, "w-other")
            await other.complete(rid, "w-other", "success")
        for rid in rids[16:32]:  # running on another worker
            await other.acquire(rid, "w-other")
        for rid in rids[32:48]:  # started once before, drained cleanly
            await other.acquire(rid, "w-other")
            await other.release(rid, "w-other")

        trips, reads = store.batcher.round_trips, await _reads(admin)
        claims = await asyncio.gather(*(store.acquire(rid, "w-me") for rid in rids))
        acquire_reads = await _reads(admin) - reads - 1  # minus the first INFO's reply read
        acquire_trips = store.batcher.round_trips - trips

        # another worker took the lease of r48..r55 (ours expired): their results must not be kept
        for rid in rids[48:56]:
            await admin.set(run_keys(prefix, rid).lease, "w-thief")
        acquired = rids[32:]
        trips = store.batcher.round_trips
        kept = await asyncio.gather(
            *(store.keep_result(rid, "w-me", rid.encode(), None) for rid in acquired),
            return_exceptions=True,
        )
        done = await asyncio.gather(
            *(store.complete(rid, "w-me", "success") for rid in acquired)
        )
        finish_trips = store.batcher.round_trips - trips
        again = await asyncio.gather(*(other.acquire(rid, "w-other") for rid in rids[32:34]))
    await admin.aclose()

    assert acquire_trips == 1
    assert acquire_reads <= 2  # one pipeline (a large one may span two reads), not 64 calls
    assert [_outcome(c) for c in claims] == (
        [("done", 0, "success", 0)] * 16
        + [("busy", 0, "w-other", 0)] * 16
        + [("acquired", 2, "", 0)] * 16
        + [("acquired", 1, "", 0)] * 16
    )
    assert [_outcome(k) for k in kept] == (
        [("ok",)] * 16 + [("error", "LeaseLost")] * 8 + [("ok",)] * 8
    )
    assert all(isinstance(k, LeaseLost) for k in kept[16:24])
    assert done == [None] * 32
    assert finish_trips == 2  # 32 keep_result in one, 32 complete in one
    assert [_outcome(c) for c in again] == [("done", 0, "success", 0)] * 2


async def test_a_script_error_stays_with_its_own_call_in_a_shared_round_trip(
    private_redis: PrivateRedis, prefix: str
) -> None:
    """In one pipeline of 8 acquires, the one whose lease key holds a hash (WRONGTYPE) gets
    DependencyUnavailable; the 7 others are acquired with attempt 1."""
    admin = Redis.from_url(private_redis.url)
    await admin.hset(run_keys(prefix, "r3").lease, "x", "y")
    async with RedisClaims(private_redis.url, namespace=prefix) as store:
        await store.acquire("warm-up", "w-me")  # a fresh server: NOSCRIPT, then loaded
        trips = store.batcher.round_trips
        claims = await asyncio.gather(
            *(store.acquire(f"r{i}", "w-me") for i in range(8)), return_exceptions=True
        )
        trips = store.batcher.round_trips - trips
    await admin.aclose()
    assert trips == 1
    assert [_outcome(c) for c in claims] == (
        [("acquired", 1, "", 0)] * 3
        + [("error", "DependencyUnavailable")]
        + [("acquired", 1, "", 0)] * 4
    )
    error = claims[3]
    assert isinstance(error, DependencyUnavailable)
    assert "WRONGTYPE" in str(error) and "uncommitted until Redis answers" in str(error)


async def test_a_redis_outage_mid_batch_fails_each_caller_then_the_store_recovers(
    private_redis: PrivateRedis, prefix: str
) -> None:
    """Redis paused with 16 acquires in flight and 16 more queued behind them, then killed:
    all 32 callers get DependencyUnavailable (none hangs, none gets a claim); after a restart
    (scripts gone: NOSCRIPT, reloaded once) 4 concurrent acquires get attempt 1 each."""
    async with RedisClaims(private_redis.url, namespace=prefix) as store:
        pauser = Redis.from_url(private_redis.url)
        await pauser.execute_command("CLIENT", "PAUSE", 5000, "ALL")
        first = [asyncio.create_task(store.acquire(f"a{i}", "w-me")) for i in range(16)]
        await asyncio.sleep(0.3)  # the first pipeline is sent and blocked by the pause
        second = [asyncio.create_task(store.acquire(f"b{i}", "w-me")) for i in range(16)]
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in first + second)
        in_flight_trips = store.batcher.round_trips
        private_redis.stop()  # SIGKILL: the connection drops mid-round-trip
        results = await asyncio.wait_for(
            asyncio.gather(*first, *second, return_exceptions=True), timeout=60
        )
        await pauser.aclose()

        private_redis.start()  # same port, empty: no keys, no scripts
        trips = store.batcher.round_trips
        after = await asyncio.gather(*(store.acquire(f"c{i}", "w-me") for i in range(4)))
        recovery_trips = store.batcher.round_trips - trips

    assert in_flight_trips == 1  # the 16 first acquires went out together; 16 queued behind
    assert [_outcome(r) for r in results] == [("error", "DependencyUnavailable")] * 32
    assert all("Redis call failed" in str(r) for r in results)
    assert [_outcome(c) for c in after] == [("acquired", 1, "", 0)] * 4
    assert recovery_trips == 3  # NOSCRIPT, SCRIPT LOAD, the 4 acquires again


async def test_renewals_of_all_held_leases_share_one_round_trip(
    private_redis: PrivateRedis, prefix: str
) -> None:
    """8 held leases (lease 1.5 s, renewed every 0.5 s): one renewal tick is 1 pipeline and 1
    server read (no SCRIPT EXISTS first); the 7 kept leases are extended, the stolen one is
    lost and its on_lost is called once."""
    admin = Redis.from_url(private_redis.url)
    lost: list[str] = []
    async with RedisClaims(private_redis.url, namespace=prefix, lease_ms=1500) as store:
        rids = [f"h{i}" for i in range(8)]
        await asyncio.gather(*(store.acquire(rid, "w-me") for rid in rids))
        await admin.set(run_keys(prefix, "h5").lease, "w-thief")
        trips, reads = store.batcher.round_trips, await _reads(admin)
        for rid in rids:
            store.hold(rid, "w-me", on_lost=lambda rid=rid: lost.append(rid))
        await asyncio.sleep(0.8)  # one tick, at 0.5 s
        tick_reads = await _reads(admin) - reads - 1
        tick_trips = store.batcher.round_trips - trips
        ttls = [await admin.pttl(run_keys(prefix, rid).lease) for rid in rids]
        flags = [store.lost(rid) for rid in rids]
        for rid in rids:
            store.let_go(rid)
    await admin.aclose()
    assert (tick_trips, tick_reads) == (1, 1)
    assert lost == ["h5"]
    assert flags == [False] * 5 + [True] + [False] * 2
    assert ttls[5] == -1  # the thief's key, untouched
    assert all(1000 < ttl <= 1500 for ttl in ttls[:5] + ttls[6:])  # renewed at 0.5 s


async def test_a_call_cancelled_before_its_round_trip_is_not_sent(
    private_redis: PrivateRedis, prefix: str
) -> None:
    """Of 4 queued acquires, the 2 cancelled before the round trip run nothing in Redis (no
    lease, no start count); the 2 others are acquired with attempt 1, in 1 round trip."""
    admin = Redis.from_url(private_redis.url)
    async with RedisClaims(private_redis.url, namespace=prefix) as store:
        await store.acquire("warm-up", "w-me")
        trips = store.batcher.round_trips
        calls = [asyncio.create_task(store.acquire(f"x{i}", "w-me")) for i in range(4)]
        await asyncio.sleep(0)  # queued, not yet sent
        calls[1].cancel()
        calls[2].cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        trips = store.batcher.round_trips - trips
    left = [await admin.mget(run_keys(prefix, f"x{i}").lease, run_keys(prefix, f"x{i}").tries)
            for i in range(4)]
    await admin.aclose()
    assert trips == 1
    assert [_outcome(r) for r in results] == [
        ("acquired", 1, "", 0), ("error", "CancelledError"), ("error", "CancelledError"),
        ("acquired", 1, "", 0),
    ]
    assert left == [[b"w-me", b"1"], [None, None], [None, None], [b"w-me", b"1"]]
