"""Runner benchmarks: `graphwire worker` against a bare LangGraph loop, ratios from one run.

    make bench            # or: .venv/bin/python bench/bench_runner.py [--quick] [--json PATH]
    .venv/bin/python bench/bench_runner.py --soak 100000    # RSS over a long run as well

Method (issues 13 and 26). Every worker figure comes from a separate ``graphwire worker``
process, started the way a user starts it, draining requests produced before it starts. Its rate
is taken from the broker timestamps of its results, first to last, so start-up and group join are
not counted. The baseline is a separate process looping ``graph.astream(HELLO, stream_mode=
"updates")`` sequentially on ``pipeline``'s 3 steps written as ``async def`` nodes: the plain
loop a user writes for asyncio, and the fastest one with the same sync nodes made inline (as the
worker runs them): the two are equal within this machine's noise, and ``inline`` is in the JSON
context to check. It runs just before and just after the worker and the ratio uses the mean of
the two (both are printed: their spread shows the machine's noise).

| figure                                                          | target   |
|-----------------------------------------------------------------|----------|
| dedup and checkpoints off vs bare loop                          | >= 0.85x |
| defaults (dedup + checkpoints ``async``) vs bare loop           | >= 0.5x  |
| defaults vs the same loop with LangGraph's ``InMemorySaver``    | >= 0.9x  |
| both off and ``GRAPHWIRE_RUN_CALLBACKS=false`` vs bare loop     | context  |
| both off vs a loop of sync nodes in LangGraph's thread hop      | context  |
| defaults, sync nodes in threads vs the same loop                | context  |
| PostgreSQL server CPU per checkpointed step                     | <= 0.15 ms |
| transactions to PostgreSQL per checkpointed step, 64 in flight  | <= 0.2   |
| slow 0.2 s, 200 in flight, defaults vs both off                 | >= 0.9x  |
| slow 0.2 s, 25 in flight each: 2 workers vs 1 (I/O-bound)       | >= 1.8x  |
| pipeline: 2 workers (``--processes 2``) vs 1 (CPU-bound)        | context  |
| worker RSS with 500 runs in flight (``--soak N``: flat over N)  | reported |

The ``InMemorySaver`` loop gives each run a new ``thread_id``, as a stateless request gets its
own thread, and LangGraph's default durability (``async``, the worker's default too): it is the
ceiling for a durable run, LangGraph's own checkpoint bookkeeping without any I/O.

``pipeline`` declares ``sync_nodes: inline`` (its nodes are microsecond string functions), so
the worker runs them on its event loop; the "sync nodes in threads" figure
(``GRAPHWIRE_SYNC_NODES=thread``) is the same worker with LangGraph's thread hop, compared with
the loop that hops too (the registry's ``pipeline`` as it is, which the README compared with
before issue 26).

A checkpointed step is one of pipeline's 3 nodes (3 per run, a fixed denominator so that a
change writing fewer checkpoint rows shows up as a gain); the rows actually inserted into the
checkpoint table are printed as context. PostgreSQL CPU is utime+stime of every ``postgres``
process (/proc/<pid>/stat) across the drain, which includes other users of the server; the CPU of
the worker's own backends alone is printed as context. Transactions are ``xact_commit`` deltas of
a database only the benchmark uses (``graphwire_bench``, created if missing).
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphwire.processors.dev.broker import DevBroker  # noqa: E402
from graphwire.topics.admin import ensure_topics  # noqa: E402
from graphwire.topics.specs import TopicNames  # noqa: E402

PARTITIONS = 8
"""Partitions of the audit and gateway benchmarks' topics (they import it)."""
REQUEST_PARTITIONS = 4
"""Partitions of this benchmark's topics: the issue-13 figures are taken on 4."""
STEPS_PER_PIPELINE_RUN = 3
HELLO = {"text": "Hello World"}
SLOW = {"seconds": 0.2}
REDIS_URL = os.environ.get("GRAPHWIRE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_DATABASE_URL = os.environ.get(
    "GRAPHWIRE_BENCH_DATABASE_URL", "postgresql://127.0.0.1:5432/test"
)
BENCH_DATABASE = "graphwire_bench"
CHECKPOINT_SCHEMA = "graphwire_bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the bare loop, in its own process -------------------------------------------------------

BARE_LOOPS = {
    "async": "pipeline's 3 steps as async def nodes, no checkpointer (the baseline)",
    "memory": "the same with LangGraph's InMemorySaver, a new thread per run (durable ceiling)",
    "threads": "the registry's pipeline, whose sync nodes LangGraph runs in a thread (context)",
    "inline": "the registry's pipeline with its sync nodes made inline, as the worker does",
}
"""The plain loops the worker is compared with, by name (``--bare NAME N``)."""


def async_pipeline() -> Any:
    """``pipeline``'s 3 steps written as ``async def`` nodes: what a user writes for asyncio."""
    from graphwire.graphs.builtin import PipelineState, pipeline_steps

    async def normalize(state: PipelineState) -> PipelineState:
        return {"text": state.get("text", "").strip().lower()}

    async def tokenize(state: PipelineState) -> PipelineState:
        return {"tokens": state["text"].split()}

    async def count(state: PipelineState) -> PipelineState:
        return {"count": len(state["tokens"])}

    return pipeline_steps(normalize, tokenize, count)


def bare_graph(loop: str) -> Any:
    """The compiled graph of the bare loop ``loop`` (a key of :data:`BARE_LOOPS`)."""
    if loop == "async":
        return async_pipeline().compile(name="pipeline")
    if loop == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        return async_pipeline().compile(name="pipeline", checkpointer=InMemorySaver())
    from graphwire.graphs.registry import GraphRegistry

    graph = GraphRegistry.from_sources().get("pipeline")
    if loop == "inline":
        from graphwire.graphs.execution import inline_sync_nodes

        inline_sync_nodes(graph)
    elif loop != "threads":
        raise ValueError(f"unknown bare loop {loop!r}: one of {', '.join(BARE_LOOPS)}")
    return graph


async def bare_loop(loop: str, n: int) -> float:
    """Runs/s of ``graph.astream(HELLO, stream_mode="updates")`` looped sequentially (with a
    new ``thread_id`` per run when the graph has a checkpointer, as a stateless request)."""
    graph = bare_graph(loop)
    durable = graph.checkpointer is not None

    def config(i: int) -> dict[str, Any] | None:
        return {"configurable": {"thread_id": f"bare-{i}"}} if durable else None

    for i in range(min(200, n)):  # warm-up: imports, caches, the JIT-less interpreter's dicts
        async for _chunk in graph.astream(HELLO, config(-i - 1), stream_mode="updates"):
            pass
    started = time.perf_counter()
    for i in range(n):
        async for _chunk in graph.astream(HELLO, config(i), stream_mode="updates"):
            pass
    return n / (time.perf_counter() - started)


def measure_bare(loop: str, n: int) -> float:
    """Run :func:`bare_loop` in a fresh process (``--bare``) and return its runs/s."""
    out = subprocess.run(
        [sys.executable, __file__, "--bare", loop, str(n)],
        check=True,
        capture_output=True,
        cwd=ROOT,
        timeout=600,
    )
    return float(orjson.loads(out.stdout.splitlines()[-1])["rate"])


# -- the worker, in its own process ---------------------------------------------------------


def worker_env(bootstrap: str, prefix: str, max_in_flight: int, mode: str) -> dict[str, str]:
    """Environment of a ``graphwire worker``: ``defaults`` (shipped settings) or ``off``."""
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
        "GRAPHWIRE_REDIS_URL": REDIS_URL,
        "GRAPHWIRE_DATABASE_URL": bench_database_url(),
        "GRAPHWIRE_CHECKPOINT_SCHEMA": CHECKPOINT_SCHEMA,
        "GRAPHWIRE_DEMO_GRAPHS": "true",  # the benchmarks run the demo graphs
    }
    if mode == "off":
        env |= PLAIN
    elif mode == "lean":  # the light path without the LangChain callbacks on every run
        env |= PLAIN | {"GRAPHWIRE_RUN_CALLBACKS": "false"}
    elif mode == "threads":  # the defaults, but sync nodes hop to a thread as LangGraph does
        env["GRAPHWIRE_SYNC_NODES"] = "thread"
    elif mode != "defaults":
        raise ValueError(
            f"unknown worker mode {mode!r}: use 'defaults', 'threads', 'off' or 'lean'")
    return env


PLAIN = {"GRAPHWIRE_DEDUP": "false", "GRAPHWIRE_CHECKPOINTS": "false"}
"""Dedup and checkpoints off: the Kafka path alone (bench_gateway.py uses it)."""


def start_workers(
    bootstrap: str,
    prefix: str,
    processes: int,
    max_in_flight: int,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``graphwire worker`` with ``extra_env`` (default :data:`PLAIN`); bench_gateway.py."""
    env = worker_env(bootstrap, prefix, max_in_flight, "defaults")
    env |= extra_env if extra_env is not None else PLAIN
    return spawn(worker_command(processes), env)


def spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``command`` in the repository with ``env``, its output discarded."""
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def worker_command(processes: int) -> list[str]:
    """``graphwire worker`` from this venv, as a user types it."""
    script = Path(sys.executable).parent / "graphwire"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "graphwire"]
    return [*base, "worker", "--processes", str(processes)]


async def produce_requests(bootstrap: str, topic: str, bodies: list[dict[str, Any]]) -> None:
    """Produce ``bodies`` to ``topic`` keyed by request_id and wait for every ack."""
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


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (``--processes 2`` runs its workers as children)."""
    pids = [pid]
    for p in pids:
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        pids.extend(int(c) for c in children)
    return pids


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants in KiB (0 for a process that is gone)."""
    total = 0
    for p in tree_pids(pid):
        try:
            for row in Path(f"/proc/{p}/status").read_text().splitlines():
                if row.startswith("VmRSS:"):
                    total += int(row.split()[1])
        except OSError:
            continue
    return total


@dataclass
class Drain:
    """What one worker drain measured."""

    runs: int
    rate: float
    """Results per second from the first result's broker timestamp to the last one's."""
    errors: int
    rss: list[tuple[int, int]] = field(default_factory=list)
    """(results so far, worker RSS KiB) samples taken while draining."""
    pg: dict[str, float] = field(default_factory=dict)


async def drain(
    bootstrap: str,
    graph: str,
    body: dict[str, Any],
    n: int,
    *,
    mode: str,
    max_in_flight: int,
    processes: int = 1,
    watch_postgres: bool = False,
    timeout: float = 900,
    on_first_result: Callable[[int], None] | None = None,
    on_drained: Callable[[], None] | None = None,
    fields: dict[str, Any] | None = None,
) -> Drain:
    """Pre-fill ``n`` requests, start a worker, read its results until all ``n`` are in.

    ``on_first_result(worker_pid)`` and ``on_drained()`` let a profiler attach to the worker
    once it is running and detach before it stops, so start-up and shutdown stay out of it.
    ``fields`` are added to every request (``{"stream": ["messages"]}``, say).
    """
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    names = TopicNames(prefix)
    await ensure_topics(bootstrap, names.specs(REQUEST_PARTITIONS))
    await produce_requests(
        bootstrap,
        names.requests,
        [{"request_id": f"{prefix}-{i}", "graph": graph, "input": body, **(fields or {})}
         for i in range(n)],
    )
    await vacuum_bench_database()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await consumer.start()
    pg_before = await postgres_counters() if watch_postgres else None
    worker = spawn(worker_command(processes), worker_env(bootstrap, prefix, max_in_flight, mode))
    seen: set[str] = set()
    stamps: list[int] = []
    errors = 0
    rss: list[tuple[int, int]] = []
    try:
        tps = [TopicPartition(names.results, p) for p in range(REQUEST_PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        next_sample = 0.0
        while len(seen) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(seen)}/{n} results on {names.results}")
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode} mid-drain")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    if r.key is None or r.key.decode() in seen:
                        continue
                    if not seen and on_first_result is not None:
                        on_first_result(worker.pid)
                    seen.add(r.key.decode())
                    stamps.append(r.timestamp)
                    errors += orjson.loads(r.value).get("status") != "success"
            if time.monotonic() >= next_sample:
                rss.append((len(seen), rss_kib(worker.pid)))
                next_sample = time.monotonic() + 0.5
        if on_drained is not None:
            on_drained()
        pg_cpu = postgres_cpu_ticks() if watch_postgres else None
        own = await own_backend_pids() if watch_postgres else set()
    finally:
        await consumer.stop()
        worker.terminate()
        worker.wait(60)
    rate = (n - 1) / ((max(stamps) - min(stamps)) / 1000)
    result = Drain(runs=n, rate=rate, errors=errors, rss=rss)
    if pg_before is not None and pg_cpu is not None:
        await asyncio.sleep(0.5)  # exiting backends flush their statistics
        result.pg = pg_delta(pg_before, pg_cpu, own, await postgres_counters(), n)
    return result


# -- PostgreSQL: CPU and transactions --------------------------------------------------------


def bench_database_url() -> str:
    """The URL of the benchmark's own database (same server as GRAPHWIRE_BENCH_DATABASE_URL)."""
    return ADMIN_DATABASE_URL.rsplit("/", 1)[0] + "/" + BENCH_DATABASE


async def ensure_bench_database() -> None:
    """Create ``graphwire_bench`` afresh: its transaction counters hold this benchmark's alone,
    and no table starts with what earlier runs left. Runs delete and rewrite checkpoints and
    run records all the time; on a server with autovacuum off (this machine's) the dead rows of
    every earlier run stay, the tables and their indexes outgrow the shared buffers, and each
    write then reads pages back from the OS: PostgreSQL's CPU per run grew run after run."""
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    finally:
        await conn.close()


async def vacuum_bench_database() -> None:
    """VACUUM ``graphwire_bench`` between a benchmark's phases: the dead rows an earlier
    phase left (no autovacuum here) are reused, not read past, by the next."""
    conn = await asyncpg.connect(bench_database_url())
    try:
        await conn.execute("VACUUM")
    finally:
        await conn.close()


def postgres_cpu_ticks() -> dict[int, int]:
    """utime+stime (clock ticks) of every process named ``postgres``, by pid."""
    ticks: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "postgres":
                continue
            # fields after the parenthesised command: utime and stime are the 12th and 13th
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[int(proc.name)] = int(fields[11]) + int(fields[12])
    return ticks


async def own_backend_pids() -> set[int]:
    """Backends connected to the benchmark's database (the worker's pool)."""
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", BENCH_DATABASE
        )
    finally:
        await conn.close()
    return {r["pid"] for r in rows}


async def postgres_counters() -> dict[str, Any]:
    """CPU ticks, the bench database's xact_commit and checkpoint rows inserted, right now.

    Read the table counters first (that connection is to the bench database and commits
    transactions of its own), then xact_commit from another database, so the benchmark's own
    queries fall outside the before/after window.
    """
    conn = await asyncpg.connect(bench_database_url())
    try:
        rows = await conn.fetchval(
            "SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables"
            " WHERE schemaname = $1 AND relname = 'checkpoints'",
            CHECKPOINT_SCHEMA,
        )
        statements = await conn.fetchval(
            "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
        )
    finally:
        await conn.close()
    await asyncio.sleep(0.3)
    conn = await asyncpg.connect(ADMIN_DATABASE_URL)
    try:
        commits = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            BENCH_DATABASE,
        )
    finally:
        await conn.close()
    return {
        "ticks": postgres_cpu_ticks(),
        "rows": int(rows),
        "xacts": int(commits),
        "pg_stat_statements": bool(statements),
    }


def pg_delta(
    before: dict[str, Any],
    after_ticks: dict[int, int],
    own: set[int],
    after: dict[str, Any],
    runs: int,
) -> dict[str, float]:
    """Per-step PostgreSQL figures of one drain."""
    steps = runs * STEPS_PER_PIPELINE_RUN
    old = before["ticks"]
    total = sum(t - old.get(pid, 0) for pid, t in after_ticks.items())
    mine = sum(t - old.get(pid, 0) for pid, t in after_ticks.items() if pid in own)
    ms_per_tick = 1000 / CLOCK_TICKS
    return {
        "cpu_ms_per_step": total * ms_per_tick / steps,
        "own_backends_cpu_ms_per_step": mine * ms_per_tick / steps,
        "xacts_per_step": (after["xacts"] - before["xacts"]) / steps,
        "checkpoint_rows_per_run": (after["rows"] - before["rows"]) / runs,
        "pg_stat_statements": float(after["pg_stat_statements"]),
    }


# -- report ----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One line of the table."""

    name: str
    value: float
    unit: str
    baseline: float | None
    target: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """value / baseline, when the figure has a baseline."""
        return None if not self.baseline else self.value / self.baseline


def show(figures: list[Figure]) -> None:
    """Print the table with rich when it is installed, else as plain text."""
    rows = [
        (
            f.name,
            f"{f.value:.3g} {f.unit}",
            "" if f.baseline is None else f"{f.baseline:.4g}",
            "" if f.ratio is None else f"{f.ratio:.2f}x",
            f.target,
            f.note,
        )
        for f in figures
    ]
    head = ("figure", "value", "baseline", "ratio", "target", "note")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    table = Table(title="graphwire runner benchmark (ratios measured in this run)")
    for h in head:
        table.add_column(h)
    for r in rows:
        table.add_row(*r)
    Console(width=200).print(table)


def say(text: str) -> None:
    """Progress on stderr, so stdout holds the table."""
    print(text, file=sys.stderr, flush=True)


def bare(loop: str, n: int) -> float:
    """One measurement of the bare loop ``loop``, said on stderr."""
    rate = measure_bare(loop, n)
    say(f"  bare loop {loop}: {rate:.0f}/s")
    return rate


def mean(*rates: float) -> float:
    """The mean of a bare loop's measurements around a drain."""
    return sum(rates) / len(rates)


def spread(*rates: float) -> str:
    """The measurements behind a mean, for the note: their spread is the machine's noise."""
    return " / ".join(f"{r:.0f}" for r in rates)


def soak_summary(rss: list[tuple[int, int]], runs: int) -> dict[str, float]:
    """RSS (MiB) over the second and the last tenth of the runs, and their ratio."""
    early = [kib for done, kib in rss if runs * 0.1 <= done < runs * 0.2] or [rss[0][1]]
    late = [kib for done, kib in rss if done >= runs * 0.9] or [rss[-1][1]]
    return {
        "early_mib": statistics.median(early) / 1024,
        "late_mib": statistics.median(late) / 1024,
        "late_over_early": statistics.median(late) / statistics.median(early),
        "max_mib": max(kib for _, kib in rss) / 1024,
    }


async def main(args: argparse.Namespace) -> None:
    """Measure every figure and print/write them."""
    n = 1000 if args.quick else 4000
    slow_n = 600 if args.quick else 2000
    rss_n = 1500 if args.quick else 5000
    say(
        f"graphwire runner benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"broker Tansu (memory), {REQUEST_PARTITIONS} partitions, load {os.getloadavg()[0]:.1f}"
    )
    await ensure_bench_database()
    figures: list[Figure] = []
    context: dict[str, Any] = {"load_average_1m": os.getloadavg()[0], "runs": n}
    with DevBroker() as broker:
        bs = broker.bootstrap_servers
        say("bare loops (async def nodes, and with InMemorySaver), then the worker with defaults "
            "(64 in flight), then both loops again")
        a0, m0 = bare("async", n), bare("memory", n)
        defaults = await drain(
            bs, "pipeline", HELLO, n, mode="defaults", max_in_flight=64, watch_postgres=True
        )
        a1, m1 = bare("async", n), bare("memory", n)
        say("the worker with dedup and checkpoints off, then the async and thread loops")
        off = await drain(bs, "pipeline", HELLO, n, mode="off", max_in_flight=64)
        a2 = bare("async", n)
        say("the same with GRAPHWIRE_RUN_CALLBACKS=false, then the async and thread loops")
        lean = await drain(bs, "pipeline", HELLO, n, mode="lean", max_in_flight=64)
        a3, t0 = bare("async", n), bare("threads", n)
        say("the worker with defaults and sync nodes in threads, then the thread loop again")
        threads = await drain(bs, "pipeline", HELLO, n, mode="threads", max_in_flight=64)
        t1, inline = bare("threads", n), bare("inline", n)
        figures += [
            Figure("pipeline: dedup + checkpoints off vs bare loop", off.rate, "runs/s",
                   mean(a1, a2), ">= 0.85x", f"async def nodes; bare {spread(a1, a2)}"),
            Figure("pipeline: both off, run callbacks off vs bare loop", lean.rate, "runs/s",
                   mean(a2, a3), "context",
                   f"GRAPHWIRE_RUN_CALLBACKS=false; bare {spread(a2, a3)}"),
            Figure("pipeline: defaults vs bare loop", defaults.rate, "runs/s", mean(a0, a1),
                   ">= 0.5x", f"async def nodes; bare {spread(a0, a1)}"),
            Figure("pipeline: defaults vs the same loop with InMemorySaver", defaults.rate,
                   "runs/s", mean(m0, m1), ">= 0.9x",
                   f"ceiling for durable runs; loop {spread(m0, m1)}"),
            Figure("pipeline: both off vs a loop of sync nodes in threads", off.rate, "runs/s",
                   mean(t0, t1), "context",
                   f"the old baseline (LangGraph's thread hop); loop {spread(t0, t1)}"),
            Figure("pipeline: defaults, sync nodes in threads vs the same loop", threads.rate,
                   "runs/s", mean(t0, t1), "context",
                   f"GRAPHWIRE_SYNC_NODES=thread; loop {spread(t0, t1)}"),
        ]
        pg = defaults.pg
        figures.append(
            Figure("PostgreSQL server CPU per checkpointed step", pg["cpu_ms_per_step"], "ms",
                   None, "<= 0.15 ms",
                   f"own backends {pg['own_backends_cpu_ms_per_step']:.3f} ms; all postgres "
                   "processes, shared server")
        )
        figures.append(
            Figure("PostgreSQL transactions per checkpointed step, 64 in flight",
                   pg["xacts_per_step"], "xacts", None, "<= 0.2",
                   f"{pg['checkpoint_rows_per_run']:.1f} checkpoint rows/run; "
                   + ("pg_stat_statements present" if pg["pg_stat_statements"]
                      else "no pg_stat_statements: transactions, not statements"))
        )
        say("slow 0.2 s, 200 in flight: both off, then defaults")
        slow_off = await drain(bs, "slow", SLOW, slow_n, mode="off", max_in_flight=200)
        slow_def = await drain(bs, "slow", SLOW, slow_n, mode="defaults", max_in_flight=200)
        figures.append(
            Figure("slow 0.2 s, 200 in flight: defaults vs both off", slow_def.rate, "runs/s",
                   slow_off.rate, ">= 0.9x")
        )
        say("slow 0.2 s, 25 in flight per worker, defaults: 1 worker, then 2")
        io_one = await drain(bs, "slow", SLOW, slow_n, mode="defaults", max_in_flight=25)
        io_two = await drain(bs, "slow", SLOW, slow_n, mode="defaults", max_in_flight=25,
                             processes=2)
        figures.append(
            Figure("slow 0.2 s, 25 in flight each: 2 workers vs 1, defaults", io_two.rate,
                   "runs/s", io_one.rate, ">= 1.8x", "I/O-bound: each worker at its limit")
        )
        say("pipeline with defaults on 2 worker processes")
        two = await drain(
            bs, "pipeline", HELLO, n, mode="defaults", max_in_flight=64, processes=2
        )
        figures.append(
            Figure("pipeline: 2 workers vs 1, defaults", two.rate, "runs/s", defaults.rate,
                   "context", "CPU-bound on 2 cores shared with the broker and PostgreSQL")
        )
        rss_runs = args.soak or rss_n
        say(f"slow 0.2 s, 500 in flight, defaults: RSS over {rss_runs} runs")
        soak = await drain(bs, "slow", SLOW, rss_runs, mode="defaults", max_in_flight=500,
                           timeout=max(900.0, rss_runs / 20))
        s = soak_summary(soak.rss, rss_runs)
        figures.append(
            Figure("worker RSS, 500 in flight (max)", s["max_mib"], "MiB", None, "reported",
                   f"{rss_runs} runs: {s['early_mib']:.0f} MiB at 10-20%, "
                   f"{s['late_mib']:.0f} MiB at 90-100% ({s['late_over_early']:.2f}x)")
        )
        context |= {"postgres": pg, "soak": s, "soak_runs": rss_runs,
                    "bare_loops": {"async": [a0, a1, a2, a3], "memory": [m0, m1],
                                   "threads": [t0, t1], "inline": [inline]},
                    "errors": {"defaults": defaults.errors, "off": off.errors, "lean": lean.errors,
                               "threads": threads.errors,
                               "slow_off": slow_off.errors, "slow_defaults": slow_def.errors,
                               "io_one": io_one.errors, "io_two": io_two.errors,
                               "two": two.errors, "soak": soak.errors}}
    show(figures)
    if args.json:
        write_json(args.json, figures, context)


def write_json(path: str, figures: list[Figure], context: dict[str, Any]) -> None:
    """The table's numbers (and the context behind them) as JSON, for the README."""
    payload = {"figures": [asdict(f) | {"ratio": f.ratio} for f in figures], "context": context}
    Path(path).write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    say(f"wrote {path}")


def run_bare(argv: list[str]) -> None:
    """``--bare LOOP N``: print the bare loop's runs/s as JSON."""
    loop, n = argv
    rate = asyncio_run(bare_loop(loop, int(n)))
    print(orjson.dumps({"rate": rate}).decode(), flush=True)


def asyncio_run(coro: Any) -> Any:
    """Run on the event loop `graphwire worker` uses (uvloop where installed), to be fair."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    parser.add_argument(
        "--soak", type=int, default=0, metavar="N",
        help="measure RSS over N runs (e.g. 100000) instead of a few thousand",
    )
    parser.add_argument("--bare", nargs=2, metavar=("LOOP", "N"), help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    options = parse_args()
    if options.bare:
        run_bare(options.bare)
    else:
        asyncio_run(main(options))
