"""Audit sink benchmarks, each printed with its baseline measured in the same run.

    make bench            # or: .venv/bin/python bench/bench_audit.py [--quick]

1. Sustained rows/s into PostgreSQL from a pre-filled events topic (``graphwire audit`` as its
   own process) vs a bare asyncpg ``copy_records_to_table`` loop of the same rows into the same
   table definition.                                                          goal >= 0.5x
   Context: the same faust app consuming the topic and writing nothing (faust's own ceiling).
2. The lag the sink keeps behind a runner draining ``pipeline`` requests at full speed:
   records published by the runner (its /metrics) minus rows in PostgreSQL, sampled every
   0.25 s, and how long after the runner's last result the sink has written everything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_runner import PARTITIONS, produce_requests  # noqa: E402
from graphwire.processors.audit.db import migrate, server_settings  # noqa: E402
from graphwire.processors.audit.rows import EVENT_COLUMNS  # noqa: E402
from graphwire.processors.dev.broker import DevBroker, free_port  # noqa: E402
from graphwire.topics.admin import ensure_topics  # noqa: E402
from graphwire.topics.specs import TopicNames  # noqa: E402

DATABASE_URL = os.environ.get("GRAPHWIRE_BENCH_DATABASE_URL", "postgresql://127.0.0.1:5432/test")
BATCH = 2000


def event_body(i: int) -> dict[str, Any]:
    """An event shaped like the pipeline graph's node events."""
    return {"request_id": f"req-{i // 5:08d}", "seq": i % 5, "type": "node", "graph": "pipeline",
            "node": "transform", "data": {"transform": {"text": "HELLO WORLD", "steps": i % 5}},
            "ts": time.time(), "metadata": {}}


async def fresh_schema(name: str) -> None:
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await migrate(conn, name)
    finally:
        await conn.close()


async def drop_schema(name: str) -> None:
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def bare_copy(n: int) -> float:
    """Rows/s of copy_records_to_table in batches of BATCH into a fresh graphwire_events."""
    schema = f"bench_bare_{uuid.uuid4().hex[:6]}"
    await fresh_schema(schema)
    rows = []
    for i in range(n):
        e = event_body(i)
        rows.append((e["request_id"], e["seq"], e["type"], e["node"],
                     orjson.dumps(e["data"]).decode(), datetime.fromtimestamp(e["ts"], UTC)))
    conn = await asyncpg.connect(DATABASE_URL, server_settings=server_settings(schema))
    try:
        started = time.perf_counter()
        for i in range(0, n, BATCH):
            await conn.copy_records_to_table(
                "graphwire_events", records=rows[i : i + BATCH], columns=EVENT_COLUMNS
            )
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
        await drop_schema(schema)
    return n / elapsed


def sink_env(bootstrap: str, prefix: str, schema: str, port: int = 0) -> dict[str, str]:
    return {
        **os.environ,
        "GRAPHWIRE_BOOTSTRAP_SERVERS": bootstrap,
        "GRAPHWIRE_TOPIC_PREFIX": prefix,
        "GRAPHWIRE_AUDIT_GROUP_ID": f"{prefix}-audit",
        "GRAPHWIRE_AUDIT_SCHEMA": schema,
        "GRAPHWIRE_AUDIT_BATCH_MAX": str(BATCH),
        "GRAPHWIRE_DATABASE_URL": DATABASE_URL,
        "GRAPHWIRE_SESSION_TIMEOUT_MS": "6000",
        "GRAPHWIRE_HEARTBEAT_INTERVAL_MS": "1000",
        "GRAPHWIRE_LOG_LEVEL": "WARNING",
        "GRAPHWIRE_AUDIT_HTTP_PORT": str(port),
    }


def start(command: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "graphwire", command, *args], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def wait_count(conn: Any, sql: str, n: int, timeout: float) -> list[tuple[float, int]]:
    """Poll ``sql`` until it reaches ``n``; returns the (time, count) samples."""
    samples = []
    deadline = time.monotonic() + timeout
    while True:
        count = await conn.fetchval(sql)
        samples.append((time.perf_counter(), count))
        if count >= n:
            return samples
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count}/{n} rows after {timeout}s")
        await asyncio.sleep(0.05)


async def sink_rate(bootstrap: str, n: int, processes: int = 1) -> float:
    """Rows/s of `graphwire audit` writing ``n`` pre-produced events (first row to last)."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, names.specs(PARTITIONS))
    await produce_events(bootstrap, names.events, n)
    schema = f"bench_sink_{uuid.uuid4().hex[:6]}"
    await fresh_schema(schema)
    sink = start("audit", sink_env(bootstrap, prefix, schema), "--processes", str(processes))
    conn = await asyncpg.connect(DATABASE_URL, server_settings=server_settings(schema))
    try:
        samples = await wait_count(conn, "SELECT count(*) FROM graphwire_events", n, 300)
    finally:
        sink.terminate()
        sink.wait(60)
        await conn.close()
        await drop_schema(schema)
    t0, c0 = next((t, c) for t, c in samples if c > 0)
    t1, c1 = samples[-1]
    return (c1 - c0) / (t1 - t0)


async def produce_events(bootstrap: str, topic: str, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for i in range(n):
            body = event_body(i)
            futures.append(await producer.send(
                topic, orjson.dumps(body), key=body["request_id"].encode()
            ))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


FAUST_ONLY = r"""
import sys, time, faust, uvloop
bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = faust.App(f"faustonly-{topic}", broker=f"kafka://{bootstrap}", web_enabled=False,
                topic_disable_leader=True, store="memory://", autodiscover=False,
                consumer_auto_offset_reset="earliest", broker_max_poll_records=__BATCH__,
                stream_buffer_maxsize=__BUFFER__, broker_session_timeout=6,
                broker_heartbeat_interval=1)
t = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
              value_serializer="raw")
seen, first, skip = 0, None, 0
@app.agent(t, concurrency=1)
async def count(stream):
    global seen, first, skip
    async for events in stream.take_events(__BATCH__, within=0.5):
        if first is None:
            first, skip = time.perf_counter(), len(events)
        seen += len(events)
        if seen >= n:
            print((seen - skip) / (time.perf_counter() - first), flush=True)
            await worker.stop()
worker = faust.Worker(app, loglevel="error", quiet=True, redirect_stdouts=False,
                      loop=uvloop.new_event_loop())
worker.spinner = None
worker.execute_from_commandline()
""".replace("__BATCH__", str(BATCH)).replace("__BUFFER__", str(2 * BATCH))


async def faust_only_rate(bootstrap: str, n: int) -> float:
    """Records/s of a faust agent that takes batches and writes nothing."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, names.specs(PARTITIONS))
    await produce_events(bootstrap, names.events, n)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FAUST_ONLY, bootstrap, names.events, str(n),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    return float(out.decode().split()[0])


async def published(port: int) -> float:
    """Events + results the runner has published (its /metrics)."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(
            ("graphwire_events_published_total{", "langgraph_workflow_executions_total{")
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def lag_behind_runner(bootstrap: str, n: int) -> tuple[float, float, float, float]:
    """(runner runs/s, max lag, mean lag in records, seconds to catch up after the runner)."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, names.specs(PARTITIONS))
    schema = f"bench_lag_{uuid.uuid4().hex[:6]}"
    await fresh_schema(schema)
    port = free_port()
    sink = start("audit", sink_env(bootstrap, prefix, schema))
    runner_env = {
        **sink_env(bootstrap, prefix, schema),
        "GRAPHWIRE_GROUP_ID": f"{prefix}-runners",
        "GRAPHWIRE_HTTP_PORT": str(port),
        "GRAPHWIRE_DEDUP": "false",
        "GRAPHWIRE_CHECKPOINTS": "false",
        "GRAPHWIRE_DEMO_GRAPHS": "true",  # the benchmark runs the demo graphs
    }
    conn = await asyncpg.connect(DATABASE_URL, server_settings=server_settings(schema))
    rows_sql = ("SELECT (SELECT count(*) FROM graphwire_events) + "
                "(SELECT count(*) FROM graphwire_runs WHERE status <> 'accepted')")
    runner = start("worker", runner_env)
    try:
        await asyncio.sleep(5)  # both groups joined
        await produce_requests(
            bootstrap, names.requests,
            [{"request_id": f"lag-{i}", "graph": "pipeline", "input": {"text": "Hello World"}}
             for i in range(n)],
        )
        lags, started, runner_done = [], time.perf_counter(), None
        while True:
            out = await published(port)
            rows = await conn.fetchval(rows_sql)
            lags.append(out - rows)
            finished = await conn.fetchval("SELECT count(*) FROM graphwire_runs "
                                           "WHERE status <> 'accepted'")
            if runner_done is None and await runs_finished(port) >= n:
                runner_done = time.perf_counter()
            if runner_done is not None and finished >= n and out - rows <= 0:
                break
            if time.perf_counter() - started > 300:
                raise TimeoutError("sink did not catch up within 300 s")
            await asyncio.sleep(0.25)
        caught_up = time.perf_counter() - runner_done
        runner_rate = n / (runner_done - started)
    finally:
        for proc in (runner, sink):
            proc.terminate()
            proc.wait(60)
        await conn.close()
        await drop_schema(schema)
    return runner_rate, max(lags), sum(lags) / len(lags), caught_up


async def runs_finished(port: int) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("langgraph_workflow_executions_total{"))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    args = parser.parse_args()
    n = 20_000 if args.quick else 60_000
    print(f"graphwire audit sink benchmark: {os.cpu_count()} cores, batches of {BATCH}, "
          f"{PARTITIONS} partitions\n", flush=True)
    with DevBroker() as broker:
        bs = broker.bootstrap_servers
        bare = await bare_copy(n)
        sink = await sink_rate(bs, n)
        print(f"{'events rows/s: sink vs bare copy_records_to_table':<52} {sink:>9.0f} rows/s  "
              f"baseline {bare:>9.0f}  ratio {sink / bare:5.2f}x  (goal >= 0.5x)", flush=True)
        two = await sink_rate(bs, n, processes=2)
        print(f"{'  sink --processes 2 vs bare copy':<52} {two:>9.0f} rows/s  "
              f"baseline {bare:>9.0f}  ratio {two / bare:5.2f}x  ({two / sink:.2f}x of one "
              f"process)", flush=True)
        ceiling = await faust_only_rate(bs, n)
        print(f"{'  context: sink vs faust take_events, no writes':<52} {sink:>9.0f} rows/s  "
              f"baseline {ceiling:>9.0f}  ratio {sink / ceiling:5.2f}x", flush=True)
        runs = 1500 if args.quick else 5000
        rate, worst, mean, catch_up = await lag_behind_runner(bs, runs)
        print(f"{'sink lag behind a runner at full speed (pipeline)':<52} max {worst:>7.0f} "
              f"records  mean {mean:>7.0f}  caught up {catch_up:.1f} s after the runner's last "
              f"result  (runner {rate:.0f} runs/s, {runs} runs)", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
