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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_agentapi import CONCURRENCY, KEY, Side, graphwire_stack  # noqa: E402
from bench.profile import py_spy, summarise  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    extra = dict(pair.split("=", 1) for pair in args.env)
    async with graphwire_stack(args.processes, extra) as (url, processes):
        for rep in range(args.reps):
            await Side(url, KEY, processes).round(64)  # warm up, not counted
            side = Side(url, KEY, processes)
            spy = None
            raw = Path(tempfile.mkdtemp()) / "profile.raw"
            if args.spy and rep == 0:
                pids = processes[args.spy]()
                spy = subprocess.Popen(  # noqa: ASYNC220 (a profiler, stopped below)
                    [py_spy(), "record", "--gil", "--format", "raw", "--rate", "200",
                     "--output", str(raw), "--pid", str(pids[-1])],
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
