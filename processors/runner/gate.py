"""DependencyGate: notices when Redis or PostgreSQL stop answering and when they come back.

While a dependency is down the runner takes no new work (its partitions are paused, polling
goes on so it keeps its group membership), messages that hit the outage wait here and are
processed again once it is back. One log line per state change, not one per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from graphwire.topics.errors import DependencyUnavailable

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]


class DependencyGate:
    """Health of the runner's dependencies, probed with backoff while any is down."""

    def __init__(self, checks: dict[str, Check], *, max_backoff_s: float = 5.0) -> None:
        self._checks = checks
        self._max_backoff = max_backoff_s
        self._down: dict[str, str] = {}
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._probe: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """True when every dependency answered at the last check."""
        return self._healthy.is_set()

    def status(self) -> dict[str, str]:
        """``{name: "ok" | reason}`` for readiness reporting."""
        return {name: self._down.get(name, "ok") for name in self._checks}

    def report(self, exc: BaseException) -> None:
        """A call failed with ``DependencyUnavailable``: close the gate and start probing."""
        if self._healthy.is_set():
            log.error("dependency unavailable, pausing new work until it answers: %s", exc)
            # until the first probe says which one: every dependency is in doubt
            self._down = {name: f"checking after: {exc}" for name in self._checks}
        self._healthy.clear()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_until_healthy())

    async def wait_healthy(self, stopping: Callable[[], bool]) -> bool:
        """Wait until the gate opens; False if the worker started stopping meanwhile."""
        while not stopping():
            try:
                await asyncio.wait_for(self._healthy.wait(), timeout=0.5)
                return True
            except TimeoutError:
                continue
        return False

    async def _probe_until_healthy(self) -> None:
        delay = 0.2
        while True:
            down = {}
            for name, check in self._checks.items():
                try:
                    await check()
                except (DependencyUnavailable, OSError) as exc:
                    down[name] = str(exc)
            for name in down.keys() - self._down.keys():
                log.error("%s is unavailable: %s", name, down[name])
            for name in self._down.keys() - down.keys():
                log.warning("%s answers again", name)
            self._down = down
            if not down:
                log.warning("all dependencies answer: resuming")
                self._healthy.set()
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    async def stop(self) -> None:
        """Stop probing."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
