"""WebhookSender: POSTs one result to its webhook, signed, with bounded retries (aiohttp).

Per attempt: a fresh timestamp and signature (``graphwire.topics.webhooks``), a timeout, no
redirect followed except a 307/308 to the same host (same port, or http to https), which keeps
the POST. The outcome of an attempt:

- 2xx: delivered.
- 408, 429, 5xx, a timeout or a connection error: retried after ``backoff_s * 2**(n-1)`` (with
  jitter, at most ``backoff_max_s``; a ``Retry-After`` up to that is honoured), up to
  ``max_attempts``; then given up.
- any other status (4xx, a 3xx not followed), or an address the policy refuses: given up at once.

Only the result body and graphwire's own headers are sent: no credentials, cookies, proxies
from the environment, or headers of the request message. Concurrency is limited per host
(``host:port``). A host whose last ``down_after`` attempts all failed is *down*: one delivery at a
time probes it with a single attempt and the others are dead-lettered at once, so that a dead
receiver cannot hold the in-flight slots every other host's results need (no head-of-line
blocking). An accepted answer slower than ``slow_s`` counts against the host like a failed
attempt (the result is delivered): a receiver that answers just under the timeout is as costly as
one that does not answer. A probe that succeeds quickly brings the host back.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from graphwire.processors.webhooks.keys import SigningKeys
from graphwire.processors.webhooks.metrics import WebhookMetrics
from graphwire.processors.webhooks.policy import (
    WebhookPolicy,
    describe_url,
    host_key,
    is_ip_literal,
)
from graphwire.processors.webhooks.resolver import AddressRefused, GuardedResolver
from graphwire.topics.webhooks import (
    ATTEMPT_HEADER,
    DELIVERY_HEADER,
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
)

log = logging.getLogger(__name__)

_MAX_REDIRECTS = 3
_STREAM_ABOVE = 1024 * 1024
_MAX_HOSTS_REMEMBERED = 10_000
_RETRY_STATUSES = frozenset({408, 429})
_USER_AGENT = "graphwire-webhooks/1"


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One result to POST."""

    url: str
    body: bytes
    delivery_id: str
    """Stable for the result message: the same on every attempt and redelivery."""
    request_id: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a delivery ended."""

    delivered: bool
    attempts: int
    reason: str = ""
    """Why it was given up (empty when delivered)."""
    status: int | None = None
    """The last HTTP status, if an answer came."""


@dataclass(frozen=True, slots=True)
class _Attempt:
    ok: bool
    retriable: bool
    label: str  # metric label of the result: 2xx, 5xx, timeout, connection, refused, ...
    detail: str
    status: int | None = None
    retry_after_s: float | None = None
    slow: bool = False  # accepted, but after more than slow_s


class WebhookSender:
    """Delivers results to webhooks; ``start()`` before ``deliver()``, ``close()`` after."""

    def __init__(
        self,
        policy: WebhookPolicy,
        keys: SigningKeys,
        metrics: WebhookMetrics,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 8,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        per_host: int = 8,
        down_after: int = 10,
        slow_s: float | None = None,
        dns: AbstractResolver | None = None,
    ) -> None:
        """``dns``: the resolver under the address check (default aiohttp's); ``slow_s``: an
        answer slower than this counts against its host (default half of ``timeout_s``)."""
        self.policy = policy
        self._keys = keys
        self.slow_s = slow_s if slow_s is not None else timeout_s / 2
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.per_host, self.down_after = per_host, down_after
        self._dns = dns
        self._session: aiohttp.ClientSession | None = None
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._failures: OrderedDict[str, int] = OrderedDict()  # host -> failed attempts in a row
        self._probing: set[str] = set()  # hosts down with an attempt in progress
        metrics.hosts_down.set_function(
            lambda: sum(n >= self.down_after for n in self._failures.values())
        )

    async def start(self) -> None:
        """Open the HTTP client. Safe to call twice."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.policy, self._dns), limit=0, limit_per_host=0,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),  # nothing one receiver sets reaches another
            trust_env=False,  # no proxy or .netrc credentials from the environment
            auto_decompress=False,
        )

    async def close(self) -> None:
        """Close the HTTP client. Idempotent."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def host_down(self, url: str) -> bool:
        """True while ``url``'s host counts as down (see ``deliver``)."""
        return self._failures.get(host_key(url), 0) >= self.down_after

    async def deliver(self, delivery: Delivery) -> Outcome:
        """Attempt ``delivery`` until it is accepted or given up (cancellable in between).

        While its host is down (``down_after`` failed attempts in a row, over all deliveries),
        one delivery at a time makes a single attempt (a probe) and the others are given up at
        once: a dead receiver's results go to the dead letters at the speed they come, instead of
        filling the in-flight slots. A probe that succeeds brings the host back.
        """
        host = host_key(delivery.url)
        attempt = 0
        while True:
            async with self._slot(host):  # decided once a connection is ours: the host may
                probe = self.host_down(delivery.url)  # have gone down while this one waited
                if probe and host in self._probing:
                    return Outcome(False, attempt, self._down_reason(delivery, attempt))
                attempt += 1
                if probe:
                    self._probing.add(host)
                try:
                    result = await self._attempt(delivery, attempt)
                finally:
                    if probe:
                        self._probing.discard(host)
            if result.ok:
                if result.slow:  # delivered, but a receiver this slow holds slots: a strike
                    self.metrics.slow_answers.inc()
                    self._count_failure(host)
                else:
                    self._failures.pop(host, None)
                return Outcome(True, attempt, status=result.status)
            if result.retriable:
                self._count_failure(host)
            elif result.status is not None:  # it answered: alive, whatever it said
                self._failures.pop(host, None)
            if not result.retriable:
                return Outcome(False, attempt, f"webhook {describe_url(delivery.url)}: "
                                               f"{result.detail}", result.status)
            if probe or attempt >= self.max_attempts:
                reason = (self._down_reason(delivery, attempt, result.detail) if probe else
                          f"webhook {describe_url(delivery.url)}: gave up after "
                          f"{_attempts(attempt)}, the last: {result.detail}; fix the receiver, "
                          "then `graphwire dlq replay` the dead letter")
                return Outcome(False, attempt, reason, result.status)
            self.metrics.retries.labels(result.label).inc()
            await asyncio.sleep(self._delay(attempt, result.retry_after_s))

    def _down_reason(self, delivery: Delivery, attempts: int, last: str = "") -> str:
        tried = f"{_attempts(attempts)}, the last: {last}" if last else _attempts(attempts)
        return (f"webhook {describe_url(delivery.url)}: the host is down ({self.down_after} "
                f"failed or slow (over {self.slow_s:g}s) attempts in a row; this delivery made "
                f"{tried}); fix the receiver, then `graphwire dlq replay` the dead letters")

    def _count_failure(self, host: str) -> None:
        self._failures[host] = self._failures.pop(host, 0) + 1
        while len(self._failures) > _MAX_HOSTS_REMEMBERED:
            self._failures.popitem(last=False)

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_s * 2.0 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(self.backoff_max_s, retry_after_s))
        return delay

    @contextlib.asynccontextmanager
    async def _slot(self, host: str) -> AsyncIterator[None]:
        """One of ``per_host`` concurrent requests to ``host``."""
        entry = self._slots.get(host)
        if entry is None:
            entry = self._slots[host] = (asyncio.Semaphore(self.per_host), [0])
        semaphore, users = entry
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._slots[host]

    async def _attempt(self, delivery: Delivery, attempt: int) -> _Attempt:
        """One attempt, following same-host 307/308 redirects."""
        url = delivery.url
        for _hop in range(_MAX_REDIRECTS + 1):
            result, location = await self._post(url, delivery, attempt)
            if location is None:
                return result
            target = urljoin(url, location)
            refusal = self._redirect_refusal(url, target)
            if refusal is not None:
                return _Attempt(False, False, "3xx", refusal, result.status)
            url = target
        return _Attempt(False, False, "3xx", f"more than {_MAX_REDIRECTS} redirects", 308)

    def _redirect_refusal(self, url: str, target: str) -> str | None:
        old, new = urlsplit(url), urlsplit(target)
        try:
            same_port = old.port == new.port or (
                old.scheme == "http" and new.scheme == "https" and new.port in (None, 443)
            )
        except ValueError:
            same_port = False
        if old.hostname != new.hostname or not same_port or new.scheme not in ("http", "https") \
                or (old.scheme == "https" and new.scheme == "http"):
            return (f"redirected to {describe_url(target)}, another host or a downgrade; "
                    "webhooks never follow those: configure the final URL")
        return self.policy.refusal(target)

    async def _post(
        self, url: str, delivery: Delivery, attempt: int
    ) -> tuple[_Attempt, str | None]:
        """One HTTP request; the outcome, and where a followable redirect points."""
        assert self._session is not None, "call start() first"
        host = urlsplit(url).hostname or ""
        if is_ip_literal(host):  # aiohttp does not ask the resolver about IP literals
            refusal = self.policy.address_refusal(host, host.strip("[]"))
            if refusal is not None:
                self.metrics.attempts.labels("refused").inc()
                return _Attempt(False, False, "refused", refusal), None
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            DELIVERY_HEADER: delivery.delivery_id,
            REQUEST_ID_HEADER: delivery.request_id,
            ATTEMPT_HEADER: str(attempt),
            TIMESTAMP_HEADER: str(timestamp),
            # signed for the URL the request named (not a redirect's): the receiver knows it
            SIGNATURE_HEADER: self._keys.signature(
                delivery.request_id, timestamp, delivery.body, delivery_id=delivery.delivery_id,
                url=delivery.url),
        }
        started = time.perf_counter()
        try:
            # a large body as a stream: aiohttp writes bytes in one call (and warns about it)
            data = delivery.body if len(delivery.body) <= _STREAM_ABOVE else io.BytesIO(
                delivery.body)
            async with self._session.post(
                url, data=data, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                location = response.headers.get("Location")
                retry_after = response.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                self.metrics.attempts.labels("refused").inc()
                return _Attempt(False, False, "refused", str(exc.os_error)), None
            return self._failed("connection", f"cannot connect ({exc.os_error})"), None
        except TimeoutError:
            return self._failed("timeout", f"no answer within {self.timeout_s:g}s"), None
        except aiohttp.ClientError as exc:  # its text may hold the URL: not its query
            text = f"{type(exc).__name__}: {exc}"
            query = urlsplit(url).query
            return self._failed("connection", text.replace(query, "…") if query else text), None
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.attempt_duration.observe(elapsed)
        label = f"{status // 100}xx"
        self.metrics.attempts.labels(label).inc()
        if 200 <= status < 300:
            return _Attempt(True, False, label, "accepted", status,
                            slow=elapsed > self.slow_s), None
        if status in (307, 308) and location:
            return _Attempt(False, False, label, "redirect", status), location
        detail = f"the receiver answered HTTP {status}"
        if status in _RETRY_STATUSES or status >= 500:
            wait = float(retry_after) if retry_after and retry_after.isdigit() else None
            return _Attempt(False, True, str(status) if status < 500 else "5xx", detail, status,
                            wait), None
        if 300 <= status < 400:
            detail += " (a redirect webhooks do not follow: configure the final URL)"
        else:
            detail += " (not retried: fix the receiver or the request's webhook)"
        return _Attempt(False, False, label, detail, status), None

    def _failed(self, label: str, detail: str) -> _Attempt:
        self.metrics.attempts.labels(label).inc()
        return _Attempt(False, True, label, detail)
