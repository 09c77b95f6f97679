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
from collections import ChainMap
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import orjson

from graphwire.topics.client import GraphwireClient
from graphwire.topics.errors import GraphwireError
from graphwire.topics.models import Event, Result
from graphwire.topics.positions import FIRST_POSITION, KeptEvents, next_event

KEEPALIVE_S = 15.0
GIVE_UP_ON_EVENTS_S = 5.0  # the result is here but earlier events cannot be found


def _frame(event: Event) -> bytes:
    data = orjson.dumps(event.model_dump(mode="json"))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), data)


def _live_from(live: KeptEvents | None, sent: int) -> bool:
    """True when the live events hold everything after ``sent``: they begin at or before the
    next position, or at the request's very first event."""
    first = live.first if live is not None else None
    return first is not None and (first <= sent + 1 or first == FIRST_POSITION)


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


def _known(live: KeptEvents | None, stored: dict[int, Event],
           ) -> tuple[Mapping[int, Event], Sequence[int]]:
    """The events to look the next one up in, with their ``run_started`` positions: the live
    ones (a view, not a copy) over those read back from the audit table."""
    if not stored:
        return (live.by_seq, live.starts) if live is not None else ({}, ())
    if live is None:
        known: Mapping[int, Event] = stored
    else:
        known = ChainMap(live.by_seq, stored)
    return known, sorted(seq for seq, e in known.items() if e.type == "run_started")


async def live_events(
    client: GraphwireClient, db: Any, request_id: str, after: int, deadline: float,
    grace: Callable[[Result, int], float | None],
) -> AsyncIterator[Event | None]:
    """The events of ``request_id`` after position ``after``, in position order, until its
    ``run_finished`` or ``deadline``; ``None`` at each half second without one (time for a
    heartbeat). Once its result is here, ``grace(result, last position sent)`` says how long
    to go on waiting for events (None: stop now). Each wake looks the next event up by
    position in what the client holds (``KeptEvents``): a stream of n events costs O(n)."""
    client.watch(request_id)
    # a finished run: its result via Redis, now (not for a run just submitted here: no result
    # can be in Redis yet, and the lookup would hold the first event back up to 50 ms)
    if client.known_result(request_id) is None and not client.awaiting_first_result(request_id):
        with contextlib.suppress(TimeoutError, GraphwireError):
            await client.result(request_id, timeout=0.05)
    sent, backfilled = after, 0.0
    result_since: float | None = None
    stored: dict[int, Event] = {}  # read back from the audit table
    while time.monotonic() < deadline:
        signal = client.event_signal(request_id)
        signal.clear()
        live = client.kept_events(request_id)
        if not _live_from(live, sent) and time.monotonic() - backfilled > 0.5:
            stored.update((e.seq, e) for e in await stored_events(db, request_id, sent))
            backfilled = time.monotonic()
        known, starts = _known(live, stored)
        while (event := next_event(known, sent, starts)) is not None:
            # Moving on to a later try's run_started skips what is between: only when
            # nothing can be missing there (seen live from before it, or the audit table,
            # written in offset order, already holds it or later).
            if event.seq != sent + 1 and not (
                _live_from(live, sent) or max(stored, default=-1) >= event.seq
            ):
                break
            yield event
            sent = event.seq
            if event.type == "run_finished":
                return
        result = client.known_result(request_id)
        if result is not None:
            limit = grace(result, sent)
            if limit is None:
                return
            result_since = result_since or time.monotonic()
            if time.monotonic() - result_since > limit:
                return
        try:
            async with asyncio.timeout(0.5):
                await signal.wait()
        except TimeoutError:
            yield None


def _grace(result: Result, _sent: int) -> float | None:
    """A rejected request never ran: no events to wait for."""
    return None if result.status == "rejected" else GIVE_UP_ON_EVENTS_S


async def event_stream(
    client: GraphwireClient, db: Any, request_id: str, after: int, timeout: float
) -> AsyncIterator[bytes]:
    """The SSE body: events with seq > ``after`` in order, then ``event: result``."""
    client.watch(request_id)  # from now on its events are kept
    deadline = time.monotonic() + timeout
    last_write = time.monotonic()
    yield f": events of {request_id} after {after}\n\n".encode()
    async for event in live_events(client, db, request_id, after, deadline, _grace):
        if event is not None:
            yield _frame(event)
            last_write = time.monotonic()
        elif time.monotonic() - last_write > KEEPALIVE_S:
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
