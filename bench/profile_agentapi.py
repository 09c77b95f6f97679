"""graphwire alone under the Agent Server API's ``runs.wait`` load, with each process's CPU per
run, and optionally a py-spy profile of the gateway or a worker.

    .venv/bin/python bench/profile_agentapi.py                      # 1,000 runs.wait, 32 at a time
    .venv/bin/python bench/profile_agentapi.py --processes 1 --reps 3
    .venv/bin/python bench/profile_agentapi.py --env GRAPHWIRE_FETCH_MAX_WAIT_MS=10
    .venv/bin/python bench/profile_agentapi.py --spy gateway --top 30

The same stack as ``bench_agentapi.py`` (a gateway, durable workers with the shipped defaults,
the test broker, Redis, PostgreSQL; the official ``langgraph-sdk`` client in this process),
without ``langgraph dev``: for comparing graphwire with itself (run it alternately on two
settings or two checkouts; the machine drifts by 10-20% over minutes). ``--env`` applies to
the gateway and the workers. ``--spy`` samples with ``py-spy --gil`` during the timed runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_agentapi import CONCURRENCY, KEY, Side, named, wait_up  # noqa: E402
from bench.bench_runner import (  # noqa: E402
    PARTITIONS,
    ensure_bench_database,
    start_workers,
    tree_pids,
    worker_env,
)
from bench.profile import py_spy, summarise  # noqa: E402
from graphwire.processors.dev.broker import DevBroker, free_port  # noqa: E402
from graphwire.processors.gateway.auth import hash_key  # noqa: E402
from graphwire.topics.admin import ensure_topics  # noqa: E402
from graphwire.topics.specs import TopicNames  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    await ensure_bench_database()
    extra = dict(pair.split("=", 1) for pair in args.env)
    with DevBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        bs = broker.bootstrap_servers
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        await ensure_topics(bs, TopicNames(prefix).specs(PARTITIONS))
        workers = start_workers(bs, prefix, args.processes, 64, extra)
        port = free_port()
        env = {**worker_env(bs, prefix, 64, "defaults"), **extra,
               "GRAPHWIRE_GATEWAY_PORT": str(port), "GRAPHWIRE_GATEWAY_OPS_PORT": "0",
               "GRAPHWIRE_GATEWAY_RATE_PER_MINUTE": "10000000",
               "GRAPHWIRE_GATEWAY_MAX_CONCURRENT_RUNS": "100000",
               "GRAPHWIRE_GATEWAY_API_KEYS": orjson.dumps(
                   [{"name": "bench", "key_sha256": hash_key(KEY), "graphs": ["*"]}]).decode()}
        gateway = subprocess.Popen(  # noqa: ASYNC220 (a server process, not awaited)
            [sys.executable, "-m", "graphwire", "gateway"], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_up(url, "/ready", gateway)
            processes = {
                "gateway": lambda: tree_pids(gateway.pid),
                "worker": lambda: tree_pids(workers.pid),
                "broker": lambda: [broker.pid] if broker.pid else [],
                "postgres": lambda: named("postgres"),
                "redis": lambda: named("redis-server")}
            for rep in range(args.reps):
                await Side(url, KEY, processes).round(64)  # warm up, not counted
                side = Side(url, KEY, processes)
                spy = None
                raw = Path(tmp) / "profile.raw"
                if args.spy and rep == 0:
                    target = gateway.pid if args.spy == "gateway" else tree_pids(workers.pid)[-1]
                    spy = subprocess.Popen(  # noqa: ASYNC220
                        [py_spy(), "record", "--gil", "--format", "raw", "--rate", "200",
                         "--output", str(raw), "--pid", str(target)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    await asyncio.sleep(1)
                await side.round(args.runs)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
                found = side.figures()
                cpu = found["cpu"]
                server = sum(ms for who, ms in cpu.items() if who != "client")
                print(f"{found['rate']:.1f} runs/s, p50 {found['p50']:.1f} ms, p99 "
                      f"{found['p99']:.1f} ms; CPU per run: "
                      + ", ".join(f"{who} {ms:.2f}" for who, ms in cpu.items())
                      + f"; server {server:.2f} ms", flush=True)
                if spy is not None and raw.exists():
                    print(summarise(raw.read_text(), args.top))
        finally:
            gateway.terminate()
            gateway.wait(30)
            workers.terminate()
            workers.wait(60)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=1, help="timed blocks in one stack")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per core, as bench_agentapi)")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--spy", choices=["gateway", "worker"])
    parser.add_argument("--top", type=int, default=25)
    return parser.parse_args()


if __name__ == "__main__":
    print(f"runs.wait on pipeline, {CONCURRENCY} at a time", flush=True)
    asyncio.run(main(parse_args()))
