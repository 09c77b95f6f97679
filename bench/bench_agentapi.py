"""Agent Server API benchmark: graphwire's gateway (durable runners behind it) against LangGraph's
own server (``langgraph dev``, langgraph-api) on the same graphs, both driven by the official
``langgraph-sdk`` client, in the same run.

- ``runs.wait`` on ``pipeline`` (stateless), 32 at a time: runs/s, p50 and p99 latency, over
  rounds that alternate between the two servers (the machine's speed drifts over minutes; both
  see the same drift);
- ``runs.stream`` on ``chat``: time from the call to the first event after ``metadata``;
- the CPU each process spends per ``runs.wait`` (utime+stime from ``/proc`` across the timed
  runs): graphwire's gateway, worker, broker, PostgreSQL and Redis, ``langgraph dev``'s process
  tree, and the client (this process) against each. All share the machine's cores, so a
  server's throughput here is bounded by the sum.

    make bench            # or: .venv/bin/python bench/bench_agentapi.py [--quick]

The reference server runs from its own venv (``scripts/oracle-venv.sh``; the first run installs
it from the package index), twice: as ``langgraph dev`` starts by default (the target's
baseline), and with ``--n-jobs-per-worker 8``, the best of 1, 2, 4, 5, 6, 8, 10, 12, 16, 20
and 32 on this machine under this load (its throughput is not monotonic in that setting:
about 115 runs/s at the default 10, 155 at 8, 29 at 20 and 32), so the ratio is also shown
against the best a user tuning it would find.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from langgraph_sdk import get_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_gateway import load  # noqa: E402
from bench.bench_runner import (  # noqa: E402
    PARTITIONS,
    ensure_bench_database,
    start_workers,
    tree_pids,
    vacuum_bench_database,
    worker_env,
)
from graphwire.processors.dev.broker import DevBroker, free_port  # noqa: E402
from graphwire.processors.gateway.auth import hash_key  # noqa: E402
from graphwire.topics.admin import ensure_topics  # noqa: E402
from graphwire.topics.specs import TopicNames  # noqa: E402
from tests.agentapi.oracle.server import ensure_venv, write_config  # noqa: E402

KEY = "gw_bench_" + uuid.uuid4().hex
CONCURRENCY = 32
PIPELINE = {"text": "Hello World"}
CHAT = {"messages": [{"role": "user", "content": "What is 2 + 3?"}]}


async def wait_up(url: str, path: str, process: subprocess.Popen[bytes]) -> None:
    """Poll ``url + path`` until 200 (the process must stay up)."""
    async with httpx.AsyncClient(timeout=2) as http:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(f"{url} exited with {process.returncode}")
            try:
                if (await http.get(url + path)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url}{path} never answered")


def cpu_ticks(pids: list[int]) -> int:
    """utime+stime of ``pids`` in clock ticks (a process that is gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def named(name: str) -> list[int]:
    """Every process whose command name is ``name`` (PostgreSQL's backends, Redis)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "comm").read_text().strip() == name:
                    found.append(int(proc.name))
    return found


class Side:
    """One server's ``runs.wait`` rounds: its client, the processes whose CPU is counted, and
    what the rounds added up (runs, seconds, latencies, CPU ticks per process)."""

    def __init__(self, url: str, api_key: str | None,
                 processes: dict[str, Callable[[], list[int]]]) -> None:
        self.client = get_client(url=url, api_key=api_key)
        self.processes = {**processes, "client": lambda: [os.getpid()]}
        self.runs = 0  # counted in the rate
        self.cpu_runs = 0  # all the runs the CPU was spent on
        self.round_rates: list[float] = []
        self.seconds = 0.0
        self.latencies: list[float] = []
        self.ticks: dict[str, int] = dict.fromkeys(self.processes, 0)

    async def wait_once(self, _i: int = 0) -> None:
        values = await self.client.runs.wait(None, "pipeline", input=PIPELINE)
        assert isinstance(values, dict) and values.get("count") == 2, values

    async def round(self, n: int) -> None:
        """``n`` runs.wait, ``CONCURRENCY`` at a time, added to the totals."""
        pids = {name: find() for name, find in self.processes.items()}
        before = {name: cpu_ticks(p) for name, p in pids.items()}
        started = time.perf_counter()
        latencies: list[float] = []
        finished: list[float] = []

        async def timed(i: int) -> None:
            began = time.perf_counter()
            await self.wait_once(i)
            finished.append(time.perf_counter())
            latencies.append((finished[-1] - began) * 1000)

        await load(timed, n, CONCURRENCY)
        # the rate until the last run was started (n - CONCURRENCY done): the round's drain,
        # its last runs finishing with fewer in flight, would charge each round a server's
        # slowest tail
        steady = n - CONCURRENCY
        seconds = sorted(finished)[steady - 1] - started
        self.round_rates.append(steady / seconds)
        self.seconds += seconds
        self.runs += steady
        self.cpu_runs += n
        self.latencies += latencies
        for name, p in pids.items():
            self.ticks[name] += cpu_ticks(p) - before[name]

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        return {"rate": self.runs / self.seconds, "rounds": self.round_rates,
                "p50": statistics.median(ordered),
                "p99": ordered[int(len(ordered) * 0.99) - 1],
                "cpu": {name: t * tick_ms / self.cpu_runs for name, t in self.ticks.items()}}

    async def first_event(self, streams: int) -> float:
        """Median ms from ``runs.stream`` on ``chat`` to its first event after ``metadata``."""
        firsts = []
        for _ in range(streams):
            thread = await self.client.threads.create()
            started = time.perf_counter()
            async for part in self.client.runs.stream(thread["thread_id"], "chat", input=CHAT,
                                                      stream_mode=["values", "messages-tuple"]):
                if part.event != "metadata":
                    firsts.append((time.perf_counter() - started) * 1000)
                    break
        return statistics.median(firsts)


async def measure(sides: list[Side], n: int, rounds: int, streams: int) -> list[dict[str, Any]]:
    """Each side's runs.wait figures over ``rounds`` alternating rounds of ``n // rounds`` runs
    (so both see the machine in the same states: its speed drifts by 10-20% over minutes),
    then its median time to the first streamed event."""
    for side in sides:
        await load(side.wait_once, 64, CONCURRENCY)  # warm up
    for _ in range(rounds):
        for side in sides:
            # this machine's PostgreSQL runs without autovacuum (``graphwire doctor`` warns):
            # the dead rows of a round's deleted checkpoints are cleared between rounds, as
            # autovacuum would, outside the timed runs
            await vacuum_bench_database()
            await side.round(n // rounds)
    found = []
    for side in sides:
        found.append({**side.figures(), "first": await side.first_event(streams)})
    return found


TUNED_JOBS = 8
"""``langgraph dev --n-jobs-per-worker``: the best value found for this benchmark's load."""


def start_oracle(folder: Path, jobs: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``langgraph dev`` on the built-in graphs, in its own session (``jobs``: its
    ``--n-jobs-per-worker``, else its default)."""
    langgraph = ensure_venv()
    config = write_config(folder)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH", "LANGCHAIN"))},
           "PYTHONPATH": str(ROOT), "LANGSMITH_TRACING": "false",
           "LANGGRAPH_CLI_NO_ANALYTICS": "1"}
    process = subprocess.Popen(
        [str(langgraph), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
         "--port", str(port), "--config", str(config),
         *(["--n-jobs-per-worker", str(jobs)] if jobs else [])],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def graphwire_stack(
    processes: int, extra_env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[str, dict[str, Callable[[], list[int]]]]]:
    """graphwire as the benchmark runs it: the test broker, ``processes`` durable workers with
    the shipped defaults, a gateway with an API key and its caps out of the way (``extra_env``
    on top, for both); yields the gateway's URL and its processes' pid finders by name."""
    await ensure_bench_database()
    extra = extra_env or {}
    with DevBroker() as broker:
        bs = broker.bootstrap_servers
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        await ensure_topics(bs, TopicNames(prefix).specs(PARTITIONS))
        workers = start_workers(bs, prefix, processes, 64, extra)
        port = free_port()
        env = {
            **worker_env(bs, prefix, 64, "defaults"), **extra,
            "GRAPHWIRE_GATEWAY_PORT": str(port), "GRAPHWIRE_GATEWAY_OPS_PORT": "0",
            "GRAPHWIRE_GATEWAY_RATE_PER_MINUTE": "10000000",
            "GRAPHWIRE_GATEWAY_MAX_CONCURRENT_RUNS": "100000",  # measure the path, not the cap
            "GRAPHWIRE_GATEWAY_API_KEYS": orjson.dumps(
                [{"name": "bench", "key_sha256": hash_key(KEY), "graphs": ["*"]}]).decode(),
        }
        gateway = subprocess.Popen(  # noqa: ASYNC220 (a server process, not awaited)
            [sys.executable, "-m", "graphwire", "gateway"], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_up(url, "/ready", gateway)
            yield url, {
                "gateway": lambda: tree_pids(gateway.pid),
                "worker": lambda: tree_pids(workers.pid),
                "broker": lambda: [broker.pid] if broker.pid else [],
                "postgres": lambda: named("postgres"),
                "redis": lambda: named("redis-server")}
        finally:
            gateway.terminate()
            gateway.wait(30)
            workers.terminate()
            workers.wait(60)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="graphwire worker processes (default: one per core)")
    args = parser.parse_args()
    n, rounds, streams = (300, 2, 10) if args.quick else (2000, 5, 30)
    print(f"Agent Server API benchmark: {os.cpu_count()} cores (graphwire: a gateway and "
          f"{args.processes} worker processes; langgraph dev: its one process, by default and "
          f"with --n-jobs-per-worker {TUNED_JOBS}), "
          f"{n} runs.wait on pipeline "
          f"{CONCURRENCY} at a time for each server, in {rounds} alternating rounds, "
          f"{streams} runs.stream on chat; langgraph-sdk client\n", flush=True)
    tuned = f"langgraph dev -j{TUNED_JOBS}"
    async with graphwire_stack(args.processes) as (url, processes):
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp2:
            oracle, oracle_url = start_oracle(Path(tmp))
            oracle2, oracle2_url = start_oracle(Path(tmp2), TUNED_JOBS)
            try:
                await wait_up(oracle_url, "/ok", oracle)
                await wait_up(oracle2_url, "/ok", oracle2)
                theirs, tuned_theirs, ours = await measure([
                    Side(oracle_url, None, {"langgraph dev": lambda: tree_pids(oracle.pid)}),
                    Side(oracle2_url, None, {tuned: lambda: tree_pids(oracle2.pid)}),
                    Side(url, KEY, processes),
                ], n, rounds, streams)
            finally:
                for process in (oracle, oracle2):
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(30)
    print(f"{'runs.wait pipeline, graphwire vs langgraph dev':<50} {ours['rate']:>8.1f} runs/s  "
          f"baseline {theirs['rate']:>8.1f}  ratio {ours['rate'] / theirs['rate']:5.2f}x  "
          "(target >= 2x)", flush=True)
    print(f"{'  and vs langgraph dev --n-jobs-per-worker ' + str(TUNED_JOBS):<50} "
          f"{ours['rate']:>8.1f} runs/s  baseline {tuned_theirs['rate']:>8.1f}  "
          f"ratio {ours['rate'] / tuned_theirs['rate']:5.2f}x", flush=True)
    sides = (("graphwire", ours), ("langgraph dev", theirs), (tuned, tuned_theirs))
    for name, found in sides:
        print(f"  runs/s by round, {name}: " + ", ".join(f"{r:.1f}" for r in found["rounds"]))
    for name, found in sides:
        print(f"  latency {name:<41} p50 {found['p50']:7.1f} ms  p99 {found['p99']:7.1f} ms")
    print("  (target: graphwire's p99 lower)")
    for name, found in sides:
        cpu = found["cpu"]
        server = sum(ms for who, ms in cpu.items() if who != "client")
        parts = ", ".join(f"{who} {ms:.2f}" for who, ms in cpu.items() if who != "client")
        print(f"  CPU per run, {name:<13} {parts}: {server:.2f} ms of server CPU "
              f"(client {cpu['client']:.2f} ms)")
    print(f"{'runs.stream chat: time to the first event':<50} graphwire {ours['first']:7.1f} ms"
          f"  langgraph dev {theirs['first']:7.1f} ms  {tuned} {tuned_theirs['first']:7.1f} ms "
          "(medians)", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
