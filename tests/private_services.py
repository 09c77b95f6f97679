"""Private Redis and PostgreSQL servers that a test may stop and restart (outage tests).

They run on free ports with their own data, never touching the shared services. A machine
without the server binaries (or, for PostgreSQL, without root to run initdb as `postgres`)
skips the tests that need them, with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from graphwire.processors.dev.broker import free_port


class PrivateRedis:
    """``redis-server`` on a free port, no persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed: outage test needs a private Redis")
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb as the ``postgres`` user), trust auth."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found or os.geteuid() != 0 or shutil.which("runuser") is None:
            pytest.skip("needs PostgreSQL server binaries and root (initdb runs as postgres)")
        self.bin = Path(found[-1]).parent
        # pytest's tmp dirs are private to root; the postgres user needs a path it can reach
        self.root = Path(tempfile.mkdtemp(prefix="graphwire-pg-"))
        self.root.chmod(0o777)
        self.data = self.root / "pgdata"
        self.port = free_port()
        self._as_postgres(
            [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self._as_postgres(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-w",
                "-l",
                str(self.data / "log"),
                "-o",
                f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1",
                "start",
            ]
        )

    def stop(self) -> None:
        """Like a crash: immediate shutdown, connections cut."""
        self._as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        )

    def remove(self) -> None:
        """Stop (if running) and delete the cluster."""
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_port(port: int, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")
