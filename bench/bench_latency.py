"""Streaming latency: from a node's emit in the worker to the event in a reader's hands.

    make bench            # or: .venv/bin/python bench/bench_latency.py [--quick] [--json PATH]

The ``chat`` graph streams its answer token by token (``stream: ["messages"]``: one ``message``
event per token). Each event carries ``ts``, the worker's wall clock when it built the event,
right after the node yielded the token and before it was encoded, batched and produced (the
``event_dict`` stamp, ``graphwire.topics.codec``). A reader takes ``time.time() - ts`` when the
event reaches it; worker and reader share this machine's clock, so no clock skew enters. Two
readers, each at 1 stream and at 100 concurrent streams (a stream opens as another ends, so
that many are always in flight):

- (a) a ``GraphwireClient.events()`` loop in this process, after the client decoded the event;
- (b) an SSE client (httpx) of the gateway's ``POST /workflow/stream``, when the ``data:`` line
  of the event's frame is read (the gateway process reads the events with its own client).

One ``graphwire worker`` with the shipped defaults (Redis dedup, PostgreSQL checkpoints) serves
both, 128 in flight; the gateway runs with its stream cap raised above 100. Targets at 100
streams: p50 < 15 ms, p99 < 50 ms. The tokens' rate at 100 streams is printed as well, so a
latency setting that costs throughput shows up next to it.

Context, measured first in a process of its own: LangGraph alone looping ``chat_paced`` with
``graph.astream(..., stream_mode="messages")``, 100 at a time, no Kafka and no graphwire: its
runs/s, tokens/s and CPU (share of a core, and per token), what 100 paced streams cost before
any transport on the same cores.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_runner import (  # noqa: E402
    PARTITIONS,
    asyncio_run,
    ensure_bench_database,
    spawn,
    worker_command,
    worker_env,
)
from graphwire.processors.dev.broker import DevBroker, free_port  # noqa: E402
from graphwire.processors.gateway.auth import hash_key  # noqa: E402
from graphwire.topics.admin import ensure_topics  # noqa: E402
from graphwire.topics.client import GraphwireClient  # noqa: E402
from graphwire.topics.specs import TopicNames  # noqa: E402

KEY = "gw_bench_" + uuid.uuid4().hex
REDIS = os.environ.get("GRAPHWIRE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CHAT = {"messages": [{"role": "user", "content": "Please repeat after me: graphwire streams "
                      "each token of this answer as its own event to every reader"}]}
STREAM = ["messages"]
MAX_IN_FLIGHT = 128
PACED = {
    "GRAPHWIRE_DEMO_GRAPHS": "true",
    "GRAPHWIRE_GRAPHS": "chat_paced=bench.paced_chat:graph",
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
}
"""The demo graphs plus ``chat_paced`` (``bench/paced_chat.py``), for worker and gateway."""
CASES = (("chat", 1), ("chat", 100), ("chat_paced", 100))
"""(graph, concurrent streams) measured, for each reader."""
RETRIES_503 = 10
"""A 503 (the rate limiter's Redis slow to answer on a loaded machine) comes before the run is
submitted, so the stream is asked for again, at most this many times."""


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def streams(
    one: Callable[[list[float]], Awaitable[int]], runs: int, concurrency: int
) -> dict[str, float]:
    """Run ``runs`` streams, ``concurrency`` at a time; each appends its events' latencies (ms)
    and returns its token count. p50/p99 of the latencies and the tokens per second."""
    latencies: list[float] = []
    window = asyncio.Semaphore(concurrency)
    tokens = 0

    async def run() -> None:
        nonlocal tokens
        async with window:
            count = await one(latencies)
            tokens += count

    started = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(runs)))
    elapsed = time.perf_counter() - started
    return {
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "events": len(latencies),
        "tokens_per_s": tokens / elapsed,
        "runs_per_s": runs / elapsed,
    }


def client_stream(
    client: GraphwireClient, graph: str
) -> Callable[[list[float]], Awaitable[int]]:
    """(a): submit a ``graph`` run and read its tokens with ``client.events()``."""

    async def one(latencies: list[float]) -> int:
        rid = await client.submit(graph, CHAT, stream=STREAM)
        count = 0
        async for event in client.events(rid):
            if event.type == "message":
                latencies.append((time.time() - event.ts) * 1000)
                count += 1
        return count

    return one


def sse_stream(http: httpx.AsyncClient, graph: str) -> Callable[[list[float]], Awaitable[int]]:
    """(b): ``POST /workflow/stream`` a ``graph`` run and read its SSE frames."""
    body = {"workflow_name": graph, "input_data": CHAT, "stream": STREAM}

    async def one(latencies: list[float]) -> int:
        for _ in range(RETRIES_503):
            count = 0
            kind = ""
            async with http.stream("POST", "/workflow/stream", json=body,
                                   headers={"X-API-Key": KEY}) as response:
                if response.status_code == 503:  # refused before it submitted: try again
                    await asyncio.sleep(0.5)
                    continue
                if response.status_code != 200:
                    raise RuntimeError(f"/workflow/stream: {response.status_code} "
                                       f"{(await response.aread())[:300]!r}")
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "message":
                        now = time.time()
                        latencies.append((now - orjson.loads(line[6:])["ts"]) * 1000)
                        count += 1
                return count
        raise RuntimeError(f"/workflow/stream answered 503 {RETRIES_503} times in a row")

    return one


def gateway_env(bs: str, prefix: str, port: int) -> dict[str, str]:
    """The gateway's settings: an API key, caps above what the benchmark opens."""
    return {
        **os.environ, "GRAPHWIRE_BOOTSTRAP_SERVERS": bs, "GRAPHWIRE_TOPIC_PREFIX": prefix,
        "GRAPHWIRE_REDIS_URL": REDIS, "GRAPHWIRE_DEDUP": "false",
        "GRAPHWIRE_GATEWAY_PORT": str(port), "GRAPHWIRE_LOG_LEVEL": "WARNING",
        "GRAPHWIRE_GATEWAY_OPS_PORT": "0",
        "GRAPHWIRE_GATEWAY_RATE_PER_MINUTE": "10000000",
        "GRAPHWIRE_GATEWAY_MAX_CONCURRENT_RUNS": "100000",
        "GRAPHWIRE_GATEWAY_MAX_STREAMS": "1000",
        **PACED,
        "GRAPHWIRE_GATEWAY_API_KEYS": orjson.dumps(
            [{"name": "bench", "key_sha256": hash_key(KEY), "graphs": ["*"]}]).decode(),
    }


async def wait_ready(http: httpx.AsyncClient, gateway: subprocess.Popen[bytes]) -> None:
    """Until the gateway answers /ready with 200 (60 s at most)."""
    for _ in range(600):
        if gateway.poll() is not None:
            raise RuntimeError(f"the gateway exited with {gateway.returncode}")
        try:
            if (await http.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("the gateway was not ready within 60 s")


async def bare_paced(runs: int, concurrency: int) -> dict[str, float]:
    """LangGraph alone on ``chat_paced``: ``graph.astream(..., stream_mode="messages")``,
    ``concurrency`` at a time in this process (no Kafka, no graphwire): what 100 streams at a
    hosted model's pace cost before any transport."""
    from bench.paced_chat import graph as paced

    tokens = 0

    async def one() -> None:
        nonlocal tokens
        async for _ in paced.astream(CHAT, stream_mode="messages"):
            tokens += 1

    window = asyncio.Semaphore(concurrency)

    async def slot() -> None:
        async with window:
            await one()

    await asyncio.gather(*(slot() for _ in range(concurrency)))  # warm up
    tokens = 0
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(slot() for _ in range(runs)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"runs_per_s": runs / wall, "tokens_per_s": tokens / wall,
            "cpu_share": cpu / wall, "cpu_us_per_token": cpu / tokens * 1e6}


def bare_in_process(runs: int) -> dict[str, float]:
    """``bare_paced`` in a process of its own, as a user's loop would run."""
    found = subprocess.run(
        [sys.executable, __file__, "--bare-loop", str(runs)], check=True, capture_output=True,
        env={**os.environ, **PACED})
    figures: dict[str, float] = orjson.loads(found.stdout)
    return figures


async def main(args: argparse.Namespace) -> None:
    """Measure (a) and (b) at 1 and 100 streams and print the table."""
    single = 30 if args.quick else 100
    many = 300 if args.quick else 1000
    say(f"graphwire streaming latency: {os.cpu_count()} cores, chat, {single} runs at 1 stream "
        f"and {many} at 100, load {os.getloadavg()[0]:.1f}")
    bare = bare_in_process(many)
    say(f"  LangGraph alone, chat_paced, 100 at a time (its own process, no Kafka): "
        f"{bare['runs_per_s']:.0f} runs/s, {bare['tokens_per_s']:.0f} tokens/s, "
        f"{100 * bare['cpu_share']:.0f}% of a core, {bare['cpu_us_per_token']:.0f} us of CPU "
        "per token")
    await ensure_bench_database()
    figures: dict[str, dict[str, float]] = {}
    with DevBroker() as broker:
        bs = broker.bootstrap_servers
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        await ensure_topics(bs, TopicNames(prefix).specs(PARTITIONS))
        worker = spawn(worker_command(1),
                       worker_env(bs, prefix, MAX_IN_FLIGHT, "defaults") | PACED)
        port = free_port()
        gateway = spawn([sys.executable, "-m", "graphwire", "gateway"],
                        gateway_env(bs, prefix, port))
        try:
            async with (
                GraphwireClient(bs, topic_prefix=prefix) as client,
                # a connection per stream: a pooled one that the server closed while idle
                # (uvicorn's keep-alive timeout, between cases) fails the next request
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                  limits=httpx.Limits(max_connections=200,
                                                      max_keepalive_connections=0)) as http,
            ):
                await wait_ready(http, gateway)
                readers = {"client.events()": lambda graph: client_stream(client, graph),
                           "gateway SSE": lambda graph: sse_stream(http, graph)}
                for reader in readers.values():  # warm up: the worker's graphs, both paths
                    for graph in ("chat", "chat_paced"):
                        await streams(reader(graph), 20, 10)
                for graph, concurrency in CASES:
                    for name, reader in readers.items():
                        runs = single if concurrency == 1 else many
                        found = await streams(reader(graph), runs, concurrency)
                        label = f"{name}, {graph}, {concurrency} stream{'s' * (concurrency > 1)}"
                        figures[label] = found
                        say(f"  {label}: p50 {found['p50_ms']:.1f} ms, "
                            f"p99 {found['p99_ms']:.1f} ms, {found['tokens_per_s']:.0f} tokens/s")
        finally:
            for process in (gateway, worker):
                process.terminate()
                process.wait(60)
    show(figures)
    print(f"context: LangGraph alone, chat_paced, 100 at a time in its own process: "
          f"{bare['runs_per_s']:.0f} runs/s, {bare['tokens_per_s']:.0f} tokens/s, "
          f"{100 * bare['cpu_share']:.0f}% of a core ({bare['cpu_us_per_token']:.0f} us of CPU "
          "per token) before any transport")
    if args.json:
        write_json(args.json, {**figures, "LangGraph alone, chat_paced, 100": bare})


def write_json(path: str, figures: dict[str, dict[str, float]]) -> None:
    """The figures as JSON, for the README."""
    payload = {"figures": figures, "load_average_1m": os.getloadavg()[0]}
    Path(path).write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    say(f"wrote {path}")


def show(figures: dict[str, dict[str, float]]) -> None:
    """The table, with the targets at 100 streams."""
    print(f"{'reader, graph, concurrent streams':<45} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'events':>7} {'tokens/s':>9} {'runs/s':>7}  target")
    for name, f in figures.items():
        target = "p50 < 15, p99 < 50" if "100" in name else "reported"
        print(f"{name:<45} {f['p50_ms']:8.1f} {f['p99_ms']:8.1f} {f['max_ms']:8.1f} "
              f"{f['events']:7.0f} {f['tokens_per_s']:9.0f} {f['runs_per_s']:7.1f}  {target}")


def say(text: str) -> None:
    """Progress on stderr, so stdout holds the table."""
    print(text, file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    parser.add_argument("--bare-loop", type=int, metavar="RUNS", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    options = parse_args()
    if options.bare_loop:  # the baseline's own process (bare_in_process)
        print(orjson.dumps(asyncio_run(bare_paced(options.bare_loop, 100))).decode())
    else:
        asyncio_run(main(options))
