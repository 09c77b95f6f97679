"""Webhooks: the signature scheme, the allow-list and SSRF checks, and ``graphwire webhooks``
delivering results to a real local HTTP receiver (retries, dead letters, redirects, a dead host,
a SIGKILL mid-stream), the runner's and the gateway's refusals."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import SecretStr, ValidationError

from graphwire import WebhookSignatureError, sign_webhook, verify_webhook
from graphwire.processors.dev.broker import free_port
from graphwire.processors.settings import Settings
from graphwire.processors.webhooks.delivery import Delivery, WebhookSender
from graphwire.processors.webhooks.dispatcher import WebhookDispatcher, delivery_id
from graphwire.processors.webhooks.keys import SigningKeys
from graphwire.processors.webhooks.metrics import WebhookMetrics
from graphwire.processors.webhooks.policy import WebhookPolicy, describe_url
from graphwire.topics.codec import HEADER_ERROR, HEADER_SOURCE, result_dict
from graphwire.topics.models import Request
from graphwire.topics.specs import TopicNames
from graphwire.topics.webhooks import HEADER_WEBHOOK, signing_key
from tests.conftest import PARTITIONS
from tests.helpers import eventually, until
from tests.kafka_helpers import (
    Collector,
    WorkerProcess,
    committed_total,
    encode,
    metrics,
    produce,
    request,
    wait_ready,
)

pytestmark = pytest.mark.integration

SECRET = "webhook-test-secret-0123456789abcdef"
OPERATOR_KEY = signing_key(SECRET, "")  # signs results whose request id has no caller scope


# -- the signature (no I/O) ---------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_delivery_url_and_body() -> None:
    """The documented scheme, computed independently, is what sign_webhook produces."""
    body = b'{"request_id":"r1","status":"success"}'
    expected = hmac.new(OPERATOR_KEY.encode(), b"1700000000\nd1\nhttps://h.example/x\n" + body,
                        hashlib.sha256).hexdigest()
    assert sign_webhook(OPERATOR_KEY, 1700000000, body, delivery_id="d1",
                        url="https://h.example/x") == f"v2={expected}"


def test_verify_webhook_accepts_a_good_delivery_and_refuses_the_rest() -> None:
    """verify_webhook returns the result; tampering, another key, an old timestamp or a missing
    header each raise WebhookSignatureError with what went wrong."""
    body = orjson.dumps({"request_id": "r1", "status": "success"})
    now, url, key = 1700000000, "https://h.example/x", OPERATOR_KEY
    headers = {"x-graphwire-timestamp": str(now),  # any case: header names are not case-bound
               "X-Graphwire-Delivery": "d1",
               "X-Graphwire-Signature": sign_webhook(key, now, body, delivery_id="d1", url=url)}
    assert verify_webhook(body, headers, key, url=url, now=now + 10) == {"request_id": "r1",
                                                                        "status": "success"}
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify_webhook(body + b" ", headers, key, url=url, now=now)
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify_webhook(body, headers, "another-secret", url=url, now=now)
    with pytest.raises(WebhookSignatureError, match="301s away from this clock"):
        verify_webhook(body, headers, key, url=url, now=now + 301)
    with pytest.raises(WebhookSignatureError, match="missing X-Graphwire-Timestamp"):
        verify_webhook(body, {"X-Graphwire-Signature": "v2=00"}, key, url=url, now=now)
    rotated = {**headers, "X-Graphwire-Signature": "v2=deadbeef, " + headers[
        "X-Graphwire-Signature"]}
    assert verify_webhook(body, rotated, key, url=url, now=now)["request_id"] == "r1"
    assert verify_webhook(body, headers, ["old-key", key], url=url, now=now)["request_id"] == "r1"


# -- the policy (no I/O) ------------------------------------------------------------------------


def test_allow_list_matching() -> None:
    """Exact names, subdomain wildcards (not the apex) and IPs; empty refuses everything."""
    policy = WebhookPolicy(" Hooks.Example.com, *.svc.example.net ,http://10.0.0.7")
    assert policy.refusal("https://hooks.example.com/x?y=1") is None
    assert policy.refusal("https://a.b.svc.example.net:8443/") is None
    assert policy.refusal("http://10.0.0.7/hook") is None
    assert policy.refusal("https://svc.example.net/") == (
        "webhook host 'svc.example.net' is not in GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS; use an "
        "allowed host or ask the operator to add it")
    assert policy.refusal("ftp://hooks.example.com/") == (
        "webhook must be an http:// or https:// URL with a host")
    assert policy.refusal("https://user:pw@hooks.example.com/") == (
        "webhook must not carry credentials (user:password@); receivers verify the signature")
    assert WebhookPolicy("").refusal("https://hooks.example.com/") == (
        "webhooks are not enabled here: GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS is empty; ask the "
        "operator to allow 'hooks.example.com', or send the request without a webhook")
    assert policy.named("hooks.example.com.") and not policy.named("a.svc.example.net")


@pytest.mark.parametrize(("address", "kind"), [
    ("10.1.2.3", "private"), ("192.168.0.1", "private"), ("127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"), ("::1", "loopback"), ("fe80::1", "link-local"),
    ("::ffff:127.0.0.1", "loopback"), ("100.64.0.1", "non-public"), ("0.0.0.0", "private"),
    ("224.0.0.1", "multicast"),
])
def test_non_public_addresses_are_refused_unless_their_network_is_opted_in(
        address: str, kind: str) -> None:
    """No allowed host may resolve to a non-public address, named or not, unless
    GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS lists its network."""
    policy = WebhookPolicy("*.example.com, hooks.internal")
    for host in ("a.example.com", "hooks.internal"):
        refusal = policy.address_refusal(host, address)
        assert refusal is not None and refusal.startswith(
            f"webhook host '{host}' resolves to the {kind} address ")
        assert "SSRF protection" in refusal
    unwrapped = address.removeprefix("::ffff:")  # an IPv4-mapped address is its IPv4
    opted_in = WebhookPolicy("hooks.internal", f"{unwrapped}/{32 if '.' in unwrapped else 128}")
    assert opted_in.address_refusal("hooks.internal", address) is None
    assert policy.address_refusal("a.example.com", "93.184.216.34") is None


def test_request_webhook_field_is_validated() -> None:
    """The contract takes an http(s) URL without credentials, and nothing else."""
    ok = Request(request_id="r", graph="echo", input={}, webhook="https://h.example.com/x")
    assert ok.webhook == "https://h.example.com/x"
    with pytest.raises(ValidationError, match="must not carry credentials"):
        Request(request_id="r", graph="echo", input={}, webhook="https://u:p@h.example.com/")
    with pytest.raises(ValidationError, match="http:// or https:// URL"):
        Request(request_id="r", graph="echo", input={}, webhook="javascript:alert(1)")


def test_urls_in_logs_and_dead_letters_leave_the_query_out() -> None:
    """A token in the query string never reaches a log line or a dead letter."""
    assert describe_url("https://h.example.com:8443/p/q?token=s3cr3t") == (
        "https://h.example.com:8443/p/q?…")


# -- a real local receiver ----------------------------------------------------------------------


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server on 127.0.0.1 answering each path from a script (status codes, "hang",
    or ``("redirect", status, location)``; 200 once the script is used up); records every call."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.scripts: dict[str, list[Any]] = {}
        self.delay_s = 0.0
        self.concurrent = self.most_concurrent = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # a "hang" handler never ends: do not wait for it on cleanup
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.calls.append(Call(request.path, dict(request.headers), body))
        script = self.scripts.get(request.path)
        action = script.pop(0) if script else 200
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.concurrent -= 1
        if action == "hang":
            await asyncio.sleep(3600)
        if isinstance(action, tuple):
            _, status, location = action
            return web.Response(status=status, headers={"Location": location})
        return web.Response(status=action)

    def paths(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


def closed_port() -> int:
    """A port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def hook_settings(settings: Settings, **overrides: Any) -> Settings:
    """The test's settings with a webhook processor of its own: fast retries, 3 attempts."""
    base: dict[str, Any] = {
        "webhook_allowed_hosts": "http://127.0.0.1",
        "webhook_private_cidrs": "127.0.0.0/8, ::1/128",
        "webhook_secret": SecretStr(SECRET),
        "webhook_group_id": f"{settings.topic_prefix}-webhooks",
        "webhook_backoff_s": 0.05,
        "webhook_backoff_max_s": 0.2,
        "webhook_max_attempts": 3,
        "webhook_timeout_s": 2.0,
        "webhook_http_port": 0,
    }
    return settings.model_copy(update={**base, **overrides})


def result_message(rid: str, url: str | None) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A result as a runner publishes it, with the webhook header when ``url``."""
    value = orjson.dumps(result_dict(rid, "echo", "success", output={"text": rid}))
    return rid.encode(), value, [(HEADER_WEBHOOK, url.encode())] if url else []


async def until_committed(bootstrap: str, group: str, topic: str, count: int,
                          timeout: float = 30.0) -> None:
    """Wait until ``group`` committed ``count`` offsets in all over ``topic``."""
    await eventually(lambda: committed_total(bootstrap, group, topic, PARTITIONS), timeout,
                     what=f"{count} offsets committed", until=lambda done: done == count,
                     interval=0.2)


def sample(dispatcher: WebhookDispatcher, name: str, **labels: str) -> float:
    value = dispatcher.metrics.registry.get_sample_value(name, labels)
    return value or 0.0



async def test_sender_refuses_a_host_resolving_to_loopback(receiver: Receiver) -> None:
    """DNS says loopback for a wildcard-matched name and for a name listed exactly: both refused
    in the resolver, nothing sent; once loopback is opted in, delivered."""

    class Dns(AbstractResolver):  # the test's DNS zone: both names are 127.0.0.1
        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
            return [{"hostname": host, "host": "127.0.0.1", "port": port,
                     "family": socket.AF_INET, "proto": 0, "flags": 0}]

        async def close(self) -> None:
            pass

    body = orjson.dumps({"request_id": "r"})
    outcomes = []
    for cidrs in ("", "127.0.0.0/8"):
        policy = WebhookPolicy("*.hooks.test, named.internal", cidrs)
        sender = WebhookSender(policy, SigningKeys(SECRET), WebhookMetrics(), max_attempts=3,
                               backoff_s=0.01, dns=Dns())
        await sender.start()
        try:
            outcomes += [await sender.deliver(Delivery(receiver.url(f"/{n}", host), body, n, "r"))
                         for n, host in ((f"a{cidrs}", "rebind.hooks.test"),
                                         (f"b{cidrs}", "named.internal"))]
        finally:
            await sender.close()
    refused, named, *_allowed = outcomes
    assert [(o.delivered, o.attempts) for o in outcomes] == [(False, 1), (False, 1), (True, 1),
                                                             (True, 1)]
    assert refused.reason == (
        f"webhook http://rebind.hooks.test:{receiver.port}/a: webhook host 'rebind.hooks.test' "
        "resolves to the loopback address 127.0.0.1, which graphwire does not call (SSRF "
        "protection); if it is meant to be called, the operator lists its network in "
        "GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS")
    assert named.reason.startswith(f"webhook http://named.internal:{receiver.port}/b: webhook "
                                   "host 'named.internal' resolves to the loopback address")
    assert [c.path for c in receiver.calls] == ["/a127.0.0.0/8", "/b127.0.0.0/8"]


async def test_runner_result_is_posted_signed_and_a_refused_webhook_is_rejected(
    topics: TopicNames, worker_env: dict[str, str], settings: Settings, receiver: Receiver,
    tmp_path: Path, bootstrap: str,
) -> None:
    """End to end: the runner's result reaches the receiver once, signed, byte for byte as on
    the results topic; a request whose webhook host is not allowed is rejected at once with the
    reason, and nothing is POSTed for it; a rejection for another reason (an unknown graph) is
    POSTed like any result."""
    env = {**worker_env, "GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS": "http://127.0.0.1"}
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    hooks = hook_settings(settings)
    try:
        async with Collector(bootstrap, topics.results, topics.dlq) as out, \
                WebhookDispatcher(hooks) as dispatcher:
            await produce(bootstrap, topics.requests, [
                (b"ok", encode(request("ok", "echo", input={"text": "hi"},
                                       webhook=receiver.url("/hook?token=t")))),
                (b"bad", encode(request("bad", "nope", input={"text": "hi"},
                                        webhook="https://evil.example.org/steal"))),
                (b"nope", encode(request("nope", "nope", webhook=receiver.url("/rejected")))),
            ])
            await out.wait_count(topics.results, 3, timeout=60)
            await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 3)
            records = {r.key: r for r in out.records[topics.results]}
            assert sample(dispatcher, "graphwire_webhook_deliveries_total",
                          outcome="delivered") == 2
            assert sample(dispatcher, "graphwire_webhook_deliveries_total",
                          outcome="skipped") == 1
    finally:
        worker.stop()
    ok, bad = records[b"ok"], records[b"bad"]
    assert sorted(c.path for c in receiver.calls) == ["/hook", "/rejected"]
    [call] = receiver.paths("/hook")
    [unknown] = receiver.paths("/rejected")
    assert unknown.body == records[b"nope"].value
    assert verify_webhook(unknown.body, unknown.headers, OPERATOR_KEY,
                          url=receiver.url("/rejected"))["status"] == "rejected"
    assert call.body == ok.value
    assert verify_webhook(call.body, call.headers, OPERATOR_KEY,
                          url=receiver.url("/hook?token=t")) == orjson.loads(ok.value)
    assert orjson.loads(ok.value)["status"] == "success"
    assert call.headers["X-Graphwire-Delivery"] == delivery_id(ok.topic, ok.partition, ok.offset)
    assert (call.headers["X-Graphwire-Request-Id"], call.headers["X-Graphwire-Attempt"],
            call.headers["Content-Type"]) == ("ok", "1", "application/json")
    assert SECRET not in str(call.headers)
    assert (HEADER_WEBHOOK, receiver.url("/hook?token=t").encode()) in ok.headers
    rejected = orjson.loads(bad.value)
    assert rejected["status"] == "rejected"
    assert rejected["error"] == {"type": "InvalidRequest", "message": (
        "invalid request: webhook host 'evil.example.org' is not in "
        "GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS; use an allowed host or ask the operator to add it")}
    assert all(k != HEADER_WEBHOOK for k, _ in bad.headers)


async def test_500_500_200_is_one_delivery_in_three_attempts(
    topics: TopicNames, settings: Settings, receiver: Receiver, bootstrap: str,
) -> None:
    """Two 5xx, then 200: exactly one accepted delivery, three attempts with one delivery id,
    two retries counted, no dead letter, the offset committed."""
    receiver.scripts["/flaky"] = [500, 503, 200]
    hooks = hook_settings(settings)
    async with Collector(bootstrap, topics.dlq) as out, WebhookDispatcher(hooks) as dispatcher:
        await produce(bootstrap, topics.results, [result_message("r1", receiver.url("/flaky"))])
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 1)
        assert sample(dispatcher, "graphwire_webhook_deliveries_total", outcome="delivered") == 1
        assert sample(dispatcher, "graphwire_webhook_deliveries_total",
                      outcome="dead_lettered") == 0
        assert sample(dispatcher, "graphwire_webhook_attempts_total", result="5xx") == 2
        assert sample(dispatcher, "graphwire_webhook_attempts_total", result="2xx") == 1
        assert sample(dispatcher, "graphwire_webhook_retries_total", reason="5xx") == 2
        assert sample(dispatcher, "graphwire_webhook_delivery_latency_seconds_count") == 1
        await asyncio.sleep(0.3)
        assert out.records[topics.dlq] == []
    calls = receiver.paths("/flaky")
    assert [c.headers["X-Graphwire-Attempt"] for c in calls] == ["1", "2", "3"]
    assert len({c.headers["X-Graphwire-Delivery"] for c in calls}) == 1
    assert all(verify_webhook(c.body, c.headers, OPERATOR_KEY, url=receiver.url("/flaky"))[
        "request_id"] == "r1" for c in calls)


async def test_a_receiver_that_is_down_gets_a_dead_letter_after_the_bound(
    topics: TopicNames, settings: Settings, bootstrap: str,
) -> None:
    """Connections refused: three attempts (the bound), then a dead letter carrying the result,
    its headers, the reason (query left out) and the source; the offset moves past it."""
    url = f"http://127.0.0.1:{closed_port()}/hook?token=secret-token"
    hooks = hook_settings(settings)
    async with Collector(bootstrap, topics.dlq) as out, WebhookDispatcher(hooks) as dispatcher:
        key, value, headers = result_message("down", url)
        await produce(bootstrap, topics.results, [(key, value, headers)])
        await out.wait_count(topics.dlq, 1)
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 1)
        assert sample(dispatcher, "graphwire_webhook_attempts_total", result="connection") == 3
        assert sample(dispatcher, "graphwire_webhook_retries_total", reason="connection") == 2
        assert sample(dispatcher, "graphwire_webhook_deliveries_total",
                      outcome="dead_lettered") == 1
    [letter] = out.records[topics.dlq]
    assert (letter.key, letter.value) == (key, value)
    found = dict(letter.headers)
    assert found[HEADER_WEBHOOK] == url.encode()
    reason = found[HEADER_ERROR].decode()
    assert reason.startswith(f"webhook {url.split('?')[0]}?…: gave up after 3 attempts, the "
                             "last: cannot connect (")
    assert reason.endswith("fix the receiver, then `graphwire dlq replay` the dead letter")
    assert "secret-token" not in reason
    assert found[HEADER_SOURCE].decode().startswith(f"{topics.results}/")


async def test_4xx_is_not_retried_but_408_and_429_are(
    topics: TopicNames, settings: Settings, receiver: Receiver, bootstrap: str,
) -> None:
    """400 and 410: one attempt and a dead letter with the status; 408 and 429: retried."""
    receiver.scripts.update({"/400": [400], "/410": [410], "/408": [408, 200],
                             "/429": [429, 429, 200]})
    hooks = hook_settings(settings)
    async with Collector(bootstrap, topics.dlq) as out, WebhookDispatcher(hooks) as dispatcher:
        await produce(bootstrap, topics.results, [
            result_message(f"r{path}", receiver.url(f"/{path}")) for path in
            ("400", "410", "408", "429")])
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 4)
        await out.wait_count(topics.dlq, 2)
        assert sample(dispatcher, "graphwire_webhook_retries_total", reason="408") == 1
        assert sample(dispatcher, "graphwire_webhook_retries_total", reason="429") == 2
    assert {p: len(receiver.paths(p)) for p in ("/400", "/410", "/408", "/429")} == {
        "/400": 1, "/410": 1, "/408": 2, "/429": 3}
    reasons = sorted(dict(r.headers)[HEADER_ERROR].decode() for r in out.records[topics.dlq])
    assert reasons == [
        f"webhook {receiver.url('/400')}: the receiver answered HTTP 400 (not retried: fix "
        "the receiver or the request's webhook)",
        f"webhook {receiver.url('/410')}: the receiver answered HTTP 410 (not retried: fix "
        "the receiver or the request's webhook)",
    ]


async def test_redirects_are_followed_only_to_the_same_host(
    topics: TopicNames, settings: Settings, receiver: Receiver, bootstrap: str,
) -> None:
    """A 307 to another path of the same host is followed (the POST and its signature kept);
    a 307 to another host and a 302 are not: dead letters with the reason."""
    receiver.scripts.update({
        "/moved": [("redirect", 307, "/final")],
        "/away": [("redirect", 307, receiver.url("/final", "localhost"))],
        "/found": [("redirect", 302, "/final")],
    })
    hooks = hook_settings(settings, webhook_allowed_hosts="http://127.0.0.1, http://localhost")
    async with Collector(bootstrap, topics.dlq) as out, WebhookDispatcher(hooks):
        await produce(bootstrap, topics.results, [
            result_message(f"r{p}", receiver.url(p)) for p in ("/moved", "/away", "/found")])
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 3)
        await out.wait_count(topics.dlq, 2)
    [final] = receiver.paths("/final")
    # signed for the URL the request named, which the receiver knows (not the redirect's)
    assert verify_webhook(final.body, final.headers, OPERATOR_KEY,
                          url=receiver.url("/moved"))["request_id"] == "r/moved"
    reasons = sorted(dict(r.headers)[HEADER_ERROR].decode() for r in out.records[topics.dlq])
    assert reasons == [
        f"webhook {receiver.url('/away')}: redirected to {receiver.url('/final', 'localhost')}, "
        "another host or a downgrade; webhooks never follow those: configure the final URL",
        f"webhook {receiver.url('/found')}: the receiver answered HTTP 302 (a redirect webhooks "
        "do not follow: configure the final URL)",
    ]


async def test_a_dead_host_does_not_hold_up_the_others(
    topics: TopicNames, settings: Settings, bootstrap: str,
) -> None:
    """30 results for a receiver that never answers, then 30 for a live one, with room for 8
    in flight: the live ones are all delivered, the dead host is probed one result at a time
    once down (not 3 attempts for each of its 30 results) and every result ends up finished."""
    async with Receiver() as dead, Receiver() as live:
        dead.scripts["/hook"] = ["hang"] * 100
        hooks = hook_settings(settings, webhook_max_in_flight=8, webhook_per_host=2,
                              webhook_timeout_s=1.0, webhook_host_down_after=2)
        async with Collector(bootstrap, topics.dlq) as out, \
                WebhookDispatcher(hooks) as dispatcher:
            await produce(bootstrap, topics.results,
                          [result_message(f"dead{i}", dead.url("/hook")) for i in range(30)])
            await produce(bootstrap, topics.results,
                          [result_message(f"live{i}", live.url("/hook")) for i in range(30)])
            await until(lambda: len(live.calls) == 30, 30, "live deliveries")
            await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 60)
            assert sample(dispatcher, "graphwire_webhook_hosts_down") == 1
        assert len(out.records[topics.dlq]) == 30
        assert sorted(orjson.loads(c.body)["request_id"] for c in live.calls) == sorted(
            f"live{i}" for i in range(30))
        # two attempts in flight until it counts as down, then one probe at a time
        assert len(dead.calls) < 15
        reasons = [dict(r.headers)[HEADER_ERROR].decode() for r in out.records[topics.dlq]]
        assert sum("the host is down (2 failed or slow (over 0.5s) attempts in a row" in r
                   for r in reasons) >= 20
        assert any("made 1 attempt, the last: no answer within 1s); fix the receiver" in r
                   for r in reasons)


async def test_per_host_concurrency_is_limited(
    topics: TopicNames, settings: Settings, receiver: Receiver, bootstrap: str,
) -> None:
    """20 results for one slow host with GRAPHWIRE_WEBHOOK_PER_HOST=3: never more than 3
    requests at once there (and 3 at some point), every result delivered."""
    receiver.delay_s = 0.2
    hooks = hook_settings(settings, webhook_per_host=3)
    async with WebhookDispatcher(hooks):
        await produce(bootstrap, topics.results,
                      [result_message(f"c{i}", receiver.url("/slow")) for i in range(20)])
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 20)
    assert receiver.most_concurrent == 3
    assert sorted(orjson.loads(c.body)["request_id"] for c in receiver.calls) == sorted(
        f"c{i}" for i in range(20))


async def test_sigkill_mid_stream_loses_no_result(
    topics: TopicNames, worker_env: dict[str, str], receiver: Receiver, tmp_path: Path,
    bootstrap: str,
) -> None:
    """SIGKILL the webhook processor mid-stream, start another: every one of 200 results is
    delivered at least once (a redelivery keeps its delivery id), none dead-lettered; /ready
    and /metrics answer meanwhile."""
    receiver.delay_s = 0.05
    port = free_port()
    env = {**worker_env, "GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS": "http://127.0.0.1",
           "GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS": "127.0.0.0/8", "GRAPHWIRE_WEBHOOK_SECRET": SECRET,
           "GRAPHWIRE_WEBHOOK_GROUP_ID": f"{worker_env['GRAPHWIRE_TOPIC_PREFIX']}-webhooks",
           "GRAPHWIRE_WEBHOOK_PER_HOST": "2", "GRAPHWIRE_WEBHOOK_HTTP_PORT": str(port)}
    log = tmp_path / "webhooks.log"
    first = WorkerProcess(env, log_path=log, command="webhooks").start()
    second = None
    try:
        await produce(bootstrap, topics.results,
                      [result_message(f"k{i}", receiver.url("/hook")) for i in range(200)])
        body = await wait_ready(port, 200)
        assert body == {"ready": True, "dependencies": {"Kafka": "ok"}}
        await until(lambda: len(receiver.calls) >= 40, 60, "first deliveries")
        samples = await metrics(port)
        assert samples['graphwire_webhook_deliveries_total{outcome="delivered"}'] >= 1
        first.kill()
        before = len(receiver.calls)
        assert before < 200, "the stream was over before the kill: nothing was tested"
        second = WorkerProcess({**env, "GRAPHWIRE_WEBHOOK_HTTP_PORT": "0"}, log_path=log,
                               command="webhooks").start()
        await until(lambda: {orjson.loads(c.body)["request_id"] for c in receiver.calls}
                    >= {f"k{i}" for i in range(200)}, 90, "every result delivered")
        await until_committed(bootstrap, env["GRAPHWIRE_WEBHOOK_GROUP_ID"], topics.results, 200,
                              timeout=60)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    ids: dict[str, set[str]] = {}
    for call in receiver.calls:
        result = verify_webhook(call.body, call.headers, OPERATOR_KEY, url=receiver.url("/hook"))
        ids.setdefault(result["request_id"], set()).add(call.headers["X-Graphwire-Delivery"])
    assert len(ids) == 200
    assert all(len(delivery_ids) == 1 for delivery_ids in ids.values())  # redeliveries dedupe
    from graphwire.topics.deadletters import read_dead_letters

    assert await read_dead_letters(bootstrap, topics) == []


async def test_the_offset_waits_for_a_result_still_being_retried(
    topics: TopicNames, settings: Settings, receiver: Receiver, bootstrap: str,
) -> None:
    """Two results in one partition: the second is delivered at once, the first is retried
    for a second; the committed offset stays before the first until it is delivered."""
    receiver.scripts["/slow"] = [503] * 10
    hooks = hook_settings(settings, webhook_max_attempts=12, webhook_backoff_s=0.2,
                          webhook_backoff_max_s=0.2)
    _, first, headers1 = result_message("first", receiver.url("/slow"))
    _, second, headers2 = result_message("second", receiver.url("/fast"))
    async with WebhookDispatcher(hooks):
        await produce(bootstrap, topics.results, [(b"k", first, headers1),
                                                  (b"k", second, headers2)])
        await until(lambda: len(receiver.paths("/fast")) == 1, 30, "the second delivered")
        await asyncio.sleep(0.5)  # five commit intervals
        assert await committed_total(bootstrap, hooks.webhook_group_id, topics.results,
                                     PARTITIONS) == 0
        assert len(receiver.paths("/slow")) < 11  # still being retried
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 2)
    assert len(receiver.paths("/slow")) == 11


def test_the_processor_refuses_to_start_without_a_secret(worker_env: dict[str, str]) -> None:
    """No GRAPHWIRE_WEBHOOK_SECRET: `graphwire webhooks` exits 1 with one line saying what to
    set."""
    from tests.helpers import graphwire

    done = graphwire("webhooks", env=worker_env)
    assert (done.returncode, done.stderr) == (1, (
        "graphwire: error: GRAPHWIRE_WEBHOOK_SECRET is not set: webhooks are signed with keys "
        "derived from it; set it to a long random value (e.g. `openssl rand -hex 32`)\n"))


async def test_replaying_a_webhook_dead_letter_delivers_the_result_again(
    topics: TopicNames, settings: Settings, receiver: Receiver, bootstrap: str,
) -> None:
    """`graphwire dlq replay` puts a webhook's dead letter back on the results topic (not the
    requests topic): the receiver, fixed meanwhile, gets the same result bytes."""
    from graphwire.topics.deadletters import is_webhook_letter, read_dead_letters, replay

    receiver.scripts["/hook"] = [400]  # broken at first; 200 once the script is used up
    hooks = hook_settings(settings)
    async with WebhookDispatcher(hooks):
        key, value, headers = result_message("again", receiver.url("/hook"))
        await produce(bootstrap, topics.results, [(key, value, headers)])
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 1)
        letters = await read_dead_letters(bootstrap, topics)
        assert [is_webhook_letter(d, topics) for d in letters] == [True]
        assert await replay(bootstrap, topics, letters) == 1
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 2)
    first, second = receiver.paths("/hook")
    assert first.body == second.body == value
    assert verify_webhook(second.body, second.headers, OPERATOR_KEY,
                          url=receiver.url("/hook"))["request_id"] == "again"
    async with Collector(bootstrap, topics.requests) as requests:
        await asyncio.sleep(0.5)
        assert requests.records[topics.requests] == []


async def test_gateway_takes_webhook_under_the_runners_rules(
    topics: TopicNames, worker_env: dict[str, str], bootstrap: str,
) -> None:
    """execute and batch accept an allowed webhook (it reaches the request on Kafka) and answer
    422 with the reason for one that is not; a batch with one is submitted not at all."""
    from tests.gateway_helpers import A, gateway_settings, serve

    settings = gateway_settings(worker_env, webhook_allowed_hosts="hooks.example.com")
    good, bad = "https://hooks.example.com/done?t=1", "https://evil.example.org/x"
    async with Collector(bootstrap, topics.requests) as out, serve(settings) as http:
        accepted = await http.post("/workflow/execute", headers=A, json={
            "workflow_name": "echo", "input_data": {"text": "x"}, "webhook": good})
        assert accepted.status_code == 202, accepted.text
        refused = await http.post("/workflow/execute", headers=A, json={
            "workflow_name": "echo", "input_data": {"text": "x"}, "webhook": bad})
        assert (refused.status_code, refused.json()) == (422, {"detail": (
            "webhook: webhook host 'evil.example.org' is not in GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS; "
            "use an allowed host or ask the operator to add it")})
        batch = await http.post("/workflow/batch", headers=A, json={"requests": [
            {"workflow_name": "echo", "input_data": {}, "webhook": good},
            {"workflow_name": "echo", "input_data": {}, "webhook": "ftp://hooks.example.com/"}]})
        assert (batch.status_code, batch.json()) == (422, {"detail": (
            "requests[1]: webhook: webhook must be an http:// or https:// URL with a host; "
            "nothing in this batch was submitted")})
        await out.wait_count(topics.requests, 1)
        await asyncio.sleep(0.5)
    [sent] = out.values(topics.requests)
    assert sent["request_id"] == accepted.json()["request_id"]
    assert sent["webhook"] == good


def test_doctor_webhook_checks() -> None:
    """Off without an allow-list; with one, a missing secret fails, a short one and a whole
    top-level domain warn, and the retry bound is stated."""
    from graphwire.processors.cli.doctor import webhook_checks

    def table(**fields: Any) -> dict[str, tuple[str, str]]:
        s = Settings(_env_file=None, **fields)  # type: ignore[call-arg]
        return {c.name: (c.status, c.detail) for c in webhook_checks(s)}

    assert table() == {"webhooks": ("pass", "off: GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS is empty, so "
                                            "requests with a webhook are rejected")}
    found = table(webhook_allowed_hosts="*.com, hooks.internal")
    assert found["webhook secret"][0] == "fail"
    assert found["webhook allow-list"] == ("warn", "*.com allows a whole top-level domain")
    found = table(webhook_allowed_hosts="hooks.example.com", webhook_secret="short",
                  webhook_max_attempts=3, webhook_backoff_s=1, webhook_timeout_s=10)
    assert found["webhook secret"] == ("warn", "5 characters")
    assert found["webhook retries"] == ("pass", "3 attempts: a dead receiver's result is "
                                                "dead-lettered within about 33 s")


async def test_the_webhook_processor_leaks_no_secret(
    topics: TopicNames, worker_env: dict[str, str], receiver: Receiver, tmp_path: Path,
    bootstrap: str,
) -> None:
    """At DEBUG, through deliveries, retries, a dead letter and a refusal: neither the signing
    key, nor other configured secrets, nor a webhook URL's query token reach the log, the
    receiver, the dead letters or the metrics."""
    token_in_url = "tok-Sup3r-s3cret-0xF00D"
    sasl, pg = "sasl-Sup3r-s3cret-0xBEEF", "pg-Sup3r-s3cret-0xC0FFEE"
    port = free_port()
    env = {**worker_env, "GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS": "http://127.0.0.1",
           "GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS": "127.0.0.0/8", "GRAPHWIRE_WEBHOOK_SECRET": SECRET,
           "GRAPHWIRE_SASL_PASSWORD": sasl,
           "GRAPHWIRE_DATABASE_URL": f"postgresql://u:{pg}@127.0.0.1:5432/test",
           "GRAPHWIRE_WEBHOOK_GROUP_ID": f"{worker_env['GRAPHWIRE_TOPIC_PREFIX']}-webhooks",
           "GRAPHWIRE_WEBHOOK_BACKOFF_S": "0.05", "GRAPHWIRE_WEBHOOK_MAX_ATTEMPTS": "2",
           "GRAPHWIRE_WEBHOOK_HTTP_PORT": str(port), "GRAPHWIRE_LOG_LEVEL": "DEBUG"}
    receiver.scripts["/fails"] = [500, 500]
    log = tmp_path / "webhooks.log"
    process = WorkerProcess(env, log_path=log, command="webhooks").start()
    try:
        async with Collector(bootstrap, topics.dlq) as out:
            await produce(bootstrap, topics.results, [
                result_message("ok", receiver.url(f"/ok?token={token_in_url}")),
                result_message("fails", receiver.url(f"/fails?token={token_in_url}")),
                result_message("refused", f"https://elsewhere.example.org/?token={token_in_url}"),
                result_message("closed", f"http://127.0.0.1:{closed_port()}/?t={token_in_url}"),
            ])
            await wait_ready(port, 200)
            await out.wait_count(topics.dlq, 3)
            texts = [orjson.dumps(await metrics(port)).decode()]
    finally:
        assert process.terminate(timeout=60) == 0
    reasons = [dict(r.headers)[HEADER_ERROR].decode() for r in out.records[topics.dlq]]
    texts += reasons + [f"{c.headers!r} {c.body!r}" for c in receiver.calls]
    logged = log.read_text()
    levels = {orjson.loads(line)["level"] for line in logged.splitlines() if line.startswith("{")}
    assert "debug" in levels and "dead-lettered the webhook" in logged  # the log was really read
    for secret in (SECRET, OPERATOR_KEY, sasl, pg):
        assert not [t for t in [*texts, logged] if secret in t], secret
    assert token_in_url not in logged and not [r for r in reasons if token_in_url in r]


def test_the_audit_records_a_webhook_dead_letter_with_its_own_origin() -> None:
    """A webhook's dead letter is a row of origin 'webhooks', pointing at the result."""
    from graphwire.processors.audit.rows import Record, to_row

    names = TopicNames("p")
    letter = Record(names.dlq, 0, 7, b"r1", orjson.dumps({"request_id": "r1"}),
                    [(HEADER_ERROR, b"webhook gave up"), (HEADER_SOURCE, b"p.results/2/40")],
                    1700000000.0)
    row = to_row(letter, names, max_request_bytes=1024)
    assert (row.table, row.values[:5]) == ("dead_letters", ("p.results", 2, 40, "webhooks", "r1"))
    assert row.values[8] == "webhook gave up"
