"""Claims without Redis (``GRAPHWIRE_DEDUP=false``): the same face as ``RedisClaims``, holding
nothing, so the runner's request life has one shape with or without dedup."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from graphwire.processors.runner.claims import CancelMark, Claim, Turn
from graphwire.topics.runstatus import CancelMarker, RunState


class Claims(Protocol):
    """What the request life asks of the run-status claims (``RedisClaims`` or ``LocalClaims``)."""

    async def acquire(self, request_id: str, owner: str, turn: Turn | None = None) -> Claim: ...

    async def lookup(self, request_id: str) -> RunState | None: ...

    async def wait_for_thread(self, thread_id: str, timeout: float) -> bool: ...

    async def mark_cancel(self, request_id: str, marker: CancelMarker) -> CancelMark: ...

    def mark_queued(self, request_id: str) -> None: ...

    async def keep_result(
        self, request_id: str, owner: str, value: bytes, dead_letter: str | None
    ) -> None: ...

    async def complete(self, request_id: str, owner: str, status: str) -> None: ...

    async def release(self, request_id: str, owner: str) -> None: ...

    def hold(
        self, request_id: str, owner: str, on_lost: Callable[[], None] | None = None,
        on_cancel: Callable[[CancelMarker], None] | None = None,
    ) -> None: ...

    def let_go(self, request_id: str) -> None: ...

    def lost(self, request_id: str) -> bool: ...


class LocalClaims:
    """Claims that hold nothing: every start is attempt 1 and acquired at once, no request is
    ever done or running elsewhere, and keeping a result or marking it done does nothing.

    Without Redis nothing keeps two workers from running the same request_id, and a crash
    after a result was published runs the request again (see ARCHITECTURE.md)."""

    async def acquire(self, request_id: str, owner: str, turn: Turn | None = None) -> Claim:
        """Always acquired, as the first start."""
        return Claim("acquired", attempt=1)

    async def lookup(self, request_id: str) -> RunState | None:
        """Nothing is known about any request_id."""
        return None

    async def wait_for_thread(self, thread_id: str, timeout: float) -> bool:
        """Never waited for: ``acquire`` never answers ``wait``."""
        return True

    async def mark_cancel(self, request_id: str, marker: CancelMarker) -> CancelMark:
        """Nothing to mark: a cancel reaches only runs on this worker (``RunStops``)."""
        return CancelMark(first=True, done=None, running_on=None)

    def mark_queued(self, request_id: str) -> None:
        """Nothing to mark: without Redis no cancel asks whether a worker holds it."""

    async def keep_result(
        self, request_id: str, owner: str, value: bytes, dead_letter: str | None
    ) -> None:
        """Nothing is kept."""

    async def complete(self, request_id: str, owner: str, status: str) -> None:
        """No done marker."""

    async def release(self, request_id: str, owner: str) -> None:
        """No lease to release."""

    def hold(
        self, request_id: str, owner: str, on_lost: Callable[[], None] | None = None,
        on_cancel: Callable[[CancelMarker], None] | None = None,
    ) -> None:
        """No lease to renew."""

    def let_go(self, request_id: str) -> None:
        """No lease to stop renewing."""

    def lost(self, request_id: str) -> bool:
        """A lease that is not there is never lost."""
        return False
