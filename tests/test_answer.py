"""Answer: every way a request ends, decided without I/O (microseconds, no broker)."""

from __future__ import annotations

import orjson
import pytest

from graphwire.graphs.execution import RunOutcome
from graphwire.processors.runner.answer import (
    Addressee,
    Answer,
    DeadLetter,
    EventPositions,
    answer_without_run,
)
from graphwire.processors.runner.control import Stop
from graphwire.processors.runner.dedup import Claim, KeptResult
from graphwire.topics.errors import InvalidRequest, UnknownGraph
from graphwire.topics.models import Request
from graphwire.topics.positions import event_position
from graphwire.topics.runstatus import CancelMarker

CANCEL = Stop("interrupt", "cancel", "cancelled by a cancel request")
ROLLBACK = Stop("rollback", "multitask", "cancelled: request 'r2' arrived")


def test_rejected_carries_the_error_and_a_dead_letter_and_no_events() -> None:
    """A refusal at intake: ``rejected`` with the error's type and text, dead-lettered under
    its label, and no events (nothing was claimed or started)."""
    answer = Answer.rejected(UnknownGraph("nope", ["pipeline"]), "unknown_graph")
    message = ("unknown graph 'nope': registered graphs are pipeline; fix the request's 'graph' "
               "field or register the graph (GRAPHWIRE_GRAPHS)")
    assert (answer.status, answer.error, answer.events, answer.attempts) == (
        "rejected", ("UnknownGraph", message), "none", 1)
    assert answer.dead_letter == DeadLetter(message, "unknown_graph")
    assert not answer.ran


def test_busy_names_the_running_request_and_takes_its_attempt() -> None:
    """``multitask_strategy: reject`` on a busy thread: ``rejected`` ThreadBusy, no dead
    letter, bookend events; a preset answer learns its attempt at the claim."""
    answer = Answer.busy("t1", "r1")
    assert (answer.status, answer.attempts, answer.dead_letter, answer.events) == (
        "rejected", 1, None, "bookends")
    assert answer.error == ("ThreadBusy", (
        "thread 't1' has a run in progress ('r1') and this request's multitask_strategy is "
        "'reject': send it again once that run has finished, or with 'enqueue' to wait for it"))
    assert answer.at_attempt(3) == Answer.busy("t1", "r1", 3)
    assert answer.at_attempt(3).attempts == 3


def test_cancelled_before_the_first_start_says_nothing_ran() -> None:
    """Cancelled at attempt 1: nothing ran; at attempt 2 an earlier start did (its steps)."""
    first = Answer.cancelled(CANCEL, "t1", 1)
    assert (first.status, first.attempts, first.cancel, first.dead_letter) == (
        "cancelled", 1, CANCEL, None)
    assert first.error == ("Cancelled", "cancelled by a cancel request; it had not started, "
                           "so nothing ran")
    later = Answer.cancelled(CANCEL, "t1", 2)
    assert later.error == ("Cancelled", "cancelled by a cancel request; the steps it finished "
                           "are kept on thread 't1' (interrupt)")
    assert later.run_finished(1.23456) == {
        "status": "cancelled", "duration_ms": 1.235,
        "cancel": {"action": "interrupt", "cause": "cancel"}}


def test_poison_is_an_error_with_a_poison_dead_letter_and_no_events() -> None:
    """A poison message: ``error`` PoisonMessage, attempts = earlier starts (at least 1)."""
    answer = Answer.poison("it crashed", 0)
    assert (answer.status, answer.error, answer.attempts, answer.events) == (
        "error", ("PoisonMessage", "it crashed"), 1, "none")
    assert answer.dead_letter == DeadLetter("poison message: it crashed", "poison")
    assert Answer.poison("x", 3).attempts == 3


def test_from_cache_is_a_success_marked_cached_in_both_bookends() -> None:
    """A cache hit: ``success`` with the output; its bookends say ``cached``."""
    answer = Answer.from_cache({"n": 1}, 2)
    assert (answer.status, answer.output, answer.attempts, answer.cached) == (
        "success", {"n": 1}, 2, True)
    assert answer.run_started(None, "w1", 2) == {
        "thread_id": None, "worker": "w1", "attempt": 2, "resumed": False, "cached": True}
    assert answer.run_finished(0.5) == {"status": "success", "duration_ms": 0.5, "cached": True}


def test_kept_result_is_published_again_as_it_is() -> None:
    """A kept result: its own status and message, ``republished`` in both bookends, its dead
    letter again; nothing is kept a second time."""
    result = {"request_id": "r", "status": "error", "output": None}
    answer = Answer.kept_result(result, "graph failed: boom")
    assert (answer.status, answer.kept, answer.republished) == ("error", result, True)
    assert answer.dead_letter == DeadLetter("graph failed: boom", "republished")
    assert answer.run_started("t", "w1", 2) == {
        "thread_id": "t", "worker": "w1", "attempt": 2, "resumed": True, "republished": True}
    assert answer.run_finished(2.0) == {"status": "error", "duration_ms": 2.0,
                                        "republished": True}
    assert Answer.kept_result({"status": "success"}, None).dead_letter is None


@pytest.mark.parametrize(("outcome", "dead_letter"), [
    (RunOutcome("success", output={"a": 1}), None),
    (RunOutcome("interrupted", interrupts=[{"id": "i", "value": 1}]), None),
    (RunOutcome("timeout", error=("Timeout", "too slow")), None),
    (RunOutcome("error", error=("ValueError", "boom")),
     DeadLetter("graph failed: boom", "graph_error")),
    (RunOutcome("rejected", error=("UnknownCheckpoint", "no such checkpoint")),
     DeadLetter("no such checkpoint", "graph_error")),
])
def test_of_run_dead_letters_errors_and_rejections_only(
    outcome: RunOutcome, dead_letter: DeadLetter | None
) -> None:
    """A run's outcome: its fields as they are; error and rejected get a dead letter."""
    answer = Answer.of_run(outcome, 2)
    assert (answer.status, answer.output, answer.error, answer.interrupts, answer.attempts) == (
        outcome.status, outcome.output, outcome.error, outcome.interrupts, 2)
    assert (answer.dead_letter, answer.events, answer.ran) == (dead_letter, "run_finished", True)


def test_of_run_cancelled_records_the_stop_in_run_finished() -> None:
    """A run stopped by a cancel: ``run_finished`` records the stop's action and cause."""
    outcome = RunOutcome("cancelled", error=("Cancelled", "stopped"))
    answer = Answer.of_run(outcome, 1, ROLLBACK)
    assert answer.run_finished(3.0) == {
        "status": "cancelled", "duration_ms": 3.0,
        "cancel": {"action": "rollback", "cause": "multitask"}}


def test_addressee_leaves_out_a_webhook_not_checked_yet() -> None:
    """A refusal before the webhook check passed sends no webhook header."""
    request = Request.model_validate({"request_id": "r", "graph": "g", "input": {},
                                      "thread_id": "t", "webhook": "https://h.example/x",
                                      "metadata": {"k": "v"}})
    assert Addressee.of(request) == Addressee("r", "g", "t", {"k": "v"}, "https://h.example/x")
    assert Addressee.of(request, webhook=False).webhook is None


def _claim(**fields: object) -> Claim:
    return Claim("acquired", **{"attempt": 1, **fields})  # type: ignore[arg-type]


def test_answer_without_run_runs_a_plain_claim() -> None:
    """Nothing stands in the way: None (the request runs, or uses the cache)."""
    assert answer_without_run("r", None, _claim(), None, None, 3) is None


def test_answer_without_run_gives_up_on_a_poison_message() -> None:
    """Deaths at the limit and nothing kept: the poison answer, naming the replay command."""
    answer = answer_without_run("r", None, _claim(attempt=4, deaths=3), CANCEL, None, 3)
    assert answer is not None and answer.error is not None
    assert (answer.status, answer.attempts) == ("error", 3)
    assert answer.error[1] == (
        "started 3 times and never finished: 3 of those runs took their worker down (a crash, "
        "out of memory or a kill), so it is not started again (GRAPHWIRE_MAX_DELIVERIES=3); "
        "fix the graph, then `graphwire dlq replay --request-id r`")


def test_answer_without_run_republishes_a_kept_result_before_anything_else() -> None:
    """A kept result wins over the death count, a cancel and a busy thread."""
    kept = KeptResult(orjson.dumps({"status": "success", "output": 1}), None)
    claim = _claim(attempt=5, deaths=9, kept=kept, thread_busy="r0")
    answer = answer_without_run("r", "t", claim, CANCEL, Answer.busy("t", "r0"), 3)
    assert answer == Answer.kept_result({"status": "success", "output": 1}, None)


def test_answer_without_run_cancels_before_a_busy_thread() -> None:
    """A cancel asked for before this start wins over ``reject`` on a busy thread."""
    claim = _claim(attempt=2, thread_busy="r0",
                   cancel=CancelMarker("interrupt", "", cause="cancel"))
    answer = answer_without_run("r", "t", claim, CANCEL, Answer.busy("t", "r0"), 3)
    assert answer == Answer.cancelled(CANCEL, "t", 2)


def test_answer_without_run_rejects_on_a_busy_thread_preset_first() -> None:
    """The preset (decided when fetched) names its running request; else the claim's."""
    preset = Answer.busy("t", "r-local")
    assert answer_without_run("r", "t", _claim(attempt=2, thread_busy="r-remote"), None,
                              preset, 3) == Answer.busy("t", "r-local", 2)
    assert answer_without_run("r", "t", _claim(thread_busy="r-remote"), None, None, 3) == (
        Answer.busy("t", "r-remote", 1))


def test_event_positions_count_per_try_from_the_start_attempt() -> None:
    """Positions of one start: contiguous within a try, a new base for each retry."""
    positions = EventPositions(2)
    first = [positions.next(), positions.next()]
    positions.next_try()
    assert [*first, positions.next()] == [
        event_position(2, 0, 0), event_position(2, 0, 1), event_position(2, 1, 0)]


def test_invalid_request_keeps_its_type_name() -> None:
    """The error type in a rejection is the exception's own class name."""
    answer = Answer.rejected(InvalidRequest("invalid request: no input"), "invalid")
    assert answer.error == ("InvalidRequest", "invalid request: no input")
