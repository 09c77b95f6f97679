"""WebhookDispatcher (``graphwire webhooks``): reads the results topic as its own consumer group
and POSTs every result whose request asked for a webhook.

Delivery rules:

1. At least once. A result's offset is committed only once it is delivered (2xx) or its dead
   letter is acknowledged by the broker. A crash, a SIGKILL or a rebalance redelivers whatever
   was not finished; the receiver sees the same ``X-Graphwire-Delivery`` id again and dedupes.
2. No head-of-line blocking. Each result is delivered by a task of its own, up to
   ``webhook_max_in_flight`` at once (the shared in-flight slots). One host holds at most
   ``webhook_host_max_in_flight`` of them, one caller (the scope of its request ids, over all its
   hosts) ``webhook_caller_max_in_flight``; further results wait in the host's queue (FIFO)
   holding no slot, and start as its own deliveries end, so a slow receiver delays only its own
   results. Queues hold ``webhook_max_queued`` results and ``webhook_max_queued_bytes`` in all
   (then fetching pauses, polling goes on), and ``webhook_host_max_queued`` results or a tenth of
   the bytes per host (a result beyond it is dead-lettered at once with the reason). A result
   waiting for its retry holds no connection, hosts get ``webhook_per_host`` connections each,
   and a host that is down (failed or slow answers) gets one attempt per result
   (``WebhookSender``). Commits move over the lowest unfinished offset of
   each partition only (``OffsetTracker``).
3. A result that cannot be delivered gets a dead letter on ``<prefix>.dlq``: the result's bytes
   and headers, ``x-graphwire-error`` (the reason, with the URL's query left out) and
   ``x-graphwire-source`` (``<prefix>.results/partition/offset``). A dead letter that cannot be
   published is retried; the offset waits for it.
4. On stop (SIGTERM): stop fetching, give attempts in progress the attempt timeout, cancel the
   rest (redelivered), commit what is finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Self, TypeAlias

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord

from graphwire.processors.consumer.group import Batches, GroupConsumer, kafka_unreachable
from graphwire.processors.settings import Settings
from graphwire.processors.webhooks.delivery import Delivery, Outcome, WebhookSender
from graphwire.processors.webhooks.keys import SigningKeys
from graphwire.processors.webhooks.metrics import WebhookMetrics
from graphwire.processors.webhooks.policy import WebhookPolicy, describe_url, host_key
from graphwire.topics.codec import HEADER_ERROR, HEADER_SOURCE, HEADER_VALUE_DROPPED
from graphwire.topics.errors import GraphwireError
from graphwire.topics.webhooks import HEADER_WEBHOOK, OPERATOR_SCOPE, scope_of

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
_MAX_REQUEST_ID = 1024  # the contract allows 128; a header this long is still sendable
_DELIVERY_NAMESPACE = uuid.UUID("6f1c5d0e-4c3b-5b7a-9a51-3f0e2d8c1b47")


def delivery_id(topic: str, partition: int, offset: int) -> str:
    """The stable delivery id of the result at ``topic/partition/offset`` (a UUID)."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{topic}/{partition}/{offset}"))


def _header(record: Record, name: str) -> str | None:
    for key, value in record.headers:
        if key == name:
            return bytes(value).decode("utf-8", "replace") if value is not None else ""
    return None


def _caller(record: Record) -> str:
    """The caller scope of a result: results are keyed by their request id."""
    return scope_of(record.key.decode("utf-8", "replace")) if record.key else OPERATOR_SCOPE


def _lane_key(url: str) -> str:
    try:
        return host_key(url)
    except ValueError:  # a bad URL: dead-lettered by the policy check, in a lane of its own
        return "(invalid URL)"


@dataclass
class _Lane:
    """One host's deliveries: how many hold an in-flight slot, and those waiting for one."""

    active: int = 0
    waiting: deque[tuple[TopicPartition, Record, str]] = field(default_factory=deque)
    waiting_bytes: int = 0


class WebhookDispatcher:
    """Delivers the results of ``<prefix>.results`` to their webhooks (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: WebhookMetrics | None = None,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        """Raises ``GraphwireError`` when ``GRAPHWIRE_WEBHOOK_SECRET`` is not set or a setting
        is invalid."""
        keys = SigningKeys.from_settings(settings)
        self.settings = settings
        self.metrics = metrics or WebhookMetrics()
        try:
            self.policy = WebhookPolicy(settings.webhook_allowed_hosts,
                                        settings.webhook_private_cidrs)
        except ValueError as exc:
            raise GraphwireError(str(exc)) from None
        self.sender = WebhookSender(
            self.policy,
            keys,
            self.metrics,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
            backoff_max_s=settings.webhook_backoff_max_s,
            per_host=settings.webhook_per_host,
            down_after=settings.webhook_host_down_after,
            slow_s=settings.webhook_slow_s,
        )
        self._topics = settings.topics
        self._group = GroupConsumer(
            settings,
            client_id=f"graphwire-webhooks-{settings.worker_id}",
            group_id=settings.webhook_group_id,
            lag_gauge=self.metrics.consumer_lag,
            commits=self.metrics.commits,
        )
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._lanes: OrderedDict[str, _Lane] = OrderedDict()  # hosts with work, round robin
        self._active = self._queued = self._queued_bytes = 0
        self._caller_active: dict[str, int] = {}  # slots held per caller scope
        self._producer: AIOKafkaProducer | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._started = self._stopping = False
        self._stopped = asyncio.Event()
        self._failure: str | None = None
        self._on_failure = on_failure
        self.metrics.in_flight.set_function(lambda: self._group.tracker.in_flight)
        self.metrics.queued.set_function(lambda: self._queued)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Kafka, join the group, start delivering. Safe to call twice."""
        if self._started:
            return
        s = self.settings
        security = s.kafka_security()
        client_id = f"graphwire-webhooks-{s.worker_id}"
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers, client_id=client_id, acks="all",
            max_request_size=s.max_message_bytes, **security,
        )
        await self.sender.start()
        try:
            await self._producer.start()
            await self._group.start()
        except KafkaConnectionError as exc:
            await self._close_clients()
            raise kafka_unreachable(s) from exc
        self._group.subscribe([self._topics.results], self._on_revoked)
        self._started = True
        self._poll_task = self._watched(
            self._group.poll_loop(self._room, self._dispatch, lambda: self._stopping), "poll"
        )
        self._commit_task = self._watched(self._group.commit_loop(self._group.commit), "commit")
        if not self.policy.enabled:
            log.warning("GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS is empty: every webhook is refused and "
                        "dead-lettered; list the hosts receivers run on")
        log.info("webhooks %s delivering results of %s as group %s", s.worker_id,
                 self._topics.results, s.webhook_group_id)

    async def stop(self) -> None:
        """Stop fetching, let attempts in progress end (the attempt timeout), cancel the rest
        (redelivered), commit what is finished, leave the group. Idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        if not self._started:
            return
        self._stopping = True
        try:
            if self._poll_task is not None:
                await asyncio.gather(self._poll_task, return_exceptions=True)
            tasks = set().union(*self._tasks.values())
            if tasks:
                grace = min(self.settings.shutdown_grace_s, self.settings.webhook_timeout_s + 1)
                _done, pending = await asyncio.wait(tasks, timeout=grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            if self._commit_task is not None:
                self._commit_task.cancel()
                await asyncio.gather(self._commit_task, return_exceptions=True)
            await self._group.commit()
            log.info("webhooks stopped: %d results left for redelivery",
                     self._group.tracker.in_flight)
        finally:
            await self._close_clients()
            self._stopped.set()

    async def _close_clients(self) -> None:
        await self.sender.close()
        await self._group.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def readiness(self) -> dict[str, str]:
        """``{"Kafka": "ok"}`` or why not."""
        if self._failure is not None:
            return {"Kafka": self._failure}
        if not self._started or self._stopping:
            return {"Kafka": "not consuming"}
        return {"Kafka": "ok"}

    @property
    def failure(self) -> str | None:
        """Why a task of the processor died, if one did (it should exit non-zero)."""
        return self._failure

    @property
    def in_flight(self) -> int:
        """Results held: being delivered or waiting for a retry."""
        return self._group.tracker.in_flight

    # -- consuming -------------------------------------------------------------------------

    def _room(self) -> int:
        """Results this processor takes now: free delivery slots, bounded by the room left in
        the host queues (none once they hold ``webhook_max_queued_bytes``)."""
        s = self.settings
        if self._queued_bytes >= s.webhook_max_queued_bytes:
            return 0
        return min(s.webhook_max_in_flight - self._active, s.webhook_max_queued - self._queued)

    def _dispatch(self, batches: Batches) -> None:
        for tp, records in self._group.accept(batches):
            for record in records:
                url = _header(record, HEADER_WEBHOOK)
                if not url:  # most results: nothing to deliver
                    self._group.tracker.finish(tp, record.offset)
                    self.metrics.deliveries.labels("skipped").inc()
                    continue
                self._admit(tp, record, url)

    # -- fair shares of the in-flight slots --------------------------------------------------

    def _admit(self, tp: TopicPartition, record: Record, url: str) -> None:
        """Start the delivery, or queue it behind its host's, or refuse it (host queue full)."""
        host = _lane_key(url)
        lane = self._lanes.setdefault(host, _Lane())
        if not lane.waiting and self._has_room(lane, _caller(record)):
            self._start(tp, record, url, host, lane)
        elif (len(lane.waiting) < self.settings.webhook_host_max_queued
              and lane.waiting_bytes < self.settings.webhook_max_queued_bytes // 10):
            lane.waiting.append((tp, record, url))
            self._queued += 1
            self._queued_bytes += len(record.value or b"")
            lane.waiting_bytes += len(record.value or b"")
        else:
            reason = (f"webhook {describe_url(url)}: its host already has "
                      f"{len(lane.waiting)} results waiting (GRAPHWIRE_WEBHOOK_HOST_MAX_QUEUED, "
                      "or a tenth of GRAPHWIRE_WEBHOOK_MAX_QUEUED_BYTES), "
                      "its receiver does not keep up; `graphwire dlq replay` the dead letter "
                      "once it does")
            self._spawn(tp, self._finish(tp, record, Outcome(False, 0, reason), url))

    def _has_room(self, lane: _Lane, caller: str) -> bool:
        s = self.settings
        return (lane.active < s.webhook_host_max_in_flight
                and self._active < s.webhook_max_in_flight
                and (caller == OPERATOR_SCOPE  # raw producers are the operator's: not capped
                     or self._caller_active.get(caller, 0) < s.webhook_caller_max_in_flight))

    def _start(self, tp: TopicPartition, record: Record, url: str, host: str,
               lane: _Lane) -> None:
        caller = _caller(record)
        lane.active += 1
        self._active += 1
        self._caller_active[caller] = self._caller_active.get(caller, 0) + 1
        task = self._spawn(tp, self._deliver(tp, record, url))
        # a callback, not a `finally`: it runs even for a task cancelled before it started
        task.add_done_callback(lambda _done: self._release(host, caller))

    def _spawn(self, tp: TopicPartition, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        held = self._tasks.setdefault(tp, set())
        held.add(task)
        task.add_done_callback(held.discard)
        # a delivery never raises (it dead-letters); if one does, its offset can never
        # be committed: fail loudly (exit non-zero, restart, redelivered)
        task.add_done_callback(lambda done: self._task_done(done, "delivery"))
        return task

    def _release(self, host: str, caller: str) -> None:
        """A delivery of ``host`` ended: give its slot to the next waiting result, the hosts
        taking turns (round robin)."""
        lane = self._lanes[host]
        lane.active -= 1
        self._active -= 1
        self._caller_active[caller] -= 1
        if not self._caller_active[caller]:
            del self._caller_active[caller]
        self._group.wake()
        if self._stopping:
            return
        for name in list(self._lanes):
            if self._active >= self.settings.webhook_max_in_flight:
                break
            turn = self._lanes[name]
            if turn.waiting and self._has_room(turn, _caller(turn.waiting[0][1])):
                self._lanes.move_to_end(name)  # the next free slot goes to another host first
                tp, record, url = turn.waiting.popleft()
                self._queued -= 1
                self._queued_bytes -= len(record.value or b"")
                turn.waiting_bytes -= len(record.value or b"")
                self._start(tp, record, url, name, turn)
        for name in [n for n, t in self._lanes.items() if not t.active and not t.waiting]:
            del self._lanes[name]

    # -- one result ------------------------------------------------------------------------

    async def _deliver(self, tp: TopicPartition, record: Record, url: str) -> None:
        """Deliver or dead-letter one result, then mark it finished (cancelled: left for
        redelivery)."""
        try:
            outcome = await self._outcome(record, url)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug of ours must not hold the partition: dead-letter it
            log.exception("internal error delivering %s/%d/%d", tp.topic, tp.partition,
                          record.offset)
            outcome = Outcome(False, 0, f"internal error while delivering ({type(exc).__name__}: "
                                        f"{exc}); report it to the graphwire maintainers")
        await self._finish(tp, record, outcome, url)

    async def _finish(self, tp: TopicPartition, record: Record, outcome: Outcome, url: str
                      ) -> None:
        """Count the outcome, dead-letter what was not delivered, mark the offset finished."""
        if outcome.delivered:
            self.metrics.deliveries.labels("delivered").inc()
            self.metrics.delivery_latency.observe(max(0.0, time.time() - record.timestamp / 1000))
            log.debug("delivered %s/%d/%d to %s in %d attempts", tp.topic, tp.partition,
                      record.offset, describe_url(url), outcome.attempts)
        else:
            await self._dead_letter(record, outcome.reason)
            self.metrics.deliveries.labels("dead_lettered").inc()
            log.warning("dead-lettered the webhook of %s/%d/%d: %s", tp.topic, tp.partition,
                        record.offset, outcome.reason)
        self._group.finish(tp, record.offset)

    async def _outcome(self, record: Record, url: str) -> Outcome:
        refusal = self.policy.refusal(url)  # the allow-list may have changed since the run
        if refusal is not None:
            self.metrics.attempts.labels("refused").inc()
            return Outcome(False, 0, f"webhook {describe_url(url)}: {refusal}")
        try:
            body = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            body = None
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or record.value is None:
            return Outcome(False, 0, "not a result (no JSON object with a request_id): nothing "
                                     "to deliver; check what produced it to the results topic")
        if not request_id or len(request_id) > _MAX_REQUEST_ID or not request_id.isprintable():
            return Outcome(False, 0, "the result's request_id is empty, longer than "
                                     f"{_MAX_REQUEST_ID} characters or holds control characters: "
                                     "it cannot be sent as a header; check what produced it")
        delivery = Delivery(url, record.value, delivery_id(record.topic, record.partition,
                                                           record.offset), request_id)
        return await self.sender.deliver(delivery)

    async def _dead_letter(self, record: Record, reason: str) -> None:
        """Publish the dead letter; retried until the broker acknowledges it (or cancelled)."""
        producer = self._producer
        assert producer is not None
        headers = [
            *((k, bytes(v)) for k, v in record.headers),
            (HEADER_ERROR, reason.encode()),
            (HEADER_SOURCE, f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        value, delay = record.value, 0.5
        while True:
            try:
                await producer.send_and_wait(self._topics.dlq, value, key=record.key,
                                             headers=headers)
                return
            except MessageSizeTooLargeError:
                # the dlq takes smaller messages than results: keep the reason and the pointer
                # to the result (still on the results topic) rather than hold the partition
                if value is None:
                    raise
                value = None
                headers.append((HEADER_VALUE_DROPPED, str(len(record.value or b"")).encode()))
            except KafkaError as exc:
                self.metrics.dead_letter_failures.inc()
                log.warning("could not publish a webhook dead letter, retrying: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- revoke -----------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Cancel the revoked partitions' deliveries (the new owner redelivers them), commit
        what finished."""
        self._group.forget_lag(revoked)
        for lane in self._lanes.values():  # waiting results of those partitions: not ours now
            kept = deque(item for item in lane.waiting if item[0] not in revoked)
            self._queued -= len(lane.waiting) - len(kept)
            dropped = sum(len(item[1].value or b"") for item in lane.waiting if item[0] in revoked)
            self._queued_bytes -= dropped
            lane.waiting_bytes -= dropped
            lane.waiting = kept
        tasks = set().union(*(self._tasks.pop(tp, set()) for tp in revoked))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._group.hand_over(self._group.tracked(revoked))
        self._group.wake()
        if tasks:
            log.info("revoked %d partitions: %d deliveries go to the new owner", len(revoked),
                     len(tasks))

    # -- the processor's own tasks ---------------------------------------------------------

    def _watched(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"graphwire-webhooks-{name}")
        task.add_done_callback(lambda done: self._task_done(done, name))
        return task

    def _task_done(self, task: asyncio.Task[None], name: str) -> None:
        if task.cancelled() or task.exception() is None or self._failure is not None:
            return
        exc = task.exception()
        self._failure = (
            f"the webhook processor's {name} task died ({type(exc).__name__}: {exc}); it must be "
            "restarted (it exits non-zero) and the error reported to the graphwire maintainers"
        )
        log.error("%s", self._failure, exc_info=exc)
        if self._on_failure is not None:
            self._on_failure()
