"""py-spy profile of a `graphwire worker` draining pre-filled pipeline requests.

    make profile                                  # defaults: dedup + checkpoints, durability async
    .venv/bin/python bench/profile.py --settings off --runs 4000 --top 30
    .venv/bin/python bench/profile.py --env GRAPHWIRE_DURABILITY=exit --raw /tmp/exit.raw

The requests are produced first; ``py-spy record --format raw`` (folded stacks) attaches to the
worker when its first result arrives and detaches (SIGINT) when the last one is in, so imports,
group join and shutdown stay out of the profile. The
summary prints the top functions by own time (the leaf frame: where the CPU is spent), by total
time (anywhere on the stack: what it is spent for) and own time by package. By default only
samples holding the GIL are kept (``py-spy --gil``): that is where the worker's CPU goes, and it
leaves out threads blocked in C (py-spy counts an idle ``ThreadPoolExecutor`` worker waiting on
its queue as busy otherwise); ``--all-threads`` keeps every non-idle sample.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_latency import CHAT, PACED  # noqa: E402
from bench.bench_runner import HELLO, SLOW, asyncio_run, drain, ensure_bench_database  # noqa: E402
from graphwire.processors.dev.broker import DevBroker  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
"""A py-spy raw frame: ``function (path/to/file.py:line)``."""


def py_spy() -> str:
    """The py-spy executable: $PY_SPY, this venv's (the dev extra installs it), or on PATH."""
    if os.environ.get("PY_SPY"):
        return os.environ["PY_SPY"]
    candidate = Path(sys.executable).parent / "py-spy"
    found = str(candidate) if candidate.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed: run `.venv/bin/pip install py-spy` first.")
    return found


def short(path: str) -> str:
    """A full file name relative to site-packages, the stdlib or the repository."""
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest if marker == "site-packages/" else rest.split("/", 1)[-1]
    return path.removeprefix(str(ROOT) + "/")


def package(path: str) -> str:
    """Who owns a frame's file: the top-level package of its short name."""
    return short(path).split("/", 1)[0].removesuffix(".py") or "?"


def parse(raw: str) -> list[tuple[list[tuple[str, str]], int]]:
    """Folded stacks as ([(function, file), ...] root first, samples)."""
    stacks = []
    for row in raw.splitlines():
        folded, _, count = row.rpartition(" ")
        if not folded or not count.isdigit():
            continue
        frames = []
        for frame in folded.split(";"):
            match = FRAME.match(frame)
            frames.append((match["func"], match["file"]) if match else (frame, ""))
        stacks.append((frames, int(count)))
    return stacks


def summarise(raw: str, top: int) -> str:
    """The top ``top`` functions by own and by total time, and own time per package."""
    stacks = parse(raw)
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    for frames, count in stacks:
        names = [f"{func} ({short(file)})" for func, file in frames]
        own[names[-1]] += count
        by_package[package(frames[-1][1])] += count
        for name in set(names):  # a recursive function counts once per sample
            inclusive[name] += count

    def block(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"{title} (of {total} samples)"]
        rows += [f"  {100 * c / total:5.1f}%  {name}" for name, c in counter.most_common(top)]
        return rows

    # the entry point and the event loop are on nearly every stack: they say nothing
    inclusive = Counter({k: c for k, c in inclusive.items() if c < 0.9 * total})
    return "\n".join(
        [*block("own time", own), "",
         *block("total time, frames on >= 90% of stacks left out", inclusive), "",
         *block("own time by package", by_package)]
    )


async def record(args: argparse.Namespace, raw_path: Path) -> float:
    """Drain ``args.runs`` requests of ``args.graph`` with the worker under py-spy; runs/s."""
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("GRAPHWIRE_"):
            raise SystemExit(f"--env {item!r}: write it as GRAPHWIRE_NAME=value.")
        os.environ[name] = value  # the worker's environment starts from ours
    if args.graph == "chat_paced":
        os.environ.update(PACED)
    await ensure_bench_database()
    spy: list[subprocess.Popen[bytes]] = []

    def attach(pid: int) -> None:
        spy.append(subprocess.Popen(
            [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--rate", str(args.rate),
             "--output", str(raw_path), "--full-filenames",
             *([] if args.all_threads else ["--gil"]),
             *(["--subprocesses"] if args.processes > 1 else [])],
            stdout=subprocess.DEVNULL,
        ))

    def detach() -> None:
        for process in spy:
            process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            process.wait(120)

    with DevBroker() as broker:
        body = {"slow": SLOW, "chat": CHAT, "chat_paced": CHAT}.get(args.graph, HELLO)
        fields = {"stream": ["messages"]} if args.graph.startswith("chat") else None
        result = await drain(broker.bootstrap_servers, args.graph, body, args.runs, fields=fields,
                             mode=args.settings, max_in_flight=args.max_in_flight,
                             processes=args.processes, on_first_result=attach, on_drained=detach)
    if not spy or spy[0].returncode != 0:
        raise SystemExit("py-spy could not record the worker: see its message above.")
    return result.rate


def main() -> None:
    """Record, then print the summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--settings", choices=("defaults", "off"), default="defaults",
                        help="defaults: dedup + checkpoints on; off: both off")
    parser.add_argument("--env", action="append", default=[], metavar="GRAPHWIRE_X=V",
                        help="extra worker setting, repeatable")
    parser.add_argument("--graph", default="pipeline",
                        choices=("pipeline", "slow", "chat", "chat_paced"),
                        help="pipeline (3 quick nodes), slow (one 0.2 s async node), chat (21 "
                             "tokens streamed as message events) or chat_paced (the same at 50 "
                             "tokens/s, bench/paced_chat.py)")
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--all-threads", action="store_true",
                        help="keep samples not holding the GIL (threads blocked in C, too)")
    parser.add_argument("--raw", metavar="PATH", help="keep py-spy's folded stacks here")
    args = parser.parse_args()
    raw_path = Path(args.raw or tempfile.mkstemp(suffix=".raw", prefix="graphwire-profile-")[1])
    rate = asyncio_run(record(args, raw_path))
    print(f"worker settings {args.settings} {' '.join(args.env)}: {args.runs} {args.graph} runs at "
          f"{rate:.0f} runs/s under py-spy ({args.rate} Hz, "
          f"{'all threads' if args.all_threads else 'GIL holder only'}); "
          f"folded stacks in {raw_path}\n")
    print(summarise(raw_path.read_text(), args.top))


if __name__ == "__main__":
    main()
