"""The bodies of the run routes that last as long as a run: the SSE stream (``/runs/stream``,
``join_stream``) and the JSON of ``/runs/wait`` and ``join``.

A stream reads the run's graphwire events from its first position: those this gateway's Kafka
client kept, and those published before it watched the run read back from the audit table (as
``/workflow/stream`` does), feeds each to a ``RunStream`` and writes its frames; a heartbeat
comment every 5 s of silence. ``wait`` sends a newline every 5 s until the result. Both book the
run's end (``RunBook.finished``) before their last bytes, and with ``on_disconnect: cancel``
cancel the run when the client goes away first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

from graphwire.processors.gateway.agentapi import records
from graphwire.processors.gateway.agentapi.runbook import RunBook
from graphwire.processors.gateway.agentapi.state import read_state
from graphwire.processors.gateway.agentapi.streams import (
    HEARTBEAT,
    HEARTBEAT_S,
    KEEPALIVE,
    RunStream,
    metadata_frame,
    wait_body,
)
from graphwire.processors.gateway.sse import live_events
from graphwire.processors.gateway.streamed import Last
from graphwire.topics.codec import dumps
from graphwire.topics.models import Event, Result
from graphwire.topics.positions import FIRST_POSITION

log = logging.getLogger(__name__)

RUN_MAX_S = 24 * 3600.0
"""The longest a stream or a wait follows one run (then it ends; ``join`` again)."""
GIVE_UP_ON_EVENTS_S = 5.0
"""The result is here but earlier events cannot be found: stop waiting for them."""
NOTHING_STARTED_S = 1.0
"""The result is here and no event of the run is: it never started (cancelled, rejected)."""
FINISHED_RESULT_S = 3.0
"""How long ``join`` of a run recorded as finished looks for its result before answering from
the thread's state."""


def _grace(_result: Result, sent: int) -> float:
    """Events of a run that started may still come; a run none of whose events came never
    started (cancelled, rejected)."""
    return GIVE_UP_ON_EVENTS_S if sent >= 0 else NOTHING_STARTED_S


async def run_events(gw: Any, run_id: str, timeout: float = RUN_MAX_S,
                     ) -> AsyncIterator[Event | None]:
    """The run's events from its first, in position order, ending after ``run_finished`` (or
    soon after its result when events are missing); ``None`` at each half second without
    one (time for a heartbeat)."""
    gw.client.watch(run_id, events=True)
    async for event in live_events(gw.client, gw.db, run_id, -1, time.monotonic() + timeout,
                                   _grace):
        yield event


async def await_result(gw: Any, run_id: str,
                       timeout: float = RUN_MAX_S) -> AsyncIterator[Result | None]:
    """``None`` every ``HEARTBEAT_S`` while the run goes on, then its result (nothing more
    after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            yield await gw.client.result(run_id, timeout=HEARTBEAT_S)
            return
        except TimeoutError:
            yield None


class RunBody:
    """What the stream and wait bodies of one run share: the gateway, the run's record and
    what to do when the client goes away."""

    def __init__(self, gw: Any, book: RunBook, run: dict[str, Any], *,
                 cancel_on_disconnect: bool = False) -> None:
        self.gw = gw
        self.book = book
        self.run = run
        self.run_id = str(run["run_id"])
        self.cancel_on_disconnect = cancel_on_disconnect

    async def sse(self, modes: Collection[str], *, after: int | None = None,
                  fresh: bool = False) -> AsyncIterator[bytes]:
        """The SSE body: frames of events after ``after`` (``fresh``: the ``metadata`` frame
        at once, for a stream that created the run), heartbeats, the end's frames."""
        stream = RunStream(self.run_id, modes, after=after)
        done = False
        last_write = time.monotonic()
        try:
            if fresh:
                yield metadata_frame(self.run_id)
            async for event in run_events(self.gw, self.run_id):
                frames: list[bytes] = []
                if event is not None:
                    if event.type == "run_started":
                        await self.book.mark_running(self.run)
                    frames = stream.feed(event)
                    if fresh and event.seq == FIRST_POSITION:  # its metadata went first
                        frames = [f for f in frames if not f.startswith(b"event: metadata\r")]
                for chunk in frames:
                    yield chunk
                if frames:
                    last_write = time.monotonic()
                elif time.monotonic() - last_write >= HEARTBEAT_S:
                    yield HEARTBEAT
                    last_write = time.monotonic()
            async for result in await_result(self.gw, self.run_id):
                if result is None:
                    yield HEARTBEAT
                    continue
                await self.book.finished(result)
                for chunk in stream.finish(result):
                    yield chunk
            done = True
        finally:
            if not done and self.cancel_on_disconnect:
                self.book.cancel_soon(self.run_id)

    async def wait(self, thread: dict[str, Any] | None) -> AsyncIterator[bytes]:
        """The ``wait``/``join`` body: a newline every ``HEARTBEAT_S``, then ``wait_body``."""
        done = False
        try:
            finished = self.run["status"] not in ("pending", "running")
            limit = FINISHED_RESULT_S if finished else RUN_MAX_S
            async for result in await_result(self.gw, self.run_id, limit):
                if result is None:
                    yield KEEPALIVE
                    continue
                if self.run.get("thread_id") is None:
                    # a stateless run: no thread waits on its end. It is booked meanwhile, and
                    # a read of its record here waits for that (``RunBook.refresh``)
                    self.book.finish_soon(result)
                else:
                    await self.book.finished(result)
                done = True
                yield Last(dumps(wait_body(result, await self._values(result, thread))))
                return
            done = True
            yield Last(dumps(await self._without_result(thread, finished)))
        finally:
            if not done and self.cancel_on_disconnect:
                self.book.cancel_soon(self.run_id)

    async def _values(self, result: Result, thread: dict[str, Any] | None) -> Any:
        """The thread's state values (for an interrupted run's body), else None."""
        if result.status != "interrupted" or thread is None:
            return None
        return await self._thread_values(thread)

    async def _thread_values(self, thread: dict[str, Any]) -> Any:
        """The thread's latest values (its record re-read: the run stamped its graph), or
        None when they cannot be read (the body must not fail half-written)."""
        try:
            fresh = await records.get_thread(self.gw.agent.records(), thread["thread_id"], None)
            return None if fresh is None else (await read_state(self.gw, fresh))["values"]
        except Exception as exc:
            log.warning("could not read the state of thread %s (%s: %s)", thread["thread_id"],
                        type(exc).__name__, exc)
            return None

    async def _without_result(self, thread: dict[str, Any] | None, finished: bool) -> Any:
        """The body when no result is to be had: the thread's values for a finished run (its
        result expired), else a timeout error."""
        if finished:
            if self.run["status"] in ("error", "timeout"):
                return {"__error__": {"error": self.run["status"].title(),
                                      "message": f"the run ended {self.run['status']}"}}
            values = await self._thread_values(thread) if thread else None
            return values if values is not None else {}
        return {"__error__": {"error": "TimeoutError",
                              "message": f"no result within {RUN_MAX_S:.0f} s; join again"}}
