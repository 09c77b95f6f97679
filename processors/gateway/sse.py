"""Server-sent events of one run: ``id:`` is the event's seq, so a client that reconnects with
``Last-Event-ID`` gets exactly the events after it, then the result. Each try of a run
numbers its events from its own base (``graphwire.topics.positions``): after the last event
of a try that did not finish, the stream goes on at the next try's ``run_started``.

Events come from the gateway's Kafka client as they are published. Events published before
this gateway process watched the request (a reconnect to another replica, or a stream opened
late) are read back from the audit table, which the sink fills within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from graphwire.topics.client import GraphwireClient
from graphwire.topics.errors import GraphwireError
from graphwire.topics.models import Event
from graphwire.topics.positions import FIRST_POSITION, next_event

KEEPALIVE_S = 15.0
GIVE_UP_ON_EVENTS_S = 5.0  # the result is here but earlier events cannot be found


def _frame(event: Event) -> bytes:
    data = orjson.dumps(event.model_dump(mode="json"))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)


def _live_from(live: list[Event], sent: int) -> bool:
    """True when the live events (in seq order) hold everything after ``sent``: they began
    at or before the next position, or at the request's very first event."""
    return bool(live) and (live[0].seq <= sent + 1 or live[0].seq == FIRST_POSITION)


async def stored_events(db: Any, request_id: str, after: int) -> list[Event]:
    """Events of ``request_id`` with seq > ``after`` from the audit table ([] without one)."""
    if db is None:
        return []
    try:
        rows = await db.fetch(
            "SELECT e.seq, e.type, e.node, e.data, e.ts, coalesce(r.graph, '') AS graph "
            "FROM graphwire_events e LEFT JOIN graphwire_runs r USING (request_id) "
            "WHERE e.request_id = $1 AND e.seq > $2 ORDER BY e.seq",
            request_id, after,
        )
    except Exception:  # no audit tables, or PostgreSQL down: live events only
        return []
    return [
        Event(request_id=request_id, seq=r["seq"], type=r["type"], graph=r["graph"],
              node=r["node"], data=orjson.loads(r["data"]) if r["data"] else None,
              ts=r["ts"].timestamp())
        for r in rows
    ]


async def event_stream(
    client: GraphwireClient, db: Any, request_id: str, after: int, timeout: float
) -> AsyncIterator[bytes]:
    """The SSE body: events with seq > ``after`` in order, then ``event: result``."""
    client.watch(request_id)
    # a finished run: its result via Redis, now (not for a run just submitted here: no result
    # can be in Redis yet, and the lookup would hold the first event back up to 50 ms)
    if client.known_result(request_id) is None and not client.awaiting_first_result(request_id):
        with contextlib.suppress(TimeoutError, GraphwireError):
            await client.result(request_id, timeout=0.05)
    sent = after
    deadline = time.monotonic() + timeout
    last_write = time.monotonic()
    backfilled = 0.0
    result_since: float | None = None
    stored: dict[int, Event] = {}  # read back from the audit table
    yield f": events of {request_id} after {after}\n\n".encode()
    finished = False
    while not finished and time.monotonic() < deadline:
        signal = client.event_signal(request_id)
        signal.clear()
        live = client.seen_events(request_id)
        if not _live_from(live, sent) and time.monotonic() - backfilled > 0.5:
            stored.update((e.seq, e) for e in await stored_events(db, request_id, sent))
            backfilled = time.monotonic()
        known = {**stored, **{e.seq: e for e in live}}
        while (event := next_event(known, sent)) is not None:
            # Moving on to a later try's run_started skips what is between: only when
            # nothing can be missing there (seen live from before it, or the audit table,
            # written in offset order, already holds it or later).
            if event.seq != sent + 1 and not (
                _live_from(live, sent) or max(stored, default=-1) >= event.seq
            ):
                break
            yield _frame(event)
            sent, last_write = event.seq, time.monotonic()
            if event.type == "run_finished":
                finished = True
                break
        if finished:
            break
        result = client.known_result(request_id)
        if result is not None:
            if result.status == "rejected":  # never ran: there are no events to wait for
                break
            result_since = result_since or time.monotonic()
            if time.monotonic() - result_since > GIVE_UP_ON_EVENTS_S:
                break
        try:
            await asyncio.wait_for(signal.wait(), 0.5)
        except TimeoutError:
            if time.monotonic() - last_write > KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_write = time.monotonic()
    try:
        remaining = max(0.1, deadline - time.monotonic())
        result = await client.result(request_id, timeout=remaining)
    except TimeoutError:
        detail = orjson.dumps({"detail": "no result in time; reconnect with Last-Event-ID"})
        yield b"event: timeout\ndata: %s\n\n" % detail
        return
    yield b"event: result\ndata: %s\n\n" % orjson.dumps(result.model_dump(mode="json"))
