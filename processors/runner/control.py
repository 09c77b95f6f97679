"""Run control: cancels from ``<prefix>.control`` and the stops that double-texting asks for.

A cancel must reach a request wherever it is. The runners' consumer group reads the control
topic beside the requests topic, so one member takes each control message (its offset is
committed like a request's once handled), and that member:

1. writes a cancel marker next to the request's run-status keys in Redis (``mark_cancel``):
   the claim of a request not started yet finds it in the same round trip and runs nothing,
   and the lease renewals of a running request (a round trip made anyway, every third of a
   lease) find it and stop the run at its next step boundary, on whichever worker holds it,
   also after a rebalance or a crash moved it;
2. announces it on a Redis channel (same script): the worker holding the run stops it at its
   next step boundary without waiting for a renewal (a missed announcement only costs time);
3. stops the run at once if it runs on this very worker.

A cancel of a finished request is dead-lettered with the reason; one of a request no store
knows yet (still on the requests topic) waits in Redis for it (``done_ttl_s``).

``RunStops`` remembers, per worker, which requests are to stop and how: the run's executor
asks it when a run starts and when a step boundary is reached.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.claims import RedisClaims
from graphwire.processors.runner.gate import DependencyGate
from graphwire.processors.runner.publisher import OutputPublisher, Record
from graphwire.topics.errors import DependencyUnavailable
from graphwire.topics.models import Control
from graphwire.topics.runstatus import CancelMarker

log = logging.getLogger(__name__)

CANCEL_DRAIN = "cancel"
"""The ``RunControl`` drain reason of a run stopped by a cancel or a multitask strategy."""

_REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class Stop:
    """Why and how a run is to stop."""

    action: Literal["interrupt", "rollback"]
    """``interrupt``: keep the checkpointed progress; ``rollback``: delete it."""
    cause: Literal["cancel", "multitask"]
    """A cancel message, or a later request's ``multitask_strategy``."""
    why: str
    """The first half of the result's message: who asked."""

    def message(self, thread_id: str | None, ran: bool) -> str:
        """The cancelled result's ``error.message``."""
        if not ran:
            return f"{self.why}; it had not started, so nothing ran"
        if self.action == "rollback":
            return f"{self.why}; the checkpoints it wrote were deleted (rollback)"
        where = f"thread {thread_id!r}" if thread_id else "its checkpoints"
        return f"{self.why}; the steps it finished are kept on {where} (interrupt)"


class RunStops:
    """The stops asked for on this worker, and the runs they apply to (bounded memory)."""

    def __init__(self) -> None:
        self._asked: OrderedDict[str, Stop] = OrderedDict()
        self._running: dict[str, Any] = {}

    def ask(self, request_id: str, stop: Stop) -> None:
        """Stop ``request_id`` at its next step boundary, or when it is reached."""
        if request_id in self._asked and self._asked[request_id].action == "rollback":
            stop = Stop("rollback", stop.cause, self._asked[request_id].why)  # the stronger wins
        self._asked[request_id] = stop
        self._asked.move_to_end(request_id)
        while len(self._asked) > _REMEMBERED:
            self._asked.popitem(last=False)
        control = self._running.get(request_id)
        if control is not None:
            control.request_drain(CANCEL_DRAIN)

    def get(self, request_id: str) -> Stop | None:
        """The stop asked for ``request_id``, if any."""
        return self._asked.get(request_id) if self._asked else None

    def started(self, request_id: str, control: Any) -> None:
        """``request_id`` runs under ``control`` (a LangGraph ``RunControl``)."""
        self._running[request_id] = control
        if self._asked and request_id in self._asked:
            control.request_drain(CANCEL_DRAIN)

    def ended(self, request_id: str) -> None:
        """The run of ``request_id`` is over (whatever its outcome)."""
        self._running.pop(request_id, None)

    def forget(self, request_id: str) -> None:
        """``request_id`` is done: nothing is left to stop."""
        if self._asked:
            self._asked.pop(request_id, None)


async def delete_run_checkpoints(saver: Any, thread_id: str, request_id: str) -> int:
    """Delete the checkpoints (and their pending writes) that ``request_id`` wrote on
    ``thread_id``: the thread is as it was before the run. Returns how many were deleted.

    Blobs of channel versions only these checkpoints used stay (unreferenced, reclaimed when
    the thread is deleted or pruned)."""
    async with saver.pool.acquire(timeout=10) as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM checkpoint_writes w USING checkpoints c WHERE c.thread_id = $1 "
            "AND c.metadata->>'graphwire_request_id' = $2 AND w.thread_id = c.thread_id "
            "AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id",
            thread_id, request_id,
        )
        status = await conn.execute(
            "DELETE FROM checkpoints WHERE thread_id = $1 "
            "AND metadata->>'graphwire_request_id' = $2",
            thread_id, request_id,
        )
    return int(str(status).rsplit(" ", 1)[-1])


class ControlHandler:
    """Handles one message of ``<prefix>.control``: marks the cancel in Redis, stops the run
    if it is here, dead-letters what cannot be done (with the reason)."""

    def __init__(
        self,
        out: OutputPublisher,
        metrics: RunnerMetrics,
        stops: RunStops,
        *,
        dedup: RedisClaims | None,
        gate: DependencyGate | None,
        stopping: Callable[[], bool],
    ) -> None:
        self._out = out
        self._metrics = metrics
        self._stops = stops
        self._dedup = dedup
        self._gate = gate
        self._stopping = stopping

    async def handle(self, record: Record) -> bool:
        """Handle ``record``; False when it stays uncommitted (Redis down: fetched again)."""
        try:
            control = _decode(record.value)
        except ValueError as exc:
            self._metrics.cancel_requests.labels("invalid").inc()
            await self._out.dead_letter_only(record, str(exc), "invalid_control")
            return True
        stop = Stop(
            control.action, "cancel",
            f"cancelled by a cancel request{f' ({control.reason})' if control.reason else ''}",
        )
        while True:
            try:
                return await self._cancel(record, control, stop)
            except DependencyUnavailable as exc:
                if self._gate is None or self._stopping():
                    log.warning("leaving control %s/%d uncommitted: %s", record.topic,
                                record.offset, exc)
                    return False
                self._gate.report(exc)
                if not await self._gate.wait_healthy(self._stopping):
                    return False

    async def _cancel(self, record: Record, control: Control, stop: Stop) -> bool:
        rid = control.request_id
        if self._dedup is None:  # no Redis: only a run on this worker can be reached
            self._stops.ask(rid, stop)
            self._metrics.cancel_requests.labels("local").inc()
            log.warning("cancel of %s without Redis: only stops it if it runs here", rid)
            return True
        mark = await self._dedup.mark_cancel(rid, CancelMarker(control.action, control.reason))
        if mark.done is not None:
            self._metrics.cancel_requests.labels("finished").inc()
            await self._out.dead_letter_only(
                record,
                f"cannot cancel {rid!r}: it already finished ({mark.done.status}); nothing to "
                "cancel",
                "cancel_finished",
            )
            return True
        self._stops.ask(rid, stop)
        outcome = "running" if mark.running_on else "pending"
        self._metrics.cancel_requests.labels(outcome).inc()
        log.info("cancel (%s) of %s: %s%s", control.action, rid, outcome,
                 f" on {mark.running_on}" if mark.running_on else "")
        return True


def _decode(value: bytes | None) -> Control:
    """A control message, or ``ValueError`` saying what is wrong with it."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise ValueError(
            "control message is not UTF-8 JSON; produce an object like "
            '{"type": "cancel", "request_id": "..."}'
        ) from None
    try:
        return Control.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "control"
        raise ValueError(
            f"invalid control message: {where}: {first['msg']} (see `graphwire schema`)"
        ) from None
