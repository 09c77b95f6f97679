"""Runner benchmarks, each printed with its ratio to a baseline measured in the same run.

    make bench            # or: .venv/bin/python bench/bench_runner.py [--quick]

1. pipeline throughput through the runner (events + result + commits) vs a bare
   ``graph.astream`` loop without Kafka.                                     goal >= 0.85x
2. slow (0.2 s) with 500 in flight vs the bare graph under ``asyncio.gather`` of 500.  goal >= 0.9x
3. end-to-end latency p50/p99 (produce -> result consumed) at half the peak rate.   goal p99 < 50 ms
4. ``graphwire worker --processes 2`` vs 1 on pipeline.                       goal >= 1.7x

The runner runs as a separate process (``graphwire worker``), as in production; its rate is
taken from the runner's own event timestamps (first run_started to last run_finished), so
group-join time and the benchmark's own consumer are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphwire.graphs.registry import GraphRegistry  # noqa: E402
from graphwire.processors.dev.broker import DevBroker  # noqa: E402
from graphwire.topics.admin import ensure_topics  # noqa: E402
from graphwire.topics.specs import TopicNames  # noqa: E402

PARTITIONS = 8


# -- baselines ---------------------------------------------------------------------------


async def bare_pipeline(n: int) -> float:
    """Runs/s of pipeline via graph.astream in a loop (same stream modes as the runner)."""
    graph = GraphRegistry.from_sources().get("pipeline")
    for _ in range(200):  # warm-up
        async for _chunk in graph.astream(
            {"text": "Hello World"}, stream_mode=["updates", "values"]
        ):
            pass
    started = time.perf_counter()
    for _ in range(n):
        async for _chunk in graph.astream(
            {"text": "Hello World"}, stream_mode=["updates", "values"]
        ):
            pass
    return n / (time.perf_counter() - started)


async def bare_pipeline_concurrent(n: int, concurrency: int) -> float:
    """Runs/s of pipeline with ``concurrency`` runs at once: LangGraph's own cost of overlap."""
    graph = GraphRegistry.from_sources().get("pipeline")

    async def one() -> None:
        async for _chunk in graph.astream(
            {"text": "Hello World"}, stream_mode=["updates", "values"]
        ):
            pass

    started = time.perf_counter()
    for _ in range(n // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return (n // concurrency * concurrency) / (time.perf_counter() - started)


async def bare_slow(n: int, concurrency: int) -> float:
    """Runs/s of slow (0.2 s) with ``concurrency`` runs at once under asyncio.gather."""
    graph = GraphRegistry.from_sources().get("slow")

    async def one() -> None:
        async for _chunk in graph.astream({"seconds": 0.2}, stream_mode=["updates", "values"]):
            pass

    started = time.perf_counter()
    for _ in range(n // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


# -- the runner --------------------------------------------------------------------------


PLAIN = {"GRAPHWIRE_DEDUP": "false", "GRAPHWIRE_CHECKPOINTS": "false"}
"""The Kafka path alone: the issue-2 figures compare this with bare LangGraph."""


def stores(dedup: bool, checkpoints: bool, durability: str = "async") -> dict[str, str]:
    """Worker environment with Redis dedup and/or PostgreSQL checkpoints switched on."""
    return {
        "GRAPHWIRE_DEDUP": str(dedup).lower(),
        "GRAPHWIRE_CHECKPOINTS": str(checkpoints).lower(),
        "GRAPHWIRE_DURABILITY": durability,
        "GRAPHWIRE_REDIS_URL": os.environ.get(
            "GRAPHWIRE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"
        ),
        "GRAPHWIRE_DATABASE_URL": os.environ.get(
            "GRAPHWIRE_BENCH_DATABASE_URL", "postgresql://127.0.0.1:5432/test"
        ),
        "GRAPHWIRE_CHECKPOINT_SCHEMA": "graphwire_bench",
    }


def start_workers(
    bootstrap: str,
    prefix: str,
    processes: int,
    max_in_flight: int,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GRAPHWIRE_BOOTSTRAP_SERVERS": bootstrap,
        "GRAPHWIRE_TOPIC_PREFIX": prefix,
        "GRAPHWIRE_GROUP_ID": f"{prefix}-runners",
        "GRAPHWIRE_MAX_IN_FLIGHT": str(max_in_flight),
        "GRAPHWIRE_SESSION_TIMEOUT_MS": "6000",
        "GRAPHWIRE_HEARTBEAT_INTERVAL_MS": "1000",
        "GRAPHWIRE_LOG_LEVEL": "WARNING",
        "GRAPHWIRE_HTTP_PORT": "0",
        **(extra_env if extra_env is not None else PLAIN),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "graphwire", "worker", "--processes", str(processes)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def produce_requests(bootstrap: str, topic: str, bodies: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, orjson.dumps(b), key=b["request_id"].encode())
            for b in bodies
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_until(bootstrap: str, topic: str, done: int, timeout: float) -> list[Any]:
    """Read ``topic`` from the beginning until ``done`` run_finished events (or results)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
    )
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        values: list[Any] = []
        finished = 0
        deadline = time.monotonic() + timeout
        while finished < done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {finished}/{done} finished on {topic}")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    v = orjson.loads(r.value)
                    if v.get("type") in ("run_started", "run_finished"):
                        values.append(v)
                        finished += v["type"] == "run_finished"
        return values
    finally:
        await consumer.stop()


async def runner_rate(
    bootstrap: str,
    graph: str,
    body: dict[str, Any],
    n: int,
    processes: int,
    max_in_flight: int,
    extra_env: dict[str, str] | None = None,
) -> float:
    """Runs/s of the runner draining ``n`` pre-produced requests."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, names.specs(PARTITIONS))
    await produce_requests(
        bootstrap,
        names.requests,
        [{"request_id": f"{graph}-{i}", "graph": graph, "input": body} for i in range(n)],
    )
    workers = start_workers(bootstrap, prefix, processes, max_in_flight, extra_env)
    try:
        events = await consume_until(bootstrap, names.events, n, timeout=300)
    finally:
        workers.terminate()
        workers.wait(60)
    first = min(e["ts"] for e in events if e["type"] == "run_started")
    last = max(e["ts"] for e in events if e["type"] == "run_finished")
    return n / (last - first)


async def latency(bootstrap: str, rate: float, seconds: float) -> tuple[float, float, int]:
    """p50/p99 ms from produce to result consumed, at ``rate`` requests/s for ``seconds``."""
    prefix = f"lat{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, names.specs(PARTITIONS))
    workers = start_workers(bootstrap, prefix, 1, 64)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    try:
        await consumer.topics()
        tps = [TopicPartition(names.results, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        async def read() -> None:
            while True:
                for records in (await consumer.getmany(timeout_ms=50)).values():
                    now = time.perf_counter()
                    for r in records:
                        got.setdefault(r.key.decode(), now)

        reader = asyncio.create_task(read())
        # warm up until the worker has joined and answers
        warm = "warm-0"
        sent[warm] = time.perf_counter()
        await producer.send_and_wait(
            names.requests,
            orjson.dumps(
                {"request_id": warm, "graph": "pipeline", "input": {"text": "Hello World"}}
            ),
            key=warm.encode(),
        )
        while warm not in got:
            await asyncio.sleep(0.05)
        total = int(rate * seconds)
        interval = 1 / rate
        start = time.perf_counter()
        for i in range(total):
            target = start + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rid = f"lat-{i}"
            sent[rid] = time.perf_counter()
            await producer.send(
                names.requests,
                orjson.dumps(
                    {"request_id": rid, "graph": "pipeline", "input": {"text": "Hello World"}}
                ),
                key=rid.encode(),
            )
        deadline = time.monotonic() + 60
        while len(got) < total + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
    finally:
        await producer.stop()
        await consumer.stop()
        workers.terminate()
        workers.wait(60)
    samples = sorted((got[r] - sent[r]) * 1000 for r in sent if r in got and r != "warm-0")
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return p50, p99, len(samples)


def line(name: str, value: float, unit: str, baseline: float, goal: str) -> None:
    print(
        f"{name:<52} {value:>9.1f} {unit:<7} baseline {baseline:>9.1f}  "
        f"ratio {value / baseline:5.2f}x  (goal {goal})",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about a minute)")
    args = parser.parse_args()
    n = 1500 if args.quick else 5000
    slow_n = 1000 if args.quick else 3000

    print(
        f"graphwire runner benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"test broker Tansu (memory), {PARTITIONS} partitions\n",
        flush=True,
    )
    with DevBroker() as broker:
        bs = broker.bootstrap_servers
        base = await bare_pipeline(n)
        peak = await runner_rate(bs, "pipeline", {"text": "Hello World"}, n, 1, 64)
        line("pipeline runs/s: runner vs bare astream loop", peak, "runs/s", base, ">= 0.85x")
        overlap = await bare_pipeline_concurrent(n, 64)
        line("  context: runner vs bare gather(64), no Kafka", peak, "runs/s", overlap, "-")

        base_slow = await bare_slow(slow_n, 500)
        slow = await runner_rate(bs, "slow", {"seconds": 0.2}, slow_n, 1, 500)
        line(
            "slow 0.2s, 500 in flight: runner vs gather(500)", slow, "runs/s", base_slow, ">= 0.9x"
        )

        p50, p99, count = await latency(bs, peak / 4, 5 if args.quick else 10)
        print(
            f"{'pipeline end-to-end latency at quarter peak':<52} p50 {p50:6.1f} ms  "
            f"p99 {p99:6.1f} ms  over {count} requests at {peak / 4:.0f}/s",
            flush=True,
        )
        p50, p99, count = await latency(bs, peak / 2, 5 if args.quick else 10)
        print(
            f"{'pipeline end-to-end latency at half peak':<52} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
            f"  over {count} requests at {peak / 2:.0f}/s  (goal p99 < 50 ms)",
            flush=True,
        )

        two = await runner_rate(bs, "pipeline", {"text": "Hello World"}, n, 2, 64)
        line("pipeline runs/s: --processes 2 vs 1", two, "runs/s", peak, ">= 1.7x")

        print("\nRedis dedup and PostgreSQL checkpoints (each against the runner without them)")
        hello = {"text": "Hello World"}
        dedup = await runner_rate(bs, "pipeline", hello, n, 1, 64, stores(True, False))
        line("pipeline: dedup vs none", dedup, "runs/s", peak, ">= 0.85x")
        slow_plain = await runner_rate(bs, "slow", {"seconds": 0.2}, slow_n, 1, 200)
        slow_cp = await runner_rate(
            bs, "slow", {"seconds": 0.2}, slow_n, 1, 200, stores(False, True)
        )
        line(
            "slow 0.2s, 200 in flight: checkpoints vs none",
            slow_cp,
            "runs/s",
            slow_plain,
            ">= 0.9x",
        )
        long_plain = await runner_rate(bs, "slow", {"seconds": 1.0}, 1000, 1, 200)
        long_cp = await runner_rate(bs, "slow", {"seconds": 1.0}, 1000, 1, 200, stores(False, True))
        line(
            "  context: slow 1.0s, 200 in flight (CPU not saturated)",
            long_cp,
            "runs/s",
            long_plain,
            "-",
        )
        for mode in ("exit", "async", "sync"):
            cp = await runner_rate(bs, "pipeline", hello, n, 1, 64, stores(False, True, mode))
            line(f"pipeline: checkpoints durability={mode} vs none", cp, "runs/s", peak, "reported")
        both = await runner_rate(bs, "pipeline", hello, n, 1, 64, stores(True, True))
        line(
            "pipeline: dedup + checkpoints (the default) vs none", both, "runs/s", peak, "reported"
        )


if __name__ == "__main__":
    # Same event loop as `graphwire worker` (uvloop where installed), so baselines are fair.
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
