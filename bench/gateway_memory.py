"""The gateway's memory after many large runs (issue 21: memory bounded in bytes).

Starts a test broker, a worker and a gateway (anonymous, local), submits ``--runs`` ``echo``
runs of ``--kb`` kB each through ``POST /workflow/execute`` (no stream attached), waits until
the gateway has seen every result, and prints the gateway's resident memory before and after.

    .venv/bin/python -m bench.gateway_memory --runs 150 --kb 900

Needs Redis (GRAPHWIRE_REDIS_URL, default redis://127.0.0.1:6379/0). A figure to read, not a
test: it depends on the allocator and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from graphwire.processors.dev.broker import DevBroker, free_port
from graphwire.topics.admin import ensure_topics
from graphwire.topics.specs import TopicNames


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "graphwire", command], env=env,
                            stdout=out, stderr=subprocess.STDOUT)


async def measure(runs: int, kb: int, workdir: Path) -> None:
    broker = DevBroker(log_file=workdir / "broker.log")
    broker.start()
    prefix = f"mem{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker.bootstrap_servers, TopicNames(prefix).specs(4))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GRAPHWIRE_")},
        "GRAPHWIRE_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "GRAPHWIRE_TOPIC_PREFIX": prefix,
        "GRAPHWIRE_GROUP_ID": f"{prefix}-runners",
        "GRAPHWIRE_REDIS_URL": os.environ.get("GRAPHWIRE_REDIS_URL",
                                              "redis://127.0.0.1:6379/0"),
        "GRAPHWIRE_CHECKPOINTS": "false",
        "GRAPHWIRE_HTTP_PORT": "0",
        "GRAPHWIRE_LOG_FORMAT": "json",
        "GRAPHWIRE_GATEWAY_AUTH": "false",
        "GRAPHWIRE_GATEWAY_HOST": "127.0.0.1",
        "GRAPHWIRE_GATEWAY_PORT": str(port),
        "GRAPHWIRE_GATEWAY_RATE_PER_MINUTE": "100000",
        "GRAPHWIRE_GATEWAY_MAX_CONCURRENT_RUNS": "100000",
        "GRAPHWIRE_GATEWAY_OPS_PORT": "0",
        "GRAPHWIRE_DEMO_GRAPHS": "true",  # it runs the demo graph `echo`
        "GRAPHWIRE_DATABASE_URL": "postgresql://127.0.0.1:1/none",  # no audit: Redis only
    }
    worker = spawn("worker", env, workdir / "worker.log")
    gateway = spawn("gateway", env, workdir / "gateway.log")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await http.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start: see {workdir}")
                await asyncio.sleep(0.3)
            small = {"workflow_name": "echo", "input_data": {"text": "warm"}}
            await http.post("/workflow/invoke", json=small)
            before = rss_mib(gateway.pid)
            body = {"workflow_name": "echo", "input_data": {"text": "A" * (kb * 1000)}}
            ids = []
            started = time.monotonic()
            for _ in range(runs):
                answer = await http.post("/workflow/execute", json=body)
                answer.raise_for_status()
                ids.append(answer.json()["request_id"])
            for rid in ids:  # every result published (the gateway's reader saw it too)
                while (await http.get(f"/workflow/status/{rid}")).json().get(
                        "status") != "success":
                    await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)
            after = rss_mib(gateway.pid)
        took = time.monotonic() - started
        print(f"{runs} echo runs of {kb} kB in {took:.0f} s: gateway RSS {before:.0f} MiB "
              f"before, {after:.0f} MiB after (+{after - before:.0f} MiB)")
    finally:
        for process in (gateway, worker):
            process.terminate()
            process.wait(30)
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--kb", type=int, default=900)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-mem-") as workdir:
        asyncio.run(measure(args.runs, args.kb, Path(workdir)))


if __name__ == "__main__":
    main()
