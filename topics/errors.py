"""Errors of graphwire, each with a ``retriable`` flag that callers ask instead of listing types.

GraphwireError
 +-- InvalidRequest          understood as a request, but invalid: ``rejected`` result + dead letter
 |    +-- RequestTooLarge    over ``max_request_bytes``: ``rejected`` result + dead letter
 |    +-- UnstorableRequest  PostgreSQL/Redis refused its data (a NUL, a value out of range):
 |                           ``rejected`` result + dead letter, never an outage
 +-- UndecodableMessage      not a request at all (not JSON, no request_id): dead letter only
 +-- UnknownGraph            no graph of that name: ``rejected`` result + dead letter
 +-- LeftForRedelivery       the message stays uncommitted and is fetched again (shutdown, a
 |    |                      drain, a request still held by another worker): retriable
 |    +-- DependencyUnavailable  Kafka/Redis/PostgreSQL down: wait for it, then retry
 +-- PublishFailed           (runner, ``processors/runner/publisher.py``) the broker refused an
 |                           output for good (not authorised, too large): dead letter only
 +-- LeaseLost               (runner, ``processors/runner/claims.py``) another worker owns the
 |                           request now: publish nothing, claim it again
 +-- RunFailed               (client side) a result that is not a success, when asked to raise
      +-- RunError, RunRejected, RunTimedOut

A graph that raises is not an error here: its run ends with an ``error`` result (and a dead
letter), retried first when the exception is retriable.
"""

from __future__ import annotations


class GraphwireError(Exception):
    """Base of every graphwire error; ``str(exc)`` is one sentence saying what to do."""

    retriable: bool = False


class InvalidRequest(GraphwireError):
    """A message that names a request but breaks the contract (bad fields, wrong types)."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class RequestTooLarge(InvalidRequest):
    """A request whose encoded size is over the configured limit."""


class UnstorableRequest(InvalidRequest):
    """A dependency refused the request's data (PostgreSQL ``DataError``, Redis ``ResponseError``
    about a value): the message is bad, the service is fine, so it is not retried."""


class UndecodableMessage(GraphwireError):
    """Bytes that are not a graphwire request at all: not JSON, not an object, no request_id."""


class UnknownGraph(GraphwireError):
    """The request names a graph that this worker does not have registered."""

    def __init__(self, graph: str, known: list[str]) -> None:
        super().__init__(
            f"unknown graph {graph!r}: registered graphs are {', '.join(sorted(known)) or 'none'}; "
            "fix the request's 'graph' field or register the graph (GRAPHWIRE_GRAPHS)"
        )
        self.graph = graph


class LeftForRedelivery(GraphwireError):
    """The message is left uncommitted, to be fetched again and finished by another start:
    the worker stops, the run was drained, or another worker still holds the request."""

    retriable = True


class DependencyUnavailable(LeftForRedelivery):
    """A service graphwire needs (Kafka, Redis, PostgreSQL) did not answer."""

    retriable = True


class RunFailed(GraphwireError):
    """A request ended without success; raised by ``GraphwireClient.result(raise_on_error=True)``.

    ``result`` holds the whole Result (status, error, attempts, metadata)."""

    def __init__(self, result: object, message: str) -> None:
        super().__init__(message)
        self.result = result


class RunError(RunFailed):
    """The graph raised (status ``error``)."""


class RunRejected(RunFailed):
    """The request was invalid or named an unknown graph (status ``rejected``)."""


class RunTimedOut(RunFailed):
    """The run took longer than its ``timeout_s`` (status ``timeout``)."""
