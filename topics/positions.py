"""Event positions: the ``seq`` of an event, unique and ordered across every run of a request.

A request can start more than once (a drain and a resume on another worker, a crash and a
redelivery, a retry after a dependency outage), and each start can try the graph more than
once (retriable errors). Every try numbers its events from a base of its own::

    seq = (delivery_attempt * 256 + try_index) * 2**24 + i

``delivery_attempt`` is the request's start count (1, 2, ...; the runner's Redis claim counts
it across workers), ``try_index`` the in-process retry of that start (0, 1, ...), ``i`` the
event within the try (0 is its ``run_started``). So positions strictly increase per request
across attempts; within one try they are contiguous from its ``run_started``; a new try starts
at a higher base. A consumer waiting for seq N that holds a ``run_started`` with a higher seq
moves on to it: work an earlier try did not finish is re-sent after it. ``next_event`` is that
rule. Every position is below 2**53, so it is exact in JavaScript numbers (and JSON parsers
that use doubles).

Without dedup (no Redis) every delivery is attempt 1: positions are then unique across
in-process retries only, not across redeliveries.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import deque
from collections.abc import Mapping, Sequence

from graphwire.topics.models import Event

EVENTS_PER_TRY = 2**24
"""Events one try may publish (``i`` below this)."""
TRIES_PER_START = 256
"""Tries one start may make (``try_index`` below this; ``max_attempts`` is at most 20)."""
MAX_DELIVERY_ATTEMPT = 2**53 // (TRIES_PER_START * EVENTS_PER_TRY) - 1
"""The highest start count whose positions stay below 2**53 (2,097,151)."""
FIRST_POSITION = TRIES_PER_START * EVENTS_PER_TRY
"""The ``run_started`` of a request's first start and first try: nothing comes before it."""


def event_position(delivery_attempt: int, try_index: int, index: int) -> int:
    """The ``seq`` of event ``index`` of try ``try_index`` of start ``delivery_attempt``."""
    if not 1 <= delivery_attempt <= MAX_DELIVERY_ATTEMPT:
        raise ValueError(
            f"delivery attempt {delivery_attempt} is outside 1..{MAX_DELIVERY_ATTEMPT}; "
            "event positions would pass 2**53: replay the request under a new request_id"
        )
    if not 0 <= try_index < TRIES_PER_START:
        raise ValueError(
            f"try {try_index} is outside 0..{TRIES_PER_START - 1}; lower max_attempts"
        )
    if not 0 <= index < EVENTS_PER_TRY:
        raise ValueError(
            f"event {index} of one try is past the {EVENTS_PER_TRY} a try may publish; "
            "stream fewer modes or split the graph"
        )
    return (delivery_attempt * TRIES_PER_START + try_index) * EVENTS_PER_TRY + index


def position_parts(seq: int) -> tuple[int, int, int]:
    """``(delivery_attempt, try_index, i)`` of a position."""
    epoch, index = divmod(seq, EVENTS_PER_TRY)
    delivery_attempt, try_index = divmod(epoch, TRIES_PER_START)
    return delivery_attempt, try_index, index


def next_event(events: Mapping[int, Event], after: int,
               starts: Sequence[int] | None = None) -> Event | None:
    """The event that follows position ``after``: the one at ``after + 1``, else the first
    ``run_started`` above ``after`` (a later try); None while neither has arrived.
    ``starts``: the positions of the ``run_started`` events in ``events``, ascending (found by
    a scan of ``events`` when not given)."""
    found = events.get(after + 1)
    if found is not None:
        return found
    if starts is None:
        later = [seq for seq, e in events.items() if seq > after and e.type == "run_started"]
        return events[min(later)] if later else None
    index = bisect_right(starts, after)
    return events[starts[index]] if index < len(starts) else None


class KeptEvents:
    """The events of one request a reader keeps: in arrival order (the oldest arrival is
    dropped first at a memory bound) and by position, with the positions of its
    ``run_started`` events, so that a reader waking at each event finds the next one without
    going over all it holds. An event that arrives twice (a record published again) is held
    by position once: the later arrival."""

    __slots__ = ("_first", "arrived", "by_seq", "starts")

    def __init__(self) -> None:
        self.arrived: deque[tuple[Event, int]] = deque()
        """(event, size in bytes), oldest first."""
        self.by_seq: dict[int, Event] = {}
        self.starts: list[int] = []
        """Positions of the ``run_started`` events in ``by_seq``, ascending."""
        self._first: int | None = None

    def __len__(self) -> int:
        return len(self.arrived)

    def add(self, event: Event, size: int) -> None:
        self.arrived.append((event, size))
        seq = event.seq
        before = self.by_seq.get(seq)
        self.by_seq[seq] = event
        was_start = before is not None and before.type == "run_started"
        if event.type == "run_started" and not was_start:
            insort(self.starts, seq)
        elif was_start and event.type != "run_started":
            self.starts.remove(seq)
        if self._first is None or seq < self._first:
            self._first = seq

    def pop_oldest(self) -> int:
        """Drop the oldest arrival; returns its size."""
        event, size = self.arrived.popleft()
        if self.by_seq.get(event.seq) is event:  # not replaced by a later arrival
            del self.by_seq[event.seq]
            if event.type == "run_started":
                self.starts.remove(event.seq)
            if event.seq == self._first:
                self._first = min(self.by_seq, default=None)
        return size

    @property
    def first(self) -> int | None:
        """The lowest position held (None when empty)."""
        return self._first

    def in_order(self) -> list[Event]:
        """The events held, by position."""
        return sorted(self.by_seq.values(), key=lambda e: e.seq)
