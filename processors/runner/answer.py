"""How a request ends, as a value: every way out of the runner is an ``Answer``.

An ``Answer`` says what to publish (the result's status, output or error, a dead letter) and
which events this start still owes (none, the ``run_started``/``run_finished`` pair of a start
that ran nothing, or the ``run_finished`` of a run). ``OutputPublisher.finish`` is the one place
that publishes one, in the crash-safe order. Nothing here does I/O, so each way a request can
end is decided, and tested, without a broker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from graphwire.topics.codec import loads
from graphwire.topics.positions import event_position

if TYPE_CHECKING:  # the control module publishes, and publishing imports this one
    from graphwire.graphs.execution import RunOutcome
    from graphwire.processors.runner.claims import Claim
    from graphwire.processors.runner.control import Stop
    from graphwire.topics.models import Request

Events = Literal["none", "bookends", "run_finished"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The dead letter published next to a result."""

    reason: str
    """The ``x-graphwire-error`` header: what went wrong and what to do."""
    label: str
    """The ``reason`` label of ``graphwire_dead_letters_total``."""


@dataclass(frozen=True, slots=True)
class Addressee:
    """Who a result is for, and what it echoes back: the request's names and metadata."""

    request_id: str
    graph: str
    thread_id: str | None = None
    metadata: dict[str, Any] | None = None
    """Echoed by the result and every event (``{}`` when absent)."""
    webhook: str | None = None
    """The request's webhook, once the policy allowed it: a header of the result message."""

    @classmethod
    def of(cls, request: Request, *, webhook: bool = True) -> Addressee:
        """The addressee of a decoded request (``webhook=False`` before its check passed)."""
        return cls(request.request_id, request.graph, request.thread_id, request.metadata,
                   request.webhook if webhook else None)


@dataclass(frozen=True, slots=True)
class Answer:
    """The final answer of one start of a request."""

    status: str
    """The result's status: ``success``, ``error``, ``rejected``, ``cancelled``, ..."""
    output: Any = None
    error: tuple[str, str] | None = None
    """``(type, message)``."""
    interrupts: list[Any] | None = None
    next: list[str] | None = None
    """On ``interrupted``: the nodes that run next."""
    breakpoint: str | None = None
    """On ``interrupted`` at a breakpoint: ``before`` or ``after``."""
    attempts: int = 1
    """The result's ``attempts``."""
    dead_letter: DeadLetter | None = None
    events: Events = "bookends"
    """What this start still publishes on the events topic before the result: ``none`` (a
    request refused before it was claimed, a poison message), ``bookends`` (a start that runs
    nothing: ``run_started`` and ``run_finished``) or ``run_finished`` (the run sent the rest)."""
    cached: bool = False
    """The output of an identical earlier request (the result cache)."""
    republished: bool = False
    """A result an earlier start kept: ``kept`` is published again as it is."""
    cancel: Stop | None = None
    """The stop that cancelled the run (``run_finished`` records its action and cause)."""
    kept: dict[str, Any] | None = None
    """The result message an earlier start kept, published again unchanged."""

    @property
    def ran(self) -> bool:
        """The graph ran in this start."""
        return self.events == "run_finished"

    @classmethod
    def rejected(cls, error: Exception, label: str) -> Answer:
        """A request that cannot run (invalid, unknown graph, refused data): ``rejected``
        with the error, and a dead letter counted under ``label``."""
        message = str(error)
        return cls("rejected", error=(type(error).__name__, message),
                   dead_letter=DeadLetter(message, label), events="none")

    @classmethod
    def busy(cls, thread_id: str | None, running: str, attempt: int = 1) -> Answer:
        """``multitask_strategy: reject`` on a thread that runs ``running``: ``rejected``."""
        return cls("rejected", attempts=attempt, error=("ThreadBusy", (
            f"thread {thread_id!r} has a run in progress ({running!r}) and this request's "
            "multitask_strategy is 'reject': send it again once that run has finished, or with "
            "'enqueue' to wait for it")))

    @classmethod
    def cancelled(cls, stop: Stop, thread_id: str | None, attempt: int) -> Answer:
        """Cancelled before this start ran anything (an earlier start may have run: then
        attempt > 1)."""
        return cls("cancelled", attempts=attempt, cancel=stop,
                   error=("Cancelled", stop.message(thread_id, ran=attempt > 1)))

    @classmethod
    def poison(cls, reason: str, started_times: int) -> Answer:
        """A request whose runs took their worker down too often: ``error``, not run again."""
        return cls("error", error=("PoisonMessage", reason), attempts=max(1, started_times),
                   dead_letter=DeadLetter(f"poison message: {reason}", "poison"), events="none")

    @classmethod
    def from_cache(cls, output: Any, attempt: int) -> Answer:
        """The cached output of an identical request: ``success``, nothing runs."""
        return cls("success", output=output, attempts=attempt, cached=True)

    @classmethod
    def kept_result(cls, result: dict[str, Any], dead_letter: str | None) -> Answer:
        """The result (and dead letter) an earlier start kept, to publish again unchanged."""
        return cls(str(result["status"]), kept=result, republished=True,
                   dead_letter=DeadLetter(dead_letter, "republished") if dead_letter else None)

    @classmethod
    def of_run(cls, outcome: RunOutcome, attempts: int, stop: Stop | None = None) -> Answer:
        """The outcome of a run; ``error`` and ``rejected`` carry a dead letter."""
        dead_letter = None
        if outcome.status in ("error", "rejected"):
            assert outcome.error is not None
            reason = outcome.error[1]
            if outcome.status == "error":
                reason = f"graph failed: {reason}"
            dead_letter = DeadLetter(reason, "graph_error")
        return cls(outcome.status, output=outcome.output, error=outcome.error,
                   interrupts=outcome.interrupts, next=outcome.next or None,
                   breakpoint=outcome.breakpoint, attempts=attempts, dead_letter=dead_letter,
                   events="run_finished", cancel=stop)

    def at_attempt(self, attempt: int) -> Answer:
        """This answer for start number ``attempt`` (a preset answer learns it at the claim)."""
        return dataclasses.replace(self, attempts=attempt)

    def run_started(self, thread_id: str | None, worker: str, attempt: int) -> dict[str, Any]:
        """The data of the ``run_started`` of a start that runs nothing."""
        data: dict[str, Any] = {"thread_id": thread_id, "worker": worker, "attempt": attempt,
                                "resumed": self.republished}
        if self.republished:
            data["republished"] = True
        if self.cached:
            data["cached"] = True
        return data

    def run_finished(self, duration_ms: float) -> dict[str, Any]:
        """The data of this start's ``run_finished``."""
        data: dict[str, Any] = {"status": self.status, "duration_ms": round(duration_ms, 3)}
        if self.cached:
            data["cached"] = True
        if self.republished:
            data["republished"] = True
        if self.cancel is not None:
            data["cancel"] = {"action": self.cancel.action, "cause": self.cancel.cause}
        if self.next:
            data["next"] = self.next
        if self.breakpoint is not None:
            data["breakpoint"] = self.breakpoint
        return data


def answer_without_run(
    request_id: str, thread_id: str | None, claim: Claim, stop: Stop | None,
    preset: Answer | None, max_deliveries: int,
) -> Answer | None:
    """What a claimed request answers without running, or None when it runs (or is cached).

    In this order: a poison message is not started again; a result an earlier start kept is
    published again; a cancel asked for before this start wins over running; a request
    rejected because its thread is busy (``preset``, decided when it was fetched, or by the
    claim) is answered so."""
    if claim.kept is None and claim.deaths >= max_deliveries:
        started = claim.attempt - 1
        return Answer.poison(
            f"started {started} times and never finished: {claim.deaths} of those runs took "
            f"their worker down (a crash, out of memory or a kill), so it is not started again "
            f"(GRAPHWIRE_MAX_DELIVERIES={max_deliveries}); fix the graph, then "
            f"`graphwire dlq replay --request-id {request_id}`", started)
    if claim.kept is not None:
        return Answer.kept_result(loads(claim.kept.value), claim.kept.dead_letter)
    if stop is not None:
        return Answer.cancelled(stop, thread_id, claim.attempt)
    if preset is not None:
        return preset.at_attempt(claim.attempt)
    if claim.thread_busy is not None:
        return Answer.busy(thread_id, claim.thread_busy, claim.attempt)
    return None


class EventPositions:
    """The ``seq`` of each event one start publishes (``topics/positions.py``): per try,
    numbered from that try's own base, so no number is used twice across starts and tries."""

    __slots__ = ("attempt", "index", "try_index")

    def __init__(self, attempt: int = 1) -> None:
        self.attempt = attempt
        """The start's number (the claim's attempt; 1 without dedup)."""
        self.try_index = 0
        self.index = 0

    def next(self) -> int:
        """The position of the next event of the current try."""
        seq = event_position(self.attempt, self.try_index, self.index)
        self.index += 1
        return seq

    def next_try(self) -> None:
        """A retry within this start: its events count from a new base."""
        self.try_index += 1
        self.index = 0
