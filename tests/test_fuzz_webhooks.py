"""Fuzzing the webhook processor's input against the real broker: result records with bad
webhook headers, huge and deep bodies, NUL and control characters, values that are not results.
The rule under test: every record ends delivered, dead-lettered with its reason, or skipped
(no webhook), and the processor stays ready and keeps delivering."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from graphwire.processors.settings import Settings
from graphwire.processors.webhooks.dispatcher import WebhookDispatcher
from graphwire.topics.codec import HEADER_ERROR, result_dict
from graphwire.topics.specs import TopicNames
from graphwire.topics.webhooks import HEADER_WEBHOOK
from tests.kafka_helpers import Collector, produce
from tests.test_webhooks import hook_settings, sample, until_committed

pytestmark = pytest.mark.integration

NOT_A_RESULT = "not a result (no JSON object with a request_id)"
NOT_A_HEADER = "cannot be sent as a header"


class Sink:
    """A receiver taking bodies up to 16 MiB, recording each body's request_id and size."""

    def __init__(self) -> None:
        self.request_ids: list[object] = []
        self.sizes: list[int] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.sizes.append(len(body))
        self.request_ids.append(orjson.loads(body)["request_id"])
        return web.Response(status=204)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    found = Sink()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield found
    await runner.cleanup()


def result(rid: object, **fields: object) -> bytes:
    body = result_dict("x", "echo", "success", output={"text": "ok"})
    return orjson.dumps({**body, "request_id": rid, **fields})


def deep(depth: int) -> bytes:
    return b'{"request_id":"deep%d","output":' % depth + b"[" * depth + b"]" * depth + b"}"


async def test_no_result_record_stops_the_webhook_processor(
    topics: TopicNames, settings: Settings, sink: Sink, bootstrap: str,
) -> None:
    """Each hostile record ends as listed (delivered, a dead letter with that reason, or
    skipped), none as an internal error, and the processor is ready throughout."""
    url = sink.url.encode()
    delivered = {  # key -> (value, webhook header)
        b"first": (result("first"), url),
        b"control-chars-in-output": (result("ctl", output="\u0000\u001b[31m\r\n\u2028"), url),
        b"unicode-request-id": (result("ünï✓-42"), url),
        b"deep-1000": (deep(1000), url),
        b"huge-body": (result("huge", output="x" * (4 * 1024 * 1024 + 1)), url),
        b"last": (result("last"), url),
    }
    dead = {  # key -> (value, webhook header, what the reason says)
        b"url-not-utf8": (result("r"), b"\xff\xfe\x00", "webhook must be an http:// or https://"),
        b"url-nul": (result("r"), url + b"/a\x00b", "must not contain spaces or control"),
        b"url-crlf": (result("r"), url + b"/a\r\nX-Evil: 1", "must not contain spaces or control"),
        b"url-huge": (result("r"), url + b"/" + b"a" * 100_000, "longer than 2048 characters"),
        b"url-bad-port": (result("r"), b"http://127.0.0.1:99999/x", "not a valid URL"),
        b"url-not-allowed": (result("r"), b"https://169.254.169.254/", "is not in GRAPHWIRE_"),
        b"deep-5000": (deep(5000), url, NOT_A_RESULT),
        b"not-json": (b"\xff\x00garbage", url, NOT_A_RESULT),
        b"json-array": (b"[1, 2]", url, NOT_A_RESULT),
        b"request-id-number": (result(5), url, NOT_A_RESULT),
        b"request-id-nul": (result("a\u0000b"), url, NOT_A_HEADER),
        b"request-id-newline": (result("a\r\nX-Evil: 1"), url, NOT_A_HEADER),
        b"request-id-huge": (result("r" * 5000), url, NOT_A_HEADER),
        b"request-id-empty": (result(""), url, NOT_A_HEADER),
    }
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (key, value, [(HEADER_WEBHOOK, header)])
        for key, (value, header) in list(delivered.items())[:-1]]
    records += [(key, value, [(HEADER_WEBHOOK, header)])
                for key, (value, header, _) in dead.items()]
    records += [(b"tombstone", None, [(HEADER_WEBHOOK, url)]),
                (b"empty-url", result("skip"), [(HEADER_WEBHOOK, b"")])]
    total = len(records) + 1
    hooks = hook_settings(settings)
    async with Collector(bootstrap, topics.dlq) as out, \
            WebhookDispatcher(hooks) as dispatcher:
        await produce(bootstrap, topics.results, records)
        await out.wait_count(topics.dlq, len(dead) + 1, timeout=60)
        assert dispatcher.readiness() == {"Kafka": "ok"}
        await produce(bootstrap, topics.results,
                      [(b"last", delivered[b"last"][0], [(HEADER_WEBHOOK, url)])])
        await until_committed(bootstrap, hooks.webhook_group_id, topics.results, total,
                              timeout=60)
        assert (dispatcher.readiness(), dispatcher.failure) == ({"Kafka": "ok"}, None)
        assert sample(dispatcher, "graphwire_webhook_deliveries_total", outcome="skipped") == 1
    reasons = {r.key: dict(r.headers)[HEADER_ERROR].decode() for r in out.records[topics.dlq]}
    assert set(reasons) == {*dead, b"tombstone"}
    assert NOT_A_RESULT in reasons[b"tombstone"]
    for key, (_, _, expected) in dead.items():
        assert expected in reasons[key], (key, reasons[key])
    assert not [r for r in reasons.values() if "internal error" in r]
    assert sorted(map(str, sink.request_ids)) == sorted(
        ["first", "ctl", "ünï✓-42", "deep1000", "huge", "last"])
    assert max(sink.sizes) > 4 * 1024 * 1024
