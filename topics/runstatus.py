"""The run-status layout in Redis: what the runner records per request_id, and how to read it.

The runner (``graphwire.processors.runner.claims.RedisClaims``) is the only writer. The gateway,
``graphwire status`` and ``GraphwireClient(redis_url=...)`` read it through this module, so the
key names and the marker format live in one place. Per request_id, these keys with a hash tag,
so they share one Redis Cluster slot:

- ``<ns>:{rid}:lease``  the owner of the run in progress (``SET NX PX``, renewed while it runs)
- ``<ns>:{rid}:done``   the done marker: ``{"status": ..., "result": "topic/partition/offset"}``
  (TTL ``GRAPHWIRE_DONE_TTL_S``; markers of older versions hold the bare status)
- ``<ns>:{rid}:tries``  how many times a worker has started the request (its ``attempts``)
- ``<ns>:{rid}:start``  the token of the worker process whose start has not ended yet (deleted
  when it ends cleanly: released after a drain or an outage, or done)
- ``<ns>:{rid}:deaths`` starts whose worker died: the next start found their ``start`` token
  (poison messages are counted by it, ``GRAPHWIRE_MAX_DELIVERIES``)
- ``<ns>:{rid}:result`` a hash (``value``: the result message as published, ``dead_letter``:
  the reason of the dead letter sent with it) written before the result is published and
  deleted with the done marker: a redelivery in between publishes it again instead of running
- ``<ns>:{rid}:cancel`` a cancel marker (``{"action": "interrupt"|"rollback", "reason": ...}``,
  TTL ``GRAPHWIRE_DONE_TTL_S``) written by the runner that consumed the cancel from
  ``<prefix>.control``: the claim of a request not started yet finds it (and runs nothing), the
  lease renewals of a running one find it (and stop it at its next step boundary)

- ``<ns>:{rid}:queued`` set (TTL ``GRAPHWIRE_DONE_TTL_S``) by the runner that fetched the
  request and queued it behind another run of its key (a busy thread), deleted when that
  runner claims it: no lease, no done marker, yet a worker holds it, so a cancel without
  ``--force`` knows it is pending
and one channel: ``<ns>:cancels`` (pub/sub), where the same runner announces each cancel
(``{"request_id", "action", "reason"}``) so that the worker running it stops it at once rather
than at its next renewal.

Per thread_id (the thread lease: one run per thread at a time across workers, whatever the
message's key), with the hash tag on the thread:

- ``<ns>:thread:{tid}:lease``  the request_id of the turn running on the thread; taken in the
  same script as that request's lease, renewed and expiring with it, deleted with its done marker
- ``<ns>:thread:{tid}:turns``  a sorted set of the turns that claimed the thread and are not
  done, scored by their request message's Kafka timestamp (ms): only the first may take the lease
- ``<ns>:thread:{tid}:alive``  a hash request_id -> deadline (Redis time, ms): a turn whose worker
  stopped renewing it (died) loses its place after the deadline, 2 x (lease + session timeout)
  after its last claim or renewal: time for its redelivery to claim again first

and the channel ``<ns>:threads``, where the runner that frees a thread others wait for announces
its thread_id, so that they claim it at once rather than at their next retry.

The claim script touches the request's keys and its thread's keys together: under Redis Cluster
they would have to share a slot, which they do not (graphwire connects to one Redis primary).

``<ns>`` is the topic prefix (``GRAPHWIRE_TOPIC_PREFIX``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson
from redis.exceptions import RedisError

from graphwire.topics.errors import DependencyUnavailable


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The Redis keys of one request_id."""

    lease: str
    done: str
    tries: str
    start: str
    deaths: str
    result: str
    cancel: str


def cancel_channel(namespace: str) -> str:
    """The pub/sub channel where cancels are announced to every runner."""
    return f"{namespace}:cancels"


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """The Redis keys of one thread_id."""

    lease: str
    turns: str
    alive: str


def thread_channel(namespace: str) -> str:
    """The pub/sub channel where a freed thread (that turns wait for) is announced."""
    return f"{namespace}:threads"


def thread_keys(namespace: str, thread_id: str) -> ThreadKeys:
    """The keys the runner uses for ``thread_id`` under ``namespace`` (the topic prefix)."""
    base = f"{namespace}:thread:{{{thread_id}}}"
    return ThreadKeys(f"{base}:lease", f"{base}:turns", f"{base}:alive")


def run_keys(namespace: str, request_id: str) -> RunKeys:
    """The keys the runner uses for ``request_id`` under ``namespace`` (the topic prefix)."""
    base = f"{namespace}:{{{request_id}}}"
    return RunKeys(
        *(
            f"{base}:{name}"
            for name in ("lease", "done", "tries", "start", "deaths", "result", "cancel")
        )
    )


@dataclass(frozen=True, slots=True)
class DoneMarker:
    """A finished request: its final status and where its result was published."""

    status: str
    result_at: str | None = None
    """``topic/partition/offset`` of the published result (None: unknown)."""

    def encode(self) -> str:
        """The marker's stored form."""
        return orjson.dumps({"status": self.status, "result": self.result_at}).decode()

    @classmethod
    def decode(cls, raw: bytes | str) -> DoneMarker:
        """Read a stored marker (JSON, or the bare status older runners wrote)."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        if not text.startswith("{"):
            return cls(text)
        value = orjson.loads(text)
        pointer = value.get("result")
        return cls(str(value.get("status", text)), pointer if isinstance(pointer, str) else None)

    def result_position(self) -> tuple[str, int, int] | None:
        """``(topic, partition, offset)`` of the result, None when unknown or malformed."""
        if self.result_at is None or self.result_at.count("/") < 2:
            return None
        topic, partition, offset = self.result_at.rsplit("/", 2)
        try:
            return topic, int(partition), int(offset)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class CancelMarker:
    """A cancel asked for a request: how, and why."""

    action: str
    """``interrupt`` (keep the checkpointed progress) or ``rollback`` (delete it)."""
    reason: str | None = None
    cause: str = "cancel"
    """``cancel`` (a control message) or ``multitask`` (a later turn of the thread, on another
    worker, with ``multitask_strategy`` interrupt or rollback: ``reason`` is then the whole
    message)."""

    def encode(self) -> str:
        """The marker's stored form."""
        value: dict[str, str | None] = {"action": self.action, "reason": self.reason}
        if self.cause != "cancel":
            value["cause"] = self.cause
        return orjson.dumps(value).decode()

    @classmethod
    def decode(cls, raw: bytes | str) -> CancelMarker:
        """Read a stored marker."""
        value = orjson.loads(raw)
        reason = value.get("reason")
        action = str(value.get("action", "interrupt"))
        cause = "multitask" if value.get("cause") == "multitask" else "cancel"
        return cls(action, reason if isinstance(reason, str) else None, cause)


@dataclass(frozen=True, slots=True)
class RunState:
    """What Redis knows of a request: running (a live lease) or done (a done marker)."""

    state: Literal["running", "done"]
    status: str
    """``running``, or the final status of a done request."""
    attempts: int
    owner: str | None = None
    """The lease owner (``host:pid:...``) of a running request."""

    def as_dict(self) -> dict[str, object]:
        """The JSON shape ``graphwire status`` prints."""
        found: dict[str, object] = {"state": self.state, "status": self.status,
                                    "attempts": self.attempts}
        if self.owner is not None:
            found["owner"] = self.owner
        return found


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_run_state(redis: Any, namespace: str, request_id: str) -> RunState | None:
    """One round trip: ``done`` wins over ``running``; None when Redis knows nothing (never
    seen, or the done marker expired). Raises ``DependencyUnavailable`` if Redis fails."""
    keys = run_keys(namespace, request_id)
    try:
        owner, marker, tries = await redis.mget(keys.lease, keys.done, keys.tries)
    except (RedisError, OSError) as exc:
        raise DependencyUnavailable(f"Redis does not answer ({exc})") from exc
    attempts = int(tries) if tries else 0
    if marker:
        return RunState("done", DoneMarker.decode(marker).status, attempts)
    if owner:
        return RunState("running", "running", attempts, owner=_text(owner))
    return None


def queued_key(namespace: str, request_id: str) -> str:
    """The key a runner sets while ``request_id`` waits behind another run of its key."""
    return f"{namespace}:{{{request_id}}}:queued"


async def was_queued(redis: Any, namespace: str, request_id: str) -> bool:
    """Whether a runner fetched ``request_id`` and queued it behind another run (and the mark
    has not expired). Raises ``DependencyUnavailable`` if Redis fails."""
    try:
        return bool(await redis.exists(queued_key(namespace, request_id)))
    except (RedisError, OSError) as exc:
        raise DependencyUnavailable(f"Redis does not answer ({exc})") from exc


async def read_done_marker(redis: Any, namespace: str, request_id: str) -> DoneMarker | None:
    """The done marker of ``request_id``, None when there is none."""
    try:
        marker = await redis.get(run_keys(namespace, request_id).done)
    except (RedisError, OSError) as exc:
        raise DependencyUnavailable(f"Redis does not answer ({exc})") from exc
    return DoneMarker.decode(marker) if marker else None
