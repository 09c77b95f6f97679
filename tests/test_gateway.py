"""The HTTP gateway end to end: real broker, worker, Redis (and the audit sink for status and
stream backfill)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL
from tests.gateway_helpers import (
    KEY_ECHO,
    KEY_LIMITED,
    A,
    gateway_settings,
    serve,
    token,
)
from tests.helpers import eventually, wait_rows
from tests.kafka_helpers import Collector, WorkerProcess, wait_for_members

pytestmark = pytest.mark.integration


def body(graph: str = "pipeline", **extra: Any) -> dict[str, Any]:
    return {"workflow_name": graph, "input_data": {"text": "Hello Gateway"}, **extra}


async def test_execute_wait_invoke_status_and_principal(
    worker: WorkerProcess, worker_env: dict[str, str], bootstrap: str
) -> None:
    """POST /workflow/execute answers 202 with a request_id in the caller's 128-bit scope and its
    status and stream URLs, and the status turns success (from redis, 1 attempt); execute?wait
    returns "hello gateway" with principal api_key svc-a; invoke replaces a spoofed principal and
    keeps other metadata; an unknown id is 404; a wait timing out is 202 with the status URL;
    another caller gets 404 for this run's status and stream."""
    await wait_for_members(bootstrap, worker_env["GRAPHWIRE_GROUP_ID"], 1)
    async with serve(gateway_settings(worker_env)) as http:
        accepted = await http.post("/workflow/execute", json=body(), headers=A)
        assert accepted.status_code == 202, accepted.text
        rid = accepted.json()["request_id"]
        scope, _, own = rid.partition(".")
        assert len(scope) == 32 and len(own) == 32  # the caller's 128-bit namespace, a uuid
        assert accepted.json() == {"request_id": rid, "status": "accepted",
                                   "status_url": f"/workflow/status/{rid}",
                                   "stream_url": f"/workflow/stream/{rid}"}
        status = await eventually(
            lambda: http.get(f"/workflow/status/{rid}", headers=A), 30,
            what=f"{rid} succeeded",
            until=lambda got: got.status_code == 200 and got.json()["status"] == "success")
        assert (status.json()["status"], status.json()["source"]) == ("success", "redis")
        assert status.json()["attempts"] == 1

        waited = await http.post("/workflow/execute?wait=true", json=body(), headers=A)
        assert waited.status_code == 200, waited.text
        result = waited.json()
        assert (result["status"], result["output"]["text"]) == ("success", "hello gateway")
        assert result["metadata"]["principal"] == {"type": "api_key", "name": "svc-a"}

        invoked = await http.post("/workflow/invoke", headers=A,
                                  json=body("echo", metadata={"principal": "spoofed", "x": 1}))
        assert invoked.status_code == 200
        assert invoked.json()["metadata"] == {"x": 1,
                                              "principal": {"type": "api_key", "name": "svc-a"}}
        missing = await http.get(f"/workflow/status/{scope}.never-submitted", headers=A)
        assert (missing.status_code, missing.json()) == (
            404, {"detail": f"unknown request '{scope}.never-submitted'"}
        )
        slow = await http.post("/workflow/execute?wait=true&timeout=0.3", headers=A,
                               json=body("slow", input_data={"seconds": 2}))
        assert slow.status_code == 202  # accepted, still running: where to look, no 5xx
        assert slow.json()["status_url"] == f"/workflow/status/{slow.json()['request_id']}"
        other = {"Authorization": f"Bearer {token('someone-else', ['*'])}"}
        for path in (f"/workflow/status/{rid}", f"/workflow/stream/{rid}"):
            hidden = await http.get(path, headers=other)  # another caller's run: not found
            assert (hidden.status_code, hidden.json()) == (
                404, {"detail": f"unknown request '{rid}'"}
            )


async def test_auth_matrix(worker: WorkerProcess, worker_env: dict[str, str]) -> None:
    """Seven bad credentials get 401 or 403 with their exact detail (no credentials, unknown key,
    a key or JWT not allowed the graph, an expired or wrongly signed JWT, Basic auth), each 401
    with ``WWW-Authenticate: Bearer``; a JWT allowed pipeline runs as jwt user-7; the metrics count
    5 401s and 2 403s."""
    async with serve(gateway_settings(worker_env)) as http:
        cases = [
            ({}, 401, "send an API key (X-API-Key) or a JWT (Authorization: Bearer ...)"),
            ({"X-API-Key": "gw_wrong"}, 401, "unknown API key"),
            ({"X-API-Key": KEY_ECHO}, 403, "svc-echo may not run 'pipeline'"),
            ({"Authorization": f"Bearer {token('u1', ['*'], expires_in=-10)}"}, 401,
             "the JWT has expired"),
            ({"Authorization": f"Bearer {token('u1', ['*'], secret='x' * 40)}"}, 401,
             "invalid JWT (InvalidSignatureError)"),
            ({"Authorization": f"Bearer {token('u1', ['echo'])}"}, 403,
             "u1 may not run 'pipeline'"),
            ({"Authorization": "Basic dXNlcjpwYXNz"}, 401,
             "send an API key (X-API-Key) or a JWT (Authorization: Bearer ...)"),
        ]
        for headers, code, detail in cases:
            response = await http.post("/workflow/execute", json=body(), headers=headers)
            assert (response.status_code, response.json()["detail"]) == (code, detail), headers
            if code == 401:
                assert response.headers["www-authenticate"] == "Bearer"
        ok = await http.post("/workflow/execute?wait=true", json=body(), headers={
            "Authorization": f"Bearer {token('user-7', ['pipeline'])}"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["metadata"]["principal"] == {"type": "jwt", "name": "user-7"}
        metrics = (await http.get("/metrics")).text
        assert 'graphwire_gateway_auth_failures_total{status="401"} 5.0' in metrics
        assert 'graphwire_gateway_auth_failures_total{status="403"} 2.0' in metrics


async def test_rate_limit_boundary(worker: WorkerProcess, worker_env: dict[str, str]) -> None:
    """A key limited to 5 requests a minute gets 5 answers (404) then 429 "rate limit of 5
    requests per minute reached" with Retry-After between 1 and 60; another key is not limited."""
    headers = {"X-API-Key": KEY_LIMITED}
    async with serve(gateway_settings(worker_env)) as http:
        codes = [(await http.get("/workflow/status/x", headers=headers)).status_code
                 for _ in range(5)]
        assert codes == [404] * 5  # allowed (and unknown)
        refused = await http.get("/workflow/status/x", headers=headers)
        assert refused.status_code == 429
        assert refused.json()["detail"] == "rate limit of 5 requests per minute reached"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        other = await http.get("/workflow/status/x", headers=A)  # limits are per principal
        assert other.status_code == 404


async def test_idempotency_key_twice_is_one_run(
    worker: WorkerProcess, worker_env: dict[str, str], bootstrap: str, topics: TopicNames
) -> None:
    """The same Idempotency-Key twice from one caller returns the same answer for one run (id ending
    ".order-42"), started once and with one result; the same key from another caller is that
    caller's own run (a different id, principal jwt user-9); a key with a different request_id is
    422."""
    headers = {**A, "Idempotency-Key": "order-42"}
    other = {"Authorization": f"Bearer {token('user-9', ['*'])}", "Idempotency-Key": "order-42"}
    async with Collector(bootstrap, topics.results, topics.events) as out, serve(
        gateway_settings(worker_env)
    ) as http:
        first = await http.post("/workflow/execute?wait=true", json=body(), headers=headers)
        second = await http.post("/workflow/execute?wait=true", json=body(), headers=headers)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        rid = first.json()["request_id"]
        assert rid.endswith(".order-42")
        # the same key from another caller is that caller's own run, not a peek at this one
        theirs = await http.post("/workflow/execute?wait=true", json=body(), headers=other)
        assert theirs.status_code == 200
        assert theirs.json()["request_id"].endswith(".order-42")
        assert theirs.json()["request_id"] != rid
        assert theirs.json()["metadata"]["principal"] == {"type": "jwt", "name": "user-9"}
        clash = await http.post("/workflow/execute", json=body(request_id="other"),
                                headers=headers)
        assert clash.status_code == 422
        await asyncio.sleep(1)
    started = [e["request_id"] for e in out.values(topics.events) if e["type"] == "run_started"]
    assert sorted(started) == sorted([rid, theirs.json()["request_id"]])
    assert [r["request_id"] for r in out.values(topics.results)].count(rid) == 1


def ids(*events: int) -> list[str]:
    """SSE ids of a run's first try (attempt 1, try 0: positions from 2**32)."""
    return [str(2**32 + i) for i in events]


def sse(text: str) -> list[dict[str, Any]]:
    frames = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            fields["data"] = orjson.loads(fields["data"])
            frames.append(fields)
    return frames


async def test_stream_and_reconnect_with_last_event_id(
    worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """POST /workflow/stream sends the 5 events with ids 2**32 + 0..4, then the result without an
    id; reconnecting with Last-Event-ID 2**32 + 2 sends events 3 and 4 and the result (count 2);
    after the last event only the result; an unreadable Last-Event-ID replays everything."""
    async with serve(gateway_settings(worker_env)) as http:
        streamed = await http.post("/workflow/stream", json=body(), headers=A)
        assert streamed.headers["content-type"].startswith("text/event-stream")
        frames = sse(streamed.text)
        assert [f.get("id") for f in frames] == [*ids(0, 1, 2, 3, 4), None]
        assert [f["event"] for f in frames] == ["run_started", "node", "node", "node",
                                                "run_finished", "result"]
        rid = frames[-1]["data"]["request_id"]
        again = await http.get(f"/workflow/stream/{rid}", headers={**A, "Last-Event-ID": ids(2)[0]})
        frames = sse(again.text)
        assert [f.get("id") for f in frames] == [*ids(3, 4), None]
        assert frames[-1]["data"]["output"]["count"] == 2
        done = await http.get(f"/workflow/stream/{rid}", headers={**A, "Last-Event-ID": ids(4)[0]})
        assert [f["event"] for f in sse(done.text)] == ["result"]  # after the last: the result
        garbage = await http.get(f"/workflow/stream/{rid}",
                                 headers={**A, "Last-Event-ID": "9" * 5000})
        assert [f.get("id") for f in sse(garbage.text)] == [*ids(0, 1, 2, 3, 4), None]


async def test_batch_validation_body_limit_health(
    worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """With a 2,048-byte body limit: a waited batch of 3 echoes returns their outputs in order;
    a missing workflow_name or an extra field is 422; a body over the limit is 413, with or
    without Content-Length; a batch with a graph the key may not run is 403, one of 6 runs over a
    limit of 5 is 429; /health is alive, /ready 200 with kafka, redis and postgresql ok, the
    OpenAPI lists /workflow/execute, and the metrics count 1 batch 200 and 2 execute 422."""
    async with serve(gateway_settings(worker_env, gateway_max_body_bytes=2048)) as http:
        batch = await http.post("/workflow/batch?timeout=60", headers=A, json={
            "wait": True,
            "requests": [body("echo", input_data={"text": f"b{i}"}) for i in range(3)],
        })
        assert batch.status_code == 200, batch.text
        assert [r["output"] for r in batch.json()["results"]] == [{"text": f"b{i}"}
                                                                 for i in range(3)]
        invalid = await http.post("/workflow/execute", headers=A, json={"input_data": {}})
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["loc"] == ["body", "workflow_name"]
        extra = await http.post("/workflow/execute", headers=A, json=body(surprise=1))
        assert extra.status_code == 422
        big = await http.post("/workflow/execute", headers=A,
                              json=body(input_data={"text": "x" * 5000}))
        assert (big.status_code, big.json()) == (413, {"detail": "request body over 2048 bytes"})

        async def chunks() -> Any:  # no Content-Length: the limit counts what streams in
            yield b'{"workflow_name": "echo", "input_data": {"text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}}'

        chunked = await http.post("/workflow/execute", headers={**A, "Content-Type":
                                  "application/json"}, content=chunks())
        assert (chunked.status_code, chunked.json()) == (
            413, {"detail": "request body over 2048 bytes"}
        )
        forbidden = await http.post("/workflow/batch", headers=A, json={"requests": [
            body("echo"), body("chat")]})
        assert forbidden.status_code == 403  # svc-a may not run chat: nothing was submitted
        too_many = await http.post("/workflow/batch", headers={"X-API-Key": KEY_LIMITED},
                                   json={"requests": [body("echo")] * 6})
        assert too_many.status_code == 429  # six runs against a limit of five a minute
        assert (await http.get("/health")).json() == {"status": "alive"}
        ready = await http.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["dependencies"] == {"kafka": "ok", "redis": "ok", "postgresql": "ok"}
        docs = await http.get("/openapi.json")
        assert "/workflow/execute" in docs.json()["paths"]
        metrics = (await http.get("/metrics")).text
        assert ('graphwire_gateway_requests_total{method="POST",route="/workflow/batch",'
                'status="200"} 1.0') in metrics
        assert ('graphwire_gateway_requests_total{method="POST",route="/workflow/execute",'
                'status="422"} 2.0') in metrics


async def test_cors_only_for_configured_origins(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """A CORS preflight from the configured origin https://app.example is allowed with that
    origin; one from another origin gets no Access-Control-Allow-Origin header."""
    settings = gateway_settings(worker_env, gateway_cors_origins="https://app.example")
    async with serve(settings) as http:
        preflight = {"Access-Control-Request-Method": "POST"}
        allowed = await http.options("/workflow/execute",
                                     headers={**preflight, "Origin": "https://app.example"})
        assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
        other = await http.options("/workflow/execute",
                                   headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_another_replica_backfills_the_stream_and_status_from_the_audit_table(
    worker: WorkerProcess, worker_env: dict[str, str], bootstrap: str, tmp_path: Path
) -> None:
    """A reconnect that lands on a gateway that never saw the run: earlier events come from
    the audit table, the result from the runner's Redis marker; with Redis forgetting the run,
    status comes from the audit table too."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    audit_env = {**worker_env, "GRAPHWIRE_AUDIT_SCHEMA": prefix,
                 "GRAPHWIRE_AUDIT_GROUP_ID": f"{prefix}-audit",
                 "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.1", "GRAPHWIRE_AUDIT_HTTP_PORT": "0"}
    sink = WorkerProcess(audit_env, "--migrate", command="audit",
                         log_path=tmp_path / "sink.log").start()
    settings = gateway_settings(worker_env, audit_schema=prefix)
    try:
        async with serve(settings) as first:
            done = await first.post("/workflow/execute?wait=true", json=body(), headers=A)
            rid = done.json()["request_id"]
        conn = await asyncpg.connect(TEST_DATABASE_URL, server_settings={"search_path": prefix})
        try:
            sql = f"SELECT count(*) FROM graphwire_events WHERE request_id = '{rid}'"
            await wait_rows(conn, sql, 5)
        finally:
            await conn.close()
        async with serve(settings) as second:  # a new process: it never saw the run
            again = await second.get(f"/workflow/stream/{rid}",
                                     headers={**A, "Last-Event-ID": ids(1)[0]})
            frames = sse(again.text)
            assert [f.get("id") for f in frames] == [*ids(2, 3, 4), None]
            assert [f["event"] for f in frames] == ["node", "node", "run_finished", "result"]
            assert frames[0]["data"]["node"] == "tokenize"
            assert frames[-1]["data"]["output"]["text"] == "hello gateway"
            redis = Redis.from_url(TEST_REDIS_URL)
            await redis.delete(f"{prefix}:{{{rid}}}:done", f"{prefix}:{{{rid}}}:tries")
            await redis.aclose()
            status = await second.get(f"/workflow/status/{rid}", headers=A)
            assert status.status_code == 200
            assert (status.json()["source"], status.json()["status"]) == ("postgresql", "success")
    finally:
        sink.stop()


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_fuzzed_from_its_own_openapi_document_no_server_errors(
    worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """schemathesis generates requests for every operation of /openapi.json (with a valid API
    key, so they get past authentication): none may answer 5xx."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase

    settings = gateway_settings(worker_env, gateway_wait_timeout_s=3.0,
                                gateway_rate_per_minute=100_000)
    async with serve(settings) as http:
        url = str(http.base_url).rstrip("/")

        def fuzz() -> tuple[int, list[str]]:
            schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
            calls, failures = 0, []
            for found in schema.get_all_operations():
                operation = found.ok()

                @hypothesis.settings(max_examples=15, deadline=None, database=None,
                                     suppress_health_check=list(HealthCheck),
                                     phases=[Phase.explicit, Phase.generate])
                @hypothesis.given(case=operation.as_strategy())
                def run(case: Any) -> None:
                    nonlocal calls
                    response = case.call(base_url=url, headers={**A}, timeout=30)
                    calls += 1
                    if response.status_code >= 500:
                        failures.append(f"{case.method} {case.formatted_path} -> "
                                        f"{response.status_code}: {response.text[:200]}")

                run()
            return calls, failures

        calls, failures = await asyncio.to_thread(fuzz)
        print(f"schemathesis: {calls} calls")
    assert failures == []
    assert calls >= 60  # every operation was exercised


async def test_a_batch_with_one_invalid_run_submits_none_and_charges_none(
    worker_env: dict[str, str], bootstrap: str, topics: TopicNames
) -> None:
    """``[valid, invalid]``: 422 naming the item, nothing produced, the rate limit not charged
    for the refused runs; the same caller's next valid batch goes through whole."""
    limited = {"X-API-Key": KEY_LIMITED}  # 5 requests a minute
    async with Collector(bootstrap, topics.requests) as out, serve(
        gateway_settings(worker_env)
    ) as http:
        refused = await http.post("/workflow/batch", headers=limited, json={"requests": [
            body("echo", request_id="first"), body("echo", request_id="second"),
            body("echo", request_id="third"), {"workflow_name": "echo"},  # no input, no command
        ]})
        assert (refused.status_code, refused.json()) == (422, {
            "detail": "requests[3]: give 'input' or 'command': a null input continues a "
                      "thread's run (from a breakpoint), so it needs 'thread_id'; nothing in "
                      "this batch was submitted"})
        # 1 request charged above (the call itself), so a batch of 4 fits the limit of 5
        accepted = await http.post("/workflow/batch", headers=limited, json={"requests": [
            body("echo", request_id=f"ok{i}") for i in range(4)]})
        assert accepted.status_code == 200, accepted.text
        ids = accepted.json()["request_ids"]
        await out.wait_count(topics.requests, 4)
        await asyncio.sleep(1)  # anything produced before the 422 would be here by now
    assert sorted(r["request_id"] for r in out.values(topics.requests)) == sorted(ids)
    assert [i.rpartition(".")[2] for i in ids] == ["ok0", "ok1", "ok2", "ok3"]


async def test_rate_limiter_without_redis_answers_503_and_recovers(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """A stopped Redis behind the rate limiter is 503 with Retry-After (not 500); once Redis
    is back the same request is served again."""
    from tests.private_services import PrivateRedis

    redis = PrivateRedis()
    redis.start()
    try:
        env = {**worker_env, "GRAPHWIRE_REDIS_URL": redis.url}
        async with serve(gateway_settings(env)) as http:
            before = await http.get("/workflow/status/x", headers=A)
            assert before.status_code == 404
            redis.stop()
            down = [await http.get("/workflow/status/x", headers=A),
                    await http.post("/workflow/execute", json=body(), headers=A)]
            assert [(r.status_code, r.json(), r.headers["retry-after"]) for r in down] == [
                (503, {"detail": "the rate limiter's Redis does not answer; retry in a few "
                                 "seconds"}, "5")] * 2
            redis.start()
            after = await http.get("/workflow/status/x", headers=A)
            assert (after.status_code, after.json()) == (404, {"detail": "unknown request 'x'"})
    finally:
        redis.stop()


async def test_http_methods_from_input_share_one_label(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """Requests with methods the gateway does not know count under method="unknown": one
    series however many methods clients send."""
    methods = ["PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE",
               "REPORT", "LINK"]
    async with serve(gateway_settings(worker_env)) as http:
        codes = [(await http.request(m, "/workflow/execute", headers=A)).status_code
                 for m in methods]
        assert codes == [405] * len(methods)
        assert (await http.post("/workflow/execute", headers=A, json={})).status_code == 422
        metrics = (await http.get("/metrics")).text
    series = sorted(line.rsplit(" ", 1)[0] for line in metrics.splitlines()
                    if line.startswith("graphwire_gateway_requests_total{"))
    assert series == [
        'graphwire_gateway_requests_total{method="POST",route="/workflow/execute",status="422"}',
        'graphwire_gateway_requests_total{method="unknown",route="/workflow/execute",'
        'status="405"}',
    ]
    assert ('graphwire_gateway_requests_total{method="unknown",route="/workflow/execute",'
            'status="405"} 10.0') in metrics
