"""Webhooks against hostile tenants (issue 21): per-caller signing keys bound to the delivery id
and the destination, the SSRF leftovers (named hosts, wrapped IPv4, cleartext), and fair shares
of the in-flight slots between hosts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from graphwire import WebhookSignatureError, sign_webhook, verify_webhook
from graphwire.processors.settings import Settings
from graphwire.processors.webhooks.dispatcher import WebhookDispatcher
from graphwire.processors.webhooks.policy import WebhookPolicy
from graphwire.topics.codec import HEADER_ERROR
from graphwire.topics.specs import TopicNames
from graphwire.topics.webhooks import scope_of, signing_key
from tests.gateway_helpers import SCOPE_A  # api_key:svc-a
from tests.helpers import until
from tests.kafka_helpers import Collector, produce
from tests.test_webhooks import (
    SECRET,
    Receiver,
    hook_settings,
    result_message,
    sample,
    until_committed,
)

pytestmark = pytest.mark.integration

SCOPE_B = "0123456789ab"  # another caller (a 48-bit scope of graphwire 0.1)
OLD_MASTER = "the-previous-master-secret-0123456789"


# -- per-caller signing keys (no I/O) -----------------------------------------------------------


def test_each_caller_has_its_own_key_derived_as_documented() -> None:
    """The key of a scope is gwwh_ + HMAC-SHA256(master, "graphwire webhook signing key\\0" +
    scope), computed independently; callers' keys differ; an id without a scope is the
    operator's (empty scope)."""
    def derived(scope: str) -> str:
        return "gwwh_" + hmac.new(SECRET.encode(), b"graphwire webhook signing key\x00"
                                  + scope.encode(), hashlib.sha256).hexdigest()

    assert signing_key(SECRET, SCOPE_A) == derived(SCOPE_A)
    assert signing_key(SECRET, "") == derived("")
    assert len({signing_key(SECRET, s) for s in (SCOPE_A, SCOPE_B, "")}) == 3
    assert [scope_of(r) for r in (f"{SCOPE_A}.order-1", f"{SCOPE_B}.n:2026-12-02T02:00:00Z",
                                  "order-1", "Order.1", "abc.1", f"{SCOPE_A}")] == [
        SCOPE_A, SCOPE_B, "", "", "", ""]


def test_v2_signs_timestamp_delivery_id_url_and_body() -> None:
    """The documented v2 scheme, computed independently, is what sign_webhook produces."""
    body, key = b'{"request_id":"r1"}', signing_key(SECRET, SCOPE_A)
    expected = hmac.new(key.encode(), b"1700000000\nd-1\nhttps://h.example/cb?t=1\n" + body,
                        hashlib.sha256).hexdigest()
    assert sign_webhook(key, 1700000000, body, delivery_id="d-1",
                        url="https://h.example/cb?t=1") == f"v2={expected}"


def test_another_tenants_key_cannot_forge_a_delivery() -> None:
    """The review's forgery: tenant A, holding only its own key, signs a fake success for B's
    receiver; B's verify_webhook refuses it. So does a delivery of A's replayed to B, one with
    another delivery id, and one whose request id header is not the body's."""
    url_b, now = "https://hooks.b.example/cb", 1700000000
    key_a, key_b = signing_key(SECRET, SCOPE_A), signing_key(SECRET, SCOPE_B)
    body = orjson.dumps({"request_id": f"{SCOPE_B}.order-42", "status": "success"})
    forged = {"X-Graphwire-Timestamp": str(now), "X-Graphwire-Delivery": "d-1",
              "X-Graphwire-Signature": sign_webhook(key_a, now, body, delivery_id="d-1",
                                                    url=url_b)}
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify_webhook(body, forged, key_b, url=url_b, now=now)
    good = {**forged, "X-Graphwire-Signature": sign_webhook(key_b, now, body, delivery_id="d-1",
                                                            url=url_b)}
    assert verify_webhook(body, good, key_b, url=url_b, now=now)["status"] == "success"
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify_webhook(body, good, key_b, url="https://hooks.c.example/cb", now=now)
    with pytest.raises(WebhookSignatureError, match="signature does not match"):
        verify_webhook(body, {**good, "X-Graphwire-Delivery": "d-2"}, key_b, url=url_b, now=now)
    with pytest.raises(WebhookSignatureError, match="is not the body's request_id"):
        verify_webhook(body, {**good, "X-Graphwire-Request-Id": f"{SCOPE_B}.other"}, key_b,
                       url=url_b, now=now)
    with pytest.raises(WebhookSignatureError, match="missing X-Graphwire-Timestamp"):
        verify_webhook(body, {k: v for k, v in good.items() if k != "X-Graphwire-Delivery"},
                       key_b, url=url_b, now=now)


# -- per-caller keys end to end -----------------------------------------------------------------


async def test_each_callers_results_are_signed_with_its_own_key_and_old_keys_still_verify(
    topics: TopicNames, settings: Settings, bootstrap: str,
) -> None:
    """Results of two callers and one raw request: each signed (v2 only) with its caller's key
    (the raw one with the operator's), for its URL and delivery id; while the master rotates,
    with the new and the previous master's keys, so receivers with either verify."""
    hooks = hook_settings(settings, webhook_previous_secrets=SecretStr(OLD_MASTER))
    rids = {"/a": f"{SCOPE_A}.order-1", "/b": f"{SCOPE_B}.order-42", "/raw": "raw-1"}
    async with Receiver() as receiver, WebhookDispatcher(hooks):
        await produce(bootstrap, topics.results,
                      [result_message(rid, receiver.url(path)) for path, rid in rids.items()])
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 3)
    [a], [b], [raw] = (receiver.paths(p) for p in ("/a", "/b", "/raw"))
    key_a, key_b = signing_key(SECRET, SCOPE_A), signing_key(SECRET, SCOPE_B)
    url_b = receiver.url("/b")
    assert verify_webhook(b.body, b.headers, key_b, url=url_b)["request_id"] == rids["/b"]
    assert verify_webhook(b.body, b.headers, signing_key(OLD_MASTER, SCOPE_B),
                          url=url_b)["request_id"] == rids["/b"]
    assert verify_webhook(a.body, a.headers, [key_b, key_a],
                          url=receiver.url("/a"))["request_id"] == rids["/a"]
    assert verify_webhook(raw.body, raw.headers, signing_key(SECRET, ""),
                          url=receiver.url("/raw"))["request_id"] == "raw-1"
    for key, url, call in ((key_a, url_b, b), (key_b, url_b, a), (SECRET, url_b, b)):
        with pytest.raises(WebhookSignatureError, match="signature does not match"):
            verify_webhook(call.body, call.headers, key, url=url)
    signature = b.headers["X-Graphwire-Signature"]
    assert [part.strip().split("=")[0] for part in signature.split(",")] == ["v2", "v2"]


async def test_the_gateway_shows_a_caller_its_key_once(
    topics: TopicNames, worker_env: dict[str, str], bootstrap: str,
) -> None:
    """POST /workflow/webhooks/signing-key: the caller's own key the first time, 409 after;
    another caller gets its own; a gateway without the master secret answers 404."""
    from tests.gateway_helpers import A, gateway_settings, serve, token

    settings = gateway_settings(worker_env, webhook_secret=SecretStr(SECRET))
    async with serve(settings) as http:
        first = await http.post("/workflow/webhooks/signing-key", headers=A)
        again = await http.post("/workflow/webhooks/signing-key", headers=A)
        other = await http.post("/workflow/webhooks/signing-key",
                                headers={"Authorization": f"Bearer {token('tenant-b', ['*'])}"})
    assert first.status_code == 200, first.text
    shown = first.json()
    assert (shown["signing_key"], shown["scope"], shown["signature"]) == (
        signing_key(SECRET, SCOPE_A), SCOPE_A, "v2")
    assert shown["warning"].startswith("store this key now")
    assert (again.status_code, again.json()["detail"]) == (409, (
        f"the webhook signing key {shown['key_id']} of this caller was already shown (it is "
        f"shown once); ask the operator for it (`graphwire webhooks key --scope {SCOPE_A}`), or "
        "for a rotation of GRAPHWIRE_WEBHOOK_SECRET if it leaked"))
    assert other.status_code == 200
    scope_b = other.json()["scope"]
    assert other.json()["signing_key"] == signing_key(SECRET, scope_b) != shown["signing_key"]
    async with serve(gateway_settings(worker_env)) as http:
        off = await http.post("/workflow/webhooks/signing-key", headers=A)
    assert (off.status_code, off.json()["detail"]) == (404, (
        "webhook signing keys are not served here: the gateway has no GRAPHWIRE_WEBHOOK_SECRET; "
        "ask the operator"))


def test_operator_prints_a_callers_key(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`graphwire webhooks key --scope S` prints S's key; without a scope, the operator's."""
    from graphwire.processors.cli.main import main

    monkeypatch.setenv("GRAPHWIRE_WEBHOOK_SECRET", SECRET)
    assert main(["webhooks", "key", "--scope", SCOPE_A]) == 0
    assert main(["webhooks", "key", "--request-id", f"{SCOPE_B}.x"]) == 0
    assert main(["webhooks", "key"]) == 0
    assert capsys.readouterr().out.split() == [
        signing_key(SECRET, SCOPE_A), signing_key(SECRET, SCOPE_B), signing_key(SECRET, "")]


# -- SSRF leftovers (no I/O) --------------------------------------------------------------------


@pytest.mark.parametrize(("address", "kind"), [
    ("10.1.2.3", "private"), ("127.0.0.1", "loopback"), ("169.254.169.254", "link-local"),
    ("::1", "loopback"),
])
def test_a_named_host_is_address_checked_too(address: str, kind: str) -> None:
    """An allow-list entry named exactly no longer turns the address check off."""
    refusal = WebhookPolicy("hooks.customer.example").address_refusal(
        "hooks.customer.example", address)
    assert refusal == (
        f"webhook host 'hooks.customer.example' resolves to the {kind} address {address}, which "
        "graphwire does not call (SSRF protection); if it is meant to be called, the operator "
        "lists its network in GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS")


def test_private_networks_are_an_explicit_opt_in() -> None:
    """GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS allows exactly its networks (an IPv4-mapped address
    included), nothing else; a bad entry says how to write one."""
    policy = WebhookPolicy("hooks.internal, *.svc.local", "10.0.0.0/8, fd00::/8")
    assert policy.address_refusal("hooks.internal", "10.1.2.3") is None
    assert policy.address_refusal("a.svc.local", "::ffff:10.9.9.9") is None
    assert policy.address_refusal("a.svc.local", "fd00::7") is None
    assert policy.address_refusal("hooks.internal", "127.0.0.1") is not None
    assert policy.address_refusal("hooks.internal", "192.168.1.1") is not None
    with pytest.raises(ValueError, match=r"'10\.0\.0/33' is not a network"):
        WebhookPolicy("h.example", "10.0.0/33")


@pytest.mark.parametrize(("address", "kind"), [
    ("64:ff9b::a9fe:a9fe", "link-local (IPv4 169.254.169.254 inside)"),  # NAT64
    ("64:ff9b::a00:1", "private (IPv4 10.0.0.1 inside)"),
    ("::a9fe:a9fe", "link-local (IPv4 169.254.169.254 inside)"),  # IPv4-compatible
    ("::7f00:1", "loopback (IPv4 127.0.0.1 inside)"),
    ("2002:a9fe:a9fe::", "link-local (IPv4 169.254.169.254 inside)"),  # 6to4
    ("2002:c0a8:101::1", "private (IPv4 192.168.1.1 inside)"),
    ("fec0::1", "site-local"),
    ("64:ff9b:1::a00:1", "reserved"),  # RFC 8215 local-use NAT64
])
def test_ipv4_wrapped_in_ipv6_and_site_local_are_refused(address: str, kind: str) -> None:
    """NAT64, IPv4-compatible, 6to4 (their IPv4 unwrapped and checked) and site-local count
    as what they are, not as global."""
    refusal = WebhookPolicy("*.example.com").address_refusal("a.example.com", address)
    assert refusal is not None and refusal.startswith(
        f"webhook host 'a.example.com' resolves to the {kind} address ")


def test_ipv4_wrapped_public_addresses_stay_callable() -> None:
    """A public IPv4 behind NAT64 or 6to4 is public (IPv6-only networks reach it that way)."""
    policy = WebhookPolicy("*.example.com")
    for address in ("64:ff9b::5db8:d822", "2002:5db8:d822::1", "2606:4700::1111"):
        assert policy.address_refusal("a.example.com", address) is None, address


def test_http_webhooks_need_an_explicit_http_entry() -> None:
    """https:// by default; http:// only for hosts the allow-list writes as http://host (or
    http://*.domain), everywhere the policy is checked (runners, gateway, webhooks)."""
    policy = WebhookPolicy("hooks.example.com, http://hooks.internal, http://*.svc.local")
    assert policy.refusal("http://hooks.example.com/x") == (
        "webhook 'hooks.example.com' is http://, which would send results in cleartext; use "
        "https://, or ask the operator to allow 'http://hooks.example.com' in "
        "GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS")
    assert policy.refusal("https://hooks.example.com/x") is None
    assert policy.refusal("http://hooks.internal:8080/x") is None
    assert policy.refusal("https://hooks.internal/x") is None
    assert policy.refusal("http://a.svc.local/x") is None
    assert policy.refusal("http://svc.local/x") is not None  # a wildcard is not its apex


def test_the_dispatcher_refuses_a_bad_private_network_setting(settings: Settings) -> None:
    """A typo in GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS stops the processor at start, saying which."""
    from graphwire.topics.errors import GraphwireError

    with pytest.raises(GraphwireError, match=r"'10\.0\.0\.0/99' is not a network"):
        WebhookDispatcher(hook_settings(settings, webhook_private_cidrs="10.0.0.0/99"))


# -- fair shares of the in-flight slots ---------------------------------------------------------


class Arrivals:
    """Receivers on a server port each, recording arrivals in one list, in order, and the most
    requests in progress at once over all of them."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.concurrent = self.most_concurrent = 0
        self.delay_s: dict[str, float] = {}
        self._runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}

    async def serve(self, name: str, delay_s: float) -> str:
        self.delay_s[name] = delay_s

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self.order.append(f"{name}:{orjson.loads(body)['request_id']}")
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
            try:
                await asyncio.sleep(self.delay_s[name])
            finally:
                self.concurrent -= 1
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/{name}"

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


async def test_a_slow_receiver_does_not_hold_up_a_fast_one(
    topics: TopicNames, settings: Settings, bootstrap: str,
) -> None:
    """24 results for a receiver answering 200 after 1 s (8 shared slots, 4 per host, 2
    connections), then one for a fast receiver on the same partition: the fast one arrives
    before the slow host's fifth result, and all 25 are delivered."""
    arrivals = Arrivals()
    try:
        slow = await arrivals.serve("slow", 1.0)
        fast = await arrivals.serve("fast", 0.0)
        hooks = hook_settings(settings, webhook_max_in_flight=8, webhook_host_max_in_flight=4,
                              webhook_per_host=2, webhook_timeout_s=5.0, webhook_slow_s=4.0)
        async with WebhookDispatcher(hooks) as dispatcher:
            await produce(bootstrap, topics.results, [
                (b"k", *result_message(f"s{i}", slow)[1:]) for i in range(24)])
            await produce(bootstrap, topics.results, [(b"k", *result_message("f", fast)[1:])])
            await until(lambda: "fast:f" in arrivals.order, 60, "the fast delivery")
            await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 25,
                                  timeout=90)
            assert sample(dispatcher, "graphwire_webhook_deliveries_total",
                          outcome="delivered") == 25
    finally:
        await arrivals.close()
    assert arrivals.order.index("fast:f") <= 4, arrivals.order
    assert sorted(arrivals.order) == sorted(["fast:f", *(f"slow:s{i}" for i in range(24))])


async def test_slow_answers_count_against_their_host(
    topics: TopicNames, settings: Settings, bootstrap: str,
) -> None:
    """A receiver answering 200 after 0.4 s with GRAPHWIRE_WEBHOOK_SLOW_S=0.2: after 3 slow
    answers its host is down, so the rest of its 12 results are probed one at a time or
    dead-lettered at once with the reason; each result ends delivered or dead-lettered."""
    arrivals = Arrivals()
    try:
        slow = await arrivals.serve("slow", 0.4)
        hooks = hook_settings(settings, webhook_per_host=2, webhook_host_max_in_flight=4,
                              webhook_timeout_s=5.0, webhook_slow_s=0.2,
                              webhook_host_down_after=3)
        async with Collector(bootstrap, topics.dlq) as out, \
                WebhookDispatcher(hooks) as dispatcher:
            await produce(bootstrap, topics.results,
                          [(b"k", *result_message(f"s{i}", slow)[1:]) for i in range(12)])
            await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 12,
                                  timeout=60)
            delivered = sample(dispatcher, "graphwire_webhook_deliveries_total",
                               outcome="delivered")
            dead = sample(dispatcher, "graphwire_webhook_deliveries_total",
                          outcome="dead_lettered")
            assert sample(dispatcher, "graphwire_webhook_slow_answers_total") == delivered
            assert sample(dispatcher, "graphwire_webhook_hosts_down") == 1
            await out.wait_count(topics.dlq, int(dead))
    finally:
        await arrivals.close()
    assert delivered + dead == 12 and dead >= 1 and len(arrivals.order) == delivered
    reasons = {dict(r.headers)[HEADER_ERROR].decode() for r in out.records[topics.dlq]}
    assert reasons == {f"webhook {slow}: the host is down (3 failed or slow (over 0.2s) attempts "
                       "in a row; this delivery made 0 attempts); fix the receiver, then "
                       "`graphwire dlq replay` the dead letters"}


async def test_a_full_host_queue_dead_letters_at_once(
    topics: TopicNames, settings: Settings, bootstrap: str,
) -> None:
    """One slot and two queued results per host: of 6 results fetched together for a slow host,
    3 are delivered and 3 dead-lettered at once with the reason, none held meanwhile."""
    arrivals = Arrivals()
    try:
        slow = await arrivals.serve("slow", 1.0)
        hooks = hook_settings(settings, webhook_per_host=1, webhook_host_max_in_flight=1,
                              webhook_host_max_queued=2, webhook_timeout_s=5.0,
                              webhook_slow_s=4.0)
        async with Collector(bootstrap, topics.dlq) as out, WebhookDispatcher(hooks):
            await produce(bootstrap, topics.results,
                          [(b"k", *result_message(f"s{i}", slow)[1:]) for i in range(6)])
            await out.wait_count(topics.dlq, 3, timeout=30)
            assert len(arrivals.order) == 1  # the dead letters did not wait for the slow host
            await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 6,
                                  timeout=60)
    finally:
        await arrivals.close()
    assert arrivals.order == ["slow:s0", "slow:s1", "slow:s2"]
    letters = out.records[topics.dlq]
    assert [orjson.loads(r.value or b"")["request_id"] for r in letters] == ["s3", "s4", "s5"]
    assert {dict(r.headers)[HEADER_ERROR].decode() for r in letters} == {
        f"webhook {slow}: its host already has 2 results waiting "
        "(GRAPHWIRE_WEBHOOK_HOST_MAX_QUEUED, or a tenth of GRAPHWIRE_WEBHOOK_MAX_QUEUED_BYTES), "
        "its receiver does not keep up; `graphwire dlq replay` the dead letter once it does"}


async def test_a_rebalance_with_results_queued_loses_none(
    topics: TopicNames, settings: Settings, bootstrap: str,
) -> None:
    """A second processor joins while the first has results of a slow host queued: the revoked
    partitions' queued results go to the new owner, every one of 40 results is delivered and
    committed, and both end with nothing in flight or queued."""
    arrivals = Arrivals()
    try:
        slow = await arrivals.serve("slow", 0.5)
        hooks = hook_settings(settings, webhook_per_host=2, webhook_host_max_in_flight=2,
                              webhook_timeout_s=5.0, webhook_slow_s=4.0)
        async with WebhookDispatcher(hooks) as first:
            await produce(bootstrap, topics.results,
                          [result_message(f"s{i}", slow) for i in range(40)])
            await until(lambda: len(arrivals.order) >= 4, 60, "first deliveries")
            assert sample(first, "graphwire_webhook_queued_results") > 0
            async with WebhookDispatcher(hooks) as second:
                await until(lambda: set(arrivals.order) >= {f"slow:s{i}" for i in range(40)},
                            120, "every result")
                await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 40,
                                      timeout=60)
                for d in (first, second):
                    await until(lambda d=d: sample(d, "graphwire_webhook_queued_results") == 0
                                == d.in_flight, 30, "idle")
                assert sample(second, "graphwire_webhook_deliveries_total",
                              outcome="delivered") > 0  # partitions moved with work queued
    finally:
        await arrivals.close()
    assert set(arrivals.order) == {f"slow:s{i}" for i in range(40)}


async def test_one_caller_over_many_hosts_holds_its_share_only(
    topics: TopicNames, settings: Settings, bootstrap: str,
) -> None:
    """One caller's results for two slow hosts (4 slots and connections per host, 4 per
    caller): never more than 4 of its requests at once over both hosts, and all 16 delivered;
    requests produced to Kafka directly (no scope) are not capped per caller."""
    arrivals = Arrivals()
    try:
        one, two = await arrivals.serve("one", 0.5), await arrivals.serve("two", 0.5)
        hooks = hook_settings(settings, webhook_per_host=4, webhook_host_max_in_flight=4,
                              webhook_caller_max_in_flight=4, webhook_timeout_s=5.0,
                              webhook_slow_s=4.0)
        async with WebhookDispatcher(hooks):
            await produce(bootstrap, topics.results, [
                result_message(f"{SCOPE_A}.{i}", one if i % 2 else two) for i in range(16)])
            await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 16,
                                  timeout=60)
            capped, arrivals.most_concurrent = arrivals.most_concurrent, 0
            await produce(bootstrap, topics.results, [
                result_message(f"raw-{i}", one if i % 2 else two) for i in range(16)])
            await until_committed(bootstrap, hooks.webhook_group_id, topics.results, 32,
                                  timeout=60)
    finally:
        await arrivals.close()
    assert (capped, arrivals.most_concurrent) == (4, 8)
    assert len(arrivals.order) == 32
