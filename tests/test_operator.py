"""The operator scope (issue 24): runs produced straight to Kafka carry no caller's scope; an
operator (a key with ``"role": "operator"``, or anyone with GRAPHWIRE_GATEWAY_AUTH=false) sees
and acts on them in ``/workflow`` and the inspector, another caller's key does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from graphwire.processors.gateway.auth import hash_key
from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import KEYS, A
from tests.helpers import eventually
from tests.kafka_helpers import Collector, encode, produce, request
from tests.ui_helpers import stack

pytestmark = pytest.mark.integration

KEY_OPERATOR = "gw_test_key_operator_0123456789"
OPERATOR = {"X-API-Key": KEY_OPERATOR}
OPERATOR_KEYS = SecretStr(orjson.dumps([
    *KEYS, {"name": "ops", "key_sha256": hash_key(KEY_OPERATOR), "graphs": ["echo"],
            "role": "operator"}]).decode())


async def listed(http: Any, headers: dict[str, str], **params: str) -> list[str] | None:
    """The request ids of the inspector's Runs page for ``headers`` (None until 200)."""
    page = await http.get("/ui/api/runs", headers=headers, params=params)
    return [r["request_id"] for r in page.json()["runs"]] if page.status_code == 200 else None


def sse_events(text: str) -> list[str]:
    """The ``event:`` names of an SSE body, in order."""
    return [line.removeprefix("event: ") for line in text.splitlines()
            if line.startswith("event: ")]


async def test_an_operator_key_sees_and_cancels_kafka_runs_another_key_does_not(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path,
) -> None:
    """Four requests produced to Kafka (no scope): ``k-done`` finishes, ``k-slow`` runs 8 s on
    thread ``kt``, ``k-queued`` and ``k-ui`` wait behind it. The operator's key reads k-done's
    status, stream and inspector page, lists all four (newest first) in the inspector and in
    thread kt, cancels k-queued with the API and k-ui from its inspector page (both 202
    ``pending``), and both end ``cancelled``; svc-a's key gets 404 for each and lists none."""
    async with stack(worker_env, tmp_path, gateway_api_keys=OPERATOR_KEYS) as s, \
            Collector(worker_env["GRAPHWIRE_BOOTSTRAP_SERVERS"], topics.results) as out:
        bootstrap = worker_env["GRAPHWIRE_BOOTSTRAP_SERVERS"]
        await produce(bootstrap, topics.requests, [(b"k-done", encode(request("k-done")))])
        await out.wait_until(lambda: len(out.values(topics.results)) == 1, timeout=60)
        for rid, seconds in (("k-slow", 8), ("k-queued", 0), ("k-ui", 0)):  # 3 timestamps
            await produce(bootstrap, topics.requests, [(b"kt", encode(request(
                rid, graph="slow", thread_id="kt", input={"seconds": seconds})))])

        async def all_four() -> list[str] | None:
            found = await listed(s.http, OPERATOR)
            return found if found is not None and len(found) == 4 else None

        runs = await eventually(all_four, 30)
        thread = await listed(s.http, OPERATOR, thread="kt")
        status = await s.http.get("/workflow/status/k-done", headers=OPERATOR)
        stream = await s.http.get("/workflow/stream/k-done", headers=OPERATOR)
        page = await s.http.get("/ui/api/runs/k-done", headers=OPERATOR)
        fragment = await s.http.get("/ui/fragments/runs/k-done", headers=OPERATOR)
        hidden = [
            (await s.http.get("/workflow/status/k-done", headers=A)).status_code,
            (await s.http.get("/workflow/stream/k-done", headers=A)).status_code,
            (await s.http.get("/ui/api/runs/k-done", headers=A)).status_code,
            (await s.http.get("/ui/api/threads/kt", headers=A)).status_code,
            (await s.http.post("/workflow/cancel/k-queued", headers=A)).status_code,
        ]
        theirs = await listed(s.http, A)
        cancel = await s.http.post("/workflow/cancel/k-queued", headers=OPERATOR)
        queued_page = (await s.http.get("/ui/api/runs/k-ui", headers=OPERATOR)).json()
        await s.http.get("/ui/runs")  # the page sets the CSRF cookie
        csrf = {"X-CSRF-Token": s.http.cookies["graphwire_ui_csrf"]}
        ui_cancel = await s.http.post(queued_page["cancel_url"], headers={**OPERATOR, **csrf})
        await out.wait_until(lambda: len(out.values(topics.results)) == 4, timeout=60)
        results = {r["request_id"]: r for r in out.values(topics.results)}
    assert runs == ["k-ui", "k-queued", "k-slow", "k-done"]
    assert thread == ["k-ui", "k-queued", "k-slow"]
    assert (status.status_code, status.json()["status"]) == (200, "success")
    assert stream.status_code == 200
    assert sse_events(stream.text) == ["run_started", "node", "node", "node",
                                        "run_finished", "result"]
    assert (page.status_code, page.json()["request_id"], page.json()["status"]) == (
        200, "k-done", "success")
    assert fragment.status_code == 200 and ">k-done</code>" in fragment.text
    assert hidden == [404, 404, 404, 404, 404]
    assert theirs == []
    assert (cancel.status_code, cancel.json()) == (202, {
        "request_id": "k-queued", "action": "interrupt", "state": "pending",
        "status_url": "/workflow/status/k-queued"})
    assert (queued_page["status"], queued_page["cancel_url"]) == (
        "accepted", "/ui/api/runs/k-ui/cancel")
    assert (ui_cancel.status_code, ui_cancel.json()["state"]) == (202, "pending")
    assert [results[r]["status"] for r in ("k-done", "k-slow", "k-queued", "k-ui")] == [
        "success", "success", "cancelled", "cancelled"]


async def test_with_auth_off_the_inspector_lists_runs_produced_to_kafka(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path,
) -> None:
    """GRAPHWIRE_GATEWAY_AUTH=false: a request produced straight to Kafka appears in the
    inspector's Runs page and its status, next to one submitted over HTTP (whole ids shown)."""
    async with stack(worker_env, tmp_path, gateway_auth=False) as s:
        bootstrap = worker_env["GRAPHWIRE_BOOTSTRAP_SERVERS"]
        await produce(bootstrap, topics.requests, [(b"raw-1", encode(request("raw-1")))])
        mine = (await s.http.post("/workflow/execute?wait=true", json={
            "workflow_name": "echo", "input_data": {"text": "hi"}})).json()["request_id"]

        async def both() -> list[str] | None:
            found = await listed(s.http, {})
            return found if found is not None and len(found) == 2 else None

        runs = await eventually(both, 30)
        status = await s.http.get("/workflow/status/raw-1")
        fragment = await s.http.get("/ui/fragments/runs")
    assert sorted(runs or []) == sorted(["raw-1", mine])
    assert (status.status_code, status.json()["status"]) == (200, "success")
    assert f">{mine}</a>" in fragment.text and ">raw-1</a>" in fragment.text


async def test_a_jwt_with_the_operator_role_sees_kafka_runs(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path,
) -> None:
    """A JWT whose ``role`` claim is ``operator`` reads a Kafka-produced run's status; one
    whose role is another, or a list without ``operator``, gets 404; a list with it, 200."""
    import time

    import jwt

    from tests.gateway_helpers import JWT_SECRET

    def bearer(role: Any) -> dict[str, str]:
        claims = {"sub": "person", "graphs": ["echo"], "exp": int(time.time() + 300),
                  "role": role}
        return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}

    async with stack(worker_env, tmp_path) as s:
        bootstrap = worker_env["GRAPHWIRE_BOOTSTRAP_SERVERS"]
        await produce(bootstrap, topics.requests, [(b"j-1", encode(request("j-1")))])

        async def done() -> int | None:
            found = await s.http.get("/workflow/status/j-1", headers=bearer("operator"))
            return 200 if found.status_code == 200 else None

        await eventually(done, 30)
        codes = [(await s.http.get("/workflow/status/j-1", headers=bearer(role))).status_code
                 for role in ("operator", "viewer", ["viewer"], ["viewer", "operator"])]
    assert codes == [200, 404, 404, 200]
