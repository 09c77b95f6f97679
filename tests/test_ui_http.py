"""The run inspector over plain HTTP: CSRF on its POSTs, its security headers, development mode
without a key, and clear errors (bad cursor, no audit database)."""

from __future__ import annotations

import re
import uuid

import asyncpg
import pytest

from graphwire.processors.dev.broker import free_port
from graphwire.processors.gateway.ui.security import POLICY
from graphwire.topics.specs import TopicNames
from tests.conftest import TEST_DATABASE_URL
from tests.gateway_helpers import A, gateway_settings, serve
from tests.ui_helpers import scope_of

pytestmark = pytest.mark.integration


async def test_posts_need_the_pages_csrf_token_from_our_origin(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """The page sets an HttpOnly SameSite=Strict cookie and repeats its token in a meta tag;
    a POST passes CSRF only with that token in X-CSRF-Token and no foreign Origin."""
    async with serve(gateway_settings(worker_env)) as http:
        shell = await http.get("/ui/dead-letters")
        assert shell.status_code == 200
        cookie = shell.headers["set-cookie"]
        token = re.search(r"graphwire_ui_csrf=([\w-]+);", cookie)
        assert token and len(token[1]) == 43
        for part in ("HttpOnly", "Path=/ui", "SameSite=strict"):
            assert part in cookie
        assert f'<meta name="graphwire-csrf" content="{token[1]}">' in shell.text
        again = await http.get("/ui/runs")  # the cookie is kept: same token, no new cookie
        assert "set-cookie" not in again.headers
        assert f'content="{token[1]}"' in again.text
        url = "/ui/api/dead-letters/999999999/replay"
        refused = {
            "no header": {**A},
            "wrong token": {**A, "X-CSRF-Token": "x" * 43},
            "foreign origin": {**A, "X-CSRF-Token": token[1], "Origin": "https://evil.example"},
        }
        for case, headers in refused.items():
            response = await http.post(url, headers=headers)
            assert response.status_code == 403, case
        ok = await http.post(url, headers={**A, "X-CSRF-Token": token[1],
                                           "Origin": str(http.base_url).rstrip("/")})
        assert (ok.status_code, ok.json()) == (404, {"detail": "unknown dead letter 999999999"})
        http.cookies.clear()
        no_cookie = await http.post(url, headers={**A, "X-CSRF-Token": token[1]})
        assert no_cookie.status_code == 403
        http.cookies.set("graphwire_ui_csrf", token[1])
        topic = f"t{uuid.uuid4().hex[:12]}.events"  # a record the sink could not read
        db = await asyncpg.connect(TEST_DATABASE_URL)
        try:
            own = await db.fetchval(
                "INSERT INTO graphwire_dead_letters (source_topic, source_partition, "
                "source_offset, origin, request_id, value, reason, received_at) VALUES "
                "($1, 0, 0, 'audit', $2, '{}', 'bad event', now()) RETURNING id",
                topic, f"{scope_of('api_key', 'svc-a')}.bad-event")
            sinks = await http.post(f"/ui/api/dead-letters/{own}/replay",
                                    headers={**A, "X-CSRF-Token": token[1]})
        finally:
            await db.execute("DELETE FROM graphwire_dead_letters WHERE source_topic = $1", topic)
            await db.close()
        assert (sinks.status_code, sinks.json()) == (409, {
            "detail": f"dead letter {own} is the audit sink's own (a record it could not read): "
                      "there is nothing to rerun"})
        resume = await http.post(f"/ui/api/runs/{scope_of('api_key', 'svc-a')}.x/resume",
                                 headers={**A, "X-CSRF-Token": token[1]},
                                 json={"resume": {"approved": True}})
        assert (resume.status_code, resume.json()["detail"]) == (
            404, f"the audit tables have no run '{scope_of('api_key', 'svc-a')}.x' (yet)")


async def test_every_ui_response_carries_the_security_headers(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """Pages, fragments, JSON, static files and errors under /ui are sent with the CSP,
    nosniff, no referrer and no framing; the API outside /ui is unchanged."""
    async with serve(gateway_settings(worker_env)) as http:
        for path, code in (("/ui/", 200), ("/ui/static/ui.js", 200),
                           ("/ui/static/htmx.min.js", 200), ("/ui/api/runs", 200),
                           ("/ui/fragments/runs", 200), ("/ui/api/runs/nope", 404),
                           ("/ui/static/missing.js", 404)):
            response = await http.get(path, headers=A)
            assert response.status_code == code, path
            assert response.headers["content-security-policy"] == POLICY, path
            assert (response.headers["x-content-type-options"],
                    response.headers["referrer-policy"],
                    response.headers["x-frame-options"]) == ("nosniff", "no-referrer", "DENY")
        unauthenticated = await http.get("/ui/api/runs")
        assert unauthenticated.status_code == 401
        assert (await http.get("/ui/runs")).status_code == 200  # the shell holds no data
        assert "content-security-policy" not in (await http.get("/health")).headers
        bad = await http.get("/ui/api/runs", headers=A, params={"cursor": "garbage"})
        assert (bad.status_code, bad.json()) == (422, {
            "detail": "this page cursor is not one the gateway made; start from page 1"})
        redirect = await http.get("/ui")
        assert (redirect.status_code, redirect.headers["location"]) == (307, "/ui/")


async def test_without_auth_no_key_is_asked(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """GRAPHWIRE_GATEWAY_AUTH=false: the page says so (no key form) and its data answers
    without a key."""
    async with serve(gateway_settings(worker_env, gateway_auth=False)) as http:
        shell = await http.get("/ui/runs")
        assert '<meta name="graphwire-auth" content="off">' in shell.text
        runs = await http.get("/ui/api/runs")
        assert (runs.status_code, runs.json()) == (200, {"runs": [], "next_cursor": None})
        for param in ("graph", "status", "thread"):  # PostgreSQL cannot compare a NUL: 422
            bad = await http.get("/ui/api/runs", params={param: "a\x00b"})
            assert (bad.status_code, bad.json()) == (422, {
                "detail": "a filter value PostgreSQL cannot compare "
                          "(CharacterNotInRepertoireError): remove NUL characters and values "
                          "out of range"}), param


async def test_without_the_audit_database_the_inspector_says_what_to_check(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """A gateway whose PostgreSQL does not answer still serves; the inspector's data is 503
    with Retry-After, naming the setting to check."""
    url = f"postgresql://127.0.0.1:{free_port()}/nothing"
    env = {**worker_env, "GRAPHWIRE_DATABASE_URL": url}
    async with serve(gateway_settings(env)) as http:
        for path in ("/ui/api/runs", "/ui/api/overview", "/ui/api/dead-letters"):
            response = await http.get(path, headers=A)
            assert (response.status_code, response.json(), response.headers["retry-after"]) == (
                503, {"detail": "the audit tables' PostgreSQL does not answer "
                                "(ConnectionRefusedError): check GRAPHWIRE_DATABASE_URL, or "
                                "retry in a few seconds"}, "5"), path
        assert (await http.get("/health")).json() == {"status": "alive"}
