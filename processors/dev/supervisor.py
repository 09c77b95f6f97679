"""``graphwire worker|audit --processes N``: N processes in one consumer group.

Python runs one core per process, so a machine with N cores runs N workers. Each child is a
plain ``graphwire worker``; SIGTERM/SIGINT is forwarded so every child drains gracefully, and a
child that dies is restarted (Kafka rebalances its partitions meanwhile).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM (a graceful drain) if the supervisor itself dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(command: list[str], http_port: int, port_env: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, port_env: str(http_port)}
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)


def run_processes(
    count: int, argv: list[str], http_port: int = 0, port_env: str = "GRAPHWIRE_HTTP_PORT"
) -> int:
    """Run ``count`` children of ``graphwire <argv>`` until SIGTERM/SIGINT; returns exit code.

    Child ``i`` serves health and metrics on ``http_port + i`` (0: none), given to it in the
    environment variable ``port_env``."""
    command = [sys.executable, "-m", "graphwire", *argv]
    ports = [http_port + i if http_port else 0 for i in range(count)]
    children = [_spawn(command, port, port_env) for port in ports]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping:
        for i, child in enumerate(children):
            if child.poll() is not None and not stopping:
                print(
                    f"graphwire: worker process {child.pid} exited with {child.returncode}; "
                    "restarting it",
                    file=sys.stderr,
                )
                children[i] = _spawn(command, ports[i], port_env)
        time.sleep(0.5)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
