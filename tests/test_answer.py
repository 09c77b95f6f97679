"""Answer: every way a request ends, decided without I/O (microseconds, no broker)."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from graphwire.graphs.execution import RunOutcome
from graphwire.graphs.registry import GraphRegistry
from graphwire.processors.metrics import RunnerMetrics
from graphwire.processors.runner.answer import (
    Addressee,
    Answer,
    DeadLetter,
    EventPositions,
    answer_without_run,
)
from graphwire.processors.runner.claims import Claim, KeptResult
from graphwire.processors.runner.control import Stop
from graphwire.processors.runner.processing import Refusal, RequestProcessor
from graphwire.processors.runner.publisher import OutputPublisher, Record
from graphwire.processors.settings import Settings
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


def _processor(**settings: str) -> RequestProcessor:
    """A processor that is never started: ``admit`` and ``double_text`` need no I/O."""
    config = Settings(_env_file=None, **settings)  # type: ignore[call-arg]
    registry = GraphRegistry()
    registry.load_builtins(["pipeline"])
    metrics = RunnerMetrics()
    out = OutputPublisher(None, config.topics, metrics,  # type: ignore[arg-type]
                          max_message_bytes=1_000_000, stopping=lambda: False,
                          reply_to_allowed=config.reply_to_allowed)
    return RequestProcessor(config, registry, metrics, out)


def _record(body: object, *, key: bytes = b"k", headers: list[tuple[str, bytes]] | None = None,
            offset: int = 0) -> Record:
    value = body if isinstance(body, bytes) else orjson.dumps(body)
    return ConsumerRecord("p.requests", 0, offset, 1, 0, key, value, None, len(key), len(value),
                          headers or [])


def _body(rid: str = "r1", **fields: object) -> dict[str, object]:
    return {"request_id": rid, "graph": "pipeline", "input": {"text": "hi"}, **fields}


def _refused(admitted: object) -> tuple[Addressee | None, str, tuple[str, str] | None, str]:
    assert isinstance(admitted, Refusal)
    dead_letter = admitted.answer.dead_letter
    assert dead_letter is not None and admitted.answer.status == "rejected"
    assert dead_letter.reason == (admitted.answer.error or ("", ""))[1]
    return admitted.to, admitted.answer.status, admitted.answer.error, dead_letter.label


def test_admit_takes_a_valid_request_with_its_graph() -> None:
    """A valid request for a registered graph: the request and its graph, no refusal."""
    processor = _processor()
    admitted = processor.admit(_record(_body()))
    assert isinstance(admitted, tuple)
    request, graph = admitted
    assert (request.request_id, graph) == ("r1", processor.registry.get("pipeline"))


def test_admit_dead_letters_what_is_not_a_request() -> None:
    """Not JSON: nobody to answer, a dead letter only (``to`` is None)."""
    to, _status, error, label = _refused(_processor().admit(_record(b"not json")))
    assert (to, label) == (None, "undecodable")
    assert error is not None and error[0] == "UndecodableMessage"


def test_admit_rejects_an_invalid_request_by_its_id_and_graph_only() -> None:
    """Invalid fields: rejected to its request_id and graph, nothing else echoed."""
    to, _status, error, label = _refused(_processor().admit(
        _record({"request_id": "r2", "graph": "pipeline", "thread_id": "t", "timeout_s": 0})))
    assert (to, label) == (Addressee("r2", "pipeline"), "invalid")
    assert error is not None and error[0] == "InvalidRequest"


def test_admit_labels_a_request_over_the_size_limit_too_large() -> None:
    """Over GRAPHWIRE_MAX_REQUEST_BYTES: RequestTooLarge, labelled ``too_large``."""
    to, _status, error, label = _refused(_processor(max_request_bytes="1024").admit(
        _record(_body(input={"text": "x" * 2000}))))
    assert (to, label) == (Addressee("r1", "pipeline"), "too_large")
    assert error is not None and error[0] == "RequestTooLarge"


def test_admit_leaves_a_deferred_request_to_the_scheduler() -> None:
    """A request with ``after_seconds`` is not a runner's: None, nothing answered."""
    processor = _processor()
    assert processor.admit(_record(_body(after_seconds=60))) is None
    assert processor.metrics.deferred._value.get() == 1


def test_admit_refuses_a_bad_principal_header_without_the_webhook() -> None:
    """A caller header that does not decode: ``invalid``; the webhook, unchecked, is left
    out of the answer."""
    body = _body(thread_id="t", metadata={"m": 1}, webhook="https://hooks.example/x")
    to, _status, error, label = _refused(_processor().admit(
        _record(body, headers=[("x-graphwire-principal", b"{not json")])))
    assert (to, label) == (Addressee("r1", "pipeline", "t", {"m": 1}, None), "invalid")
    assert error is not None and error[1].startswith("invalid request: ")


def test_admit_refuses_a_reply_to_the_allow_list_does_not_match() -> None:
    """A reply-to outside GRAPHWIRE_REPLY_TO_ALLOWED: ``reply_to_refused``."""
    to, _status, error, label = _refused(_processor(reply_to_allowed="replies.*").admit(
        _record(_body(), headers=[("reply-to", b"elsewhere")])))
    assert (to, label) == (Addressee("r1", "pipeline", None, {}, None), "reply_to_refused")
    assert error is not None and "'elsewhere' is not allowed here" in error[1]


def test_admit_refuses_a_webhook_the_policy_does_not_allow() -> None:
    """Webhooks not enabled: ``webhook_refused``, and the refused webhook is not called."""
    to, _status, error, label = _refused(_processor().admit(
        _record(_body(webhook="https://hooks.example/x"))))
    assert (to, label) == (Addressee("r1", "pipeline", None, {}, None), "webhook_refused")
    assert error is not None and "webhooks are not enabled here" in error[1]


def test_admit_rejects_an_unknown_graph_or_one_not_allowed_here() -> None:
    """An unregistered graph, or one GRAPHWIRE_ALLOWED_GRAPHS leaves out: ``unknown_graph``,
    naming the graphs this worker runs; the (checked) webhook is kept."""
    body = _body(graph="nope", webhook="https://hooks.example/x")
    to, _status, error, label = _refused(_processor(
        webhook_allowed_hosts="hooks.example").admit(_record(body)))
    assert (to, label) == (Addressee("r1", "nope", None, {}, "https://hooks.example/x"),
                           "unknown_graph")
    assert error is not None and error[0] == "UnknownGraph"
    _to, _status, error, label = _refused(_processor(allowed_graphs="other").admit(
        _record(_body())))
    assert label == "unknown_graph"
    assert error is not None and "registered graphs are none" in error[1]


def test_double_text_rejects_at_once_on_a_busy_thread_with_reject() -> None:
    """``reject`` behind a running request of the same thread: a ThreadBusy preset naming
    it; ``enqueue`` (or no strategy) queues, answered by nothing."""
    processor = _processor()
    running = _record(_body("r0", thread_id="t"))
    rejected = _record(_body("r1", thread_id="t", multitask_strategy="reject"), offset=1)
    assert processor.double_text(rejected, [running]) == Answer.busy("t", "r0")
    queued = _record(_body("r2", thread_id="t", multitask_strategy="enqueue"), offset=2)
    assert processor.double_text(queued, [running]) is None
    assert processor.double_text(_record(_body("r3", thread_id="t")), [running]) is None
