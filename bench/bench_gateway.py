"""Gateway benchmark: ``POST /workflow/execute?wait=true`` on ``pipeline`` over HTTP (an async
httpx load generator on loopback, API-key auth and the Redis rate limit included) against the
same requests through the Python client directly, in the same run.

    make bench            # or: .venv/bin/python bench/bench_gateway.py [--quick]
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

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_runner import PARTITIONS, PLAIN, start_workers  # noqa: E402
from graphwire.processors.dev.broker import DevBroker, free_port  # noqa: E402
from graphwire.processors.gateway.auth import hash_key  # noqa: E402
from graphwire.topics.admin import ensure_topics  # noqa: E402
from graphwire.topics.client import GraphwireClient  # noqa: E402
from graphwire.topics.specs import TopicNames  # noqa: E402

KEY = "gw_bench_" + uuid.uuid4().hex
REDIS = os.environ.get("GRAPHWIRE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


async def load(
    call: Any, n: int, concurrency: int
) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of ``n`` calls, ``concurrency`` at a time."""
    latencies: list[float] = []
    window = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with window:
            started = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return n / elapsed, statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 1000 if args.quick else 3000
    concurrency = 32
    print(f"graphwire gateway benchmark: {os.cpu_count()} cores, {n} pipeline requests, "
          f"{concurrency} at a time\n", flush=True)
    with DevBroker() as broker:
        bs = broker.bootstrap_servers
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        await ensure_topics(bs, TopicNames(prefix).specs(PARTITIONS))
        workers = start_workers(bs, prefix, 1, 64, PLAIN)
        port = free_port()
        env = {
            **os.environ, "GRAPHWIRE_BOOTSTRAP_SERVERS": bs, "GRAPHWIRE_TOPIC_PREFIX": prefix,
            "GRAPHWIRE_REDIS_URL": REDIS, "GRAPHWIRE_DEDUP": "false",
            "GRAPHWIRE_GATEWAY_PORT": str(port), "GRAPHWIRE_LOG_LEVEL": "WARNING",
            "GRAPHWIRE_GATEWAY_OPS_PORT": "0",  # no fixed port: /ready stays on the API's
            "GRAPHWIRE_GATEWAY_RATE_PER_MINUTE": "10000000",
            "GRAPHWIRE_GATEWAY_MAX_CONCURRENT_RUNS": "100000",  # measure the path, not the cap
            "GRAPHWIRE_DEMO_GRAPHS": "true",
            "GRAPHWIRE_GATEWAY_API_KEYS": orjson.dumps(
                [{"name": "bench", "key_sha256": hash_key(KEY), "graphs": ["*"]}]).decode(),
        }
        gateway = subprocess.Popen(  # noqa: ASYNC220 (a server process, not awaited)
            [sys.executable, "-m", "graphwire", "gateway"],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=60,
                limits=httpx.Limits(max_connections=concurrency),
            ) as http:
                for _ in range(300):
                    try:
                        if (await http.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
                body = {"workflow_name": "pipeline", "input_data": {"text": "Hello World"}}
                headers = {"X-API-Key": KEY}

                async def via_http(_i: int) -> None:
                    response = await http.post("/workflow/execute?wait=true", json=body,
                                               headers=headers)
                    assert response.status_code == 200, response.text

                await load(via_http, 200, concurrency)  # warm up both paths
                async with GraphwireClient(bs, topic_prefix=prefix) as client:

                    async def via_client(_i: int) -> None:
                        result = await client.invoke("pipeline", {"text": "Hello World"},
                                                     wait_timeout=60)
                        assert result.status == "success"

                    await load(via_client, 200, concurrency)
                    base, base50, base99 = await load(via_client, n, concurrency)
                rate, p50, p99 = await load(via_http, n, concurrency)
        finally:
            gateway.terminate()
            gateway.wait(30)
            workers.terminate()
            workers.wait(60)
    print(f"{'execute?wait=true over HTTP vs the Python client':<52} {rate:>8.1f} req/s  "
          f"baseline {base:>8.1f}  ratio {rate / base:5.2f}x", flush=True)
    print(f"{'  latency HTTP':<52} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms", flush=True)
    print(f"{'  latency client':<52} p50 {base50:6.1f} ms  p99 {base99:6.1f} ms", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
