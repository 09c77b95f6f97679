"""``graphwire dev``: the whole product on one machine with no setup.

Starts the Kafka-compatible development broker (memory storage), Redis and PostgreSQL (the
configured ones when they answer, else embedded ones), creates the topics, migrates the audit
tables, and runs a runner, the audit sink and the scheduler as supervised child processes,
with a live status line. ``--demo`` submits requests to every built-in graph and prints their
events and results. Ctrl-C stops everything and deletes the temporary data unless ``--keep``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from graphwire.processors.audit.db import connect, migrate
from graphwire.processors.dev.broker import DevBroker, free_port
from graphwire.processors.dev.stack import DevServices
from graphwire.processors.settings import Settings
from graphwire.topics.admin import ensure_topics
from graphwire.topics.client import GraphwireClient

DEMO_REQUESTS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("pipeline", {"text": "Hello World"}, ["updates"]),
    ("echo", {"text": "graphwire"}, ["updates"]),
    ("slow", {"seconds": 0.2}, ["updates"]),
    (
        "chat",
        {"messages": [{"role": "user", "content": "What is 19 + 23?"}]},
        ["updates", "custom"],
    ),
]


def _short(value: Any, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _show(client: GraphwireClient, request_id: str) -> str:
    async for event in client.events(request_id):
        where = f" {event.node}" if event.node else ""
        print(f"  event {event.seq} {event.type}{where}: {_short(event.data)}", flush=True)
    result = await client.result(request_id, timeout=60)
    shown = result.output if result.status == "success" else result.error or result.interrupts
    print(f"  result {result.status}: {_short(shown)}", flush=True)
    return str(result.status)


async def demo(
    client: GraphwireClient, database_url: str | None = None, schema: str | None = None
) -> tuple[bool, list[str]]:
    """Submit to every built-in graph, print events and results; (all as expected, ids).
    With ``database_url``, run control too (reject, cancel, history, fork)."""
    ok, ids = True, []
    for graph, payload, stream in DEMO_REQUESTS:
        request_id = await client.submit(graph, payload, stream=stream)
        ids.append(request_id)
        print(f"\n>>> {graph} {payload}  (request {request_id})", flush=True)
        ok &= await _show(client, request_id) == "success"
    thread = f"demo-{os.getpid()}-{int(time.time())}"
    request_id = await client.submit("approval", {"topic": "graphwire"}, thread_id=thread)
    ids.append(request_id)
    print(f"\n>>> approval {{'topic': 'graphwire'}} on thread {thread}: asks a person", flush=True)
    ok &= await _show(client, request_id) == "interrupted"
    request_id = await client.resume(thread, {"approved": True}, graph="approval")
    ids.append(request_id)
    print(f"\n>>> resume thread {thread} with {{'approved': True}}", flush=True)
    ok &= await _show(client, request_id) == "success"
    if database_url is not None:
        from graphwire.processors.dev.runctl_demo import run_control_demo

        control_ok, control_ids = await run_control_demo(
            client, _show, thread, database_url, schema
        )
        ok, ids = ok and control_ok, ids + control_ids
    return ok, ids


async def _get(url: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
        return response.status, await response.text()


async def _wait_ready(name: str, port: int, child: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]
            raise RuntimeError(f"the {name} exited with {child.returncode}:\n{tail}")
        try:
            if (await _get(f"http://127.0.0.1:{port}/ready"))[0] == 200:
                return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the {name} was not ready within 90 s; see {log}")


def _metric_sums(text: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("langgraph_workflow_executions_total{"):
            key = "errors" if 'status="success"' not in name else "ok"
            key = "ok" if 'status="interrupted"' in name else key
            sums[key] = sums.get(key, 0.0) + float(value)
        elif name == "graphwire_in_flight_messages":
            sums["in_flight"] = float(value)
    return sums


class _Child:
    """A supervised child process: restarted when it dies."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command, self.env, self.log = command, env, log
        self.process = _start_child(command, env, log)

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            print(f"\ngraphwire dev: the {self.command} exited with {code} (log {self.log}); "
                  "restarting it", file=sys.stderr, flush=True)
            self.process = _start_child(self.command, self.env, self.log)


async def _status_line(port: int, stop: asyncio.Event, children: list[_Child]) -> None:
    """Print done / errors / in flight / rate from the runner's metrics until ``stop``;
    restart a child that died."""
    tty = sys.stdout.isatty()
    last_done, last_t, last_print = 0.0, time.monotonic(), 0.0
    while not stop.is_set():
        for child in children:
            child.check()
        try:
            sums = _metric_sums((await _get(f"http://127.0.0.1:{port}/metrics"))[1])
        except (aiohttp.ClientError, TimeoutError):
            sums = {}
        done = sums.get("ok", 0.0) + sums.get("errors", 0.0)
        now = time.monotonic()
        rate = (done - last_done) / max(now - last_t, 1e-6)
        last_done, last_t = done, now
        line = (
            f"done {done:.0f}  errors {sums.get('errors', 0):.0f}  "
            f"in flight {sums.get('in_flight', 0):.0f}  {rate:.1f}/s"
        )
        if tty:
            print(f"\r{line:<70}", end="", flush=True)
        elif now - last_print >= 30:
            print(line, flush=True)
            last_print = now
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    if tty:
        print()


def _start_child(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "graphwire", command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )


async def _audited(database_url: str, ids: list[str]) -> int:
    deadline = time.monotonic() + 20
    conn = await connect(database_url)
    try:
        while True:
            count = int(await conn.fetchval(
                "SELECT count(*) FROM graphwire_runs WHERE request_id = ANY($1) "
                "AND status <> 'accepted'", ids
            ))
            if count == len(ids) or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.3)
    finally:
        await conn.close()


async def run_dev(
    port: int | None, demo_requests: bool, exit_after_demo: bool, keep: bool = False
) -> int:
    """Run the development stack until Ctrl-C (or after the demo with ``exit_after_demo``)."""
    data = Path(tempfile.mkdtemp(prefix="graphwire-dev-"))
    base = Settings()
    broker = DevBroker(port or free_port(), log_file=data / "broker.log")
    services = DevServices(data)
    children: list[_Child] = []
    try:
        broker.start()
        await services.start(
            base.redis_url.get_secret_value(), base.database_url.get_secret_value()
        )
        await ensure_topics(broker.bootstrap_servers, base.topics.specs(4))
        conn = await connect(services.database_url)
        try:
            await migrate(conn, base.audit_schema)
        finally:
            await conn.close()
        runner_port, audit_port, scheduler_port = free_port(), free_port(), free_port()
        env = {
            "GRAPHWIRE_DEMO_GRAPHS": "true",  # unless the environment says false
            **os.environ,
            "GRAPHWIRE_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "GRAPHWIRE_REDIS_URL": services.redis_url,
            "GRAPHWIRE_DATABASE_URL": services.database_url,
            "GRAPHWIRE_SESSION_TIMEOUT_MS": "6000",
            "GRAPHWIRE_HEARTBEAT_INTERVAL_MS": "2000",
            "GRAPHWIRE_HTTP_PORT": str(runner_port),
            "GRAPHWIRE_AUDIT_HTTP_PORT": str(audit_port),
            "GRAPHWIRE_SCHEDULER_HTTP_PORT": str(scheduler_port),
            "GRAPHWIRE_LOG_FORMAT": "json",
        }
        children.append(_Child("worker", env, data / "worker.log"))
        children.append(_Child("audit", env, data / "audit.log"))
        children.append(_Child("scheduler", env, data / "scheduler.log"))
        await _wait_ready("runner", runner_port, children[0].process, data / "worker.log")
        await _wait_ready("audit sink", audit_port, children[1].process, data / "audit.log")
        await _wait_ready("scheduler", scheduler_port, children[2].process,
                          data / "scheduler.log")
        embedded = f" (embedded: {', '.join(services.embedded)})" if services.embedded else ""
        print(
            f"graphwire dev: broker {broker.bootstrap_servers}, Redis and PostgreSQL ready"
            f"{embedded}; runner, audit sink and scheduler running.\n"
            f"  runner  http://127.0.0.1:{runner_port}/metrics   "
            f"audit http://127.0.0.1:{audit_port}/metrics   "
            f"scheduler http://127.0.0.1:{scheduler_port}/metrics   logs {data}\n"
            f"  Submit from another terminal:\n"
            f"  GRAPHWIRE_BOOTSTRAP_SERVERS={broker.bootstrap_servers} graphwire submit "
            'pipeline --input \'{"text": "Hello World"}\' --stream',
            flush=True,
        )
        ok = True
        if demo_requests:
            async with GraphwireClient(
                broker.bootstrap_servers, topic_prefix=base.topic_prefix,
                redis_url=services.redis_url,
            ) as client:
                ok, ids = await demo(client, services.database_url, base.checkpoint_schema)
            recorded = await _audited(services.database_url, ids)
            print(f"\naudit: {recorded} of {len(ids)} runs recorded in PostgreSQL "
                  "(graphwire runs show REQUEST_ID)", flush=True)
            ok &= recorded == len(ids)
        if exit_after_demo:
            return 0 if ok else 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("\nrunning; Ctrl-C stops everything", flush=True)
        await _status_line(runner_port, stop, children)
        return 0
    finally:
        for child in children:
            if child.process.poll() is None:
                child.process.terminate()
        for child in children:
            try:
                child.process.wait(40)
            except subprocess.TimeoutExpired:
                child.process.kill()
        broker.stop()
        services.stop(keep=keep)
        if keep:
            print(f"graphwire dev: stopped; data kept in {data}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(data, ignore_errors=True)
            print("graphwire dev: stopped", file=sys.stderr)
