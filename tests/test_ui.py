"""The run inspector (/ui) in a real browser: headless Debian chromium over a real worker, audit
sink, gateway, broker, Redis and PostgreSQL. Screenshots land in test-artifacts/ui/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import KEY_A, KEY_ECHO, A
from tests.helpers import eventually
from tests.kafka_helpers import Collector, encode, produce, request
from tests.ui_helpers import browser, scope_of, screenshot, sign_in, stack

pytestmark = pytest.mark.integration

SCOPE_A = scope_of("api_key", "svc-a")


def run(graph: str, **extra: Any) -> dict[str, Any]:
    return {"workflow_name": graph, "input_data": {"text": "Hello Inspector"}, **extra}


async def texts(page: Any, selector: str) -> list[str]:
    return [t.strip() for t in await page.locator(selector).all_text_contents()]


async def test_runs_appear_live_and_one_run_shows_its_nodes_in_order(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path
) -> None:
    """Runs submitted while the Runs page is open appear in it without a reload; one run's
    page shows normalize, tokenize, count in that order in the timeline and the drawing."""
    async with stack(worker_env, tmp_path) as s, browser() as context:
        page = await context.new_page()
        await sign_in(page, f"{s.base}/ui/runs", KEY_A)
        await page.wait_for_selector("#runs-table tr.empty")
        await page.wait_for_selector("#live-state.on")
        await page.evaluate("window.__sameDocument = 'yes'")
        ids = []
        for i in range(3):
            done = await s.http.post("/workflow/execute?wait=true", headers=A,
                                     json=run("pipeline", request_id=f"live-{i}"))
            assert done.status_code == 200, done.text
            ids.append(done.json()["request_id"])

        async def rows() -> list[str] | None:
            found = await page.locator("#runs-table tbody tr[data-request-id]").evaluate_all(
                "rows => rows.map(r => r.dataset.requestId + ' ' + "
                "r.querySelector('.status').textContent)")
            return found if len(found) == 3 and all(r.endswith("success") for r in found) \
                else None

        shown = await eventually(rows)
        assert shown == [f"{rid} success" for rid in reversed(ids)]  # newest first
        assert await page.evaluate("window.__sameDocument") == "yes"  # no reload happened
        assert await texts(page, "#runs-table tbody tr td:nth-child(2)") == ["pipeline"] * 3
        await screenshot(page, "runs")

        await page.click(f"a[href='/ui/runs/{ids[0]}']")
        await page.wait_for_selector("#run[data-recorded=yes] svg.timeline")
        assert await texts(page, "svg.timeline .bar-label") == ["normalize", "tokenize", "count"]
        drawn = await page.locator("svg.graph g.node.visited").evaluate_all(
            "nodes => nodes.map(n => [n.dataset.node, n.dataset.order])")
        by_order = sorted((order, node) for node, order in drawn if order)
        assert [node for _, node in by_order] == ["normalize", "tokenize", "count"]
        assert sorted(node for node, _ in drawn) == sorted(
            ["__start__", "normalize", "tokenize", "count", "__end__"])
        taken = await page.locator("svg.graph path.edge.taken").evaluate_all(
            "edges => edges.map(e => e.dataset.edge)")
        assert sorted(taken) == sorted(["__start__>normalize", "normalize>tokenize",
                                        "tokenize>count", "count>__end__"])
        assert await texts(page, "table.events tbody tr td:nth-child(4)") == [
            "run_started", "node", "node", "node", "run_finished"]
        output = page.locator("details.json", has_text="Output").locator("pre")
        assert orjson.loads(await output.text_content() or "") == {
            "text": "hello inspector", "tokens": ["hello", "inspector"], "count": 2}
        await screenshot(page, "run")

        await page.goto(f"{s.base}/ui/")  # Overview: same tab, the key is remembered
        await page.wait_for_selector("section.card[data-graph=pipeline]")
        assert await texts(page, "section.card[data-graph=pipeline] .runs-count") == ["3"]
        assert await texts(page, "section.card[data-graph=pipeline] .error-rate") == [
            "0.0% (0)"]
        await page.wait_for_selector("table.lag tbody tr td")
        await screenshot(page, "overview")

        async def caught_up() -> dict[tuple[str, str], tuple[int, int]] | None:
            lag = (await s.http.get("/ui/api/overview", headers=A)).json()["lag"]
            ends: dict[tuple[str, str], tuple[int, int]] = {}
            for p in lag:
                key = (p["group"].rsplit("-", 1)[1], p["topic"].rsplit(".", 1)[1])
                end, behind = ends.get(key, (0, 0))
                ends[key] = (end + p["end"], behind + p["lag"])
            return ends if all(behind == 0 for _, behind in ends.values()) else None

        hour = (await s.http.get("/ui/api/overview", headers=A)).json()["graphs"]
        durations = sorted(r["duration_ms"] for r in (
            await s.http.get("/ui/api/runs", headers=A)).json()["runs"])
        assert [(g["graph"], g["runs"], g["failed"], g["error_rate"]) for g in hour] == [
            ("pipeline", 3, 0, 0.0)]
        assert hour[0]["p50_ms"] == pytest.approx(durations[1])
        assert hour[0]["p99_ms"] == pytest.approx(durations[1] + 0.98 * (durations[2]
                                                                         - durations[1]))
        assert sum(m["runs"] for m in hour[0]["per_minute"]) == 3
        assert await eventually(caught_up) == {
            ("runners", "requests"): (3, 0), ("audit", "requests"): (3, 0),
            ("audit", "results"): (3, 0), ("audit", "events"): (15, 0), ("audit", "dlq"): (0, 0)}


async def test_resume_an_interrupted_approval_thread_from_the_form(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path
) -> None:
    """An ``approval`` run waits at ``review``; its page shows the interrupt's draft and a
    form; resuming from the form starts the thread's next turn, whose page shows it finish."""
    async with stack(worker_env, tmp_path) as s, browser() as context:
        first = await s.http.post("/workflow/execute?wait=true", headers=A, json={
            "workflow_name": "approval", "input_data": {"topic": "the inspector"},
            "thread_id": "launch-1", "request_id": "ask-1"})
        assert first.json()["status"] == "interrupted", first.text
        rid = first.json()["request_id"]
        page = await context.new_page()
        await sign_in(page, f"{s.base}/ui/runs/{rid}", KEY_A)
        await page.wait_for_selector("section.interrupt form.json-post")
        shown = orjson.loads(await page.locator("section.interrupt pre").first.text_content() or "")
        assert shown["draft"] == "Announcing the inspector: a short post, ready for review."
        assert await texts(page, "svg.timeline .bar-label") == ["draft"]
        await screenshot(page, "run-interrupted")

        await page.fill("section.interrupt textarea",
                        '{"approved": true, "comment": "ship it"}')
        await page.click("section.interrupt button[type=submit]")
        await page.wait_for_url(lambda url: not url.endswith(f"/ui/runs/{rid}"))
        resumed = page.url.rsplit("/", 1)[1]
        assert resumed != rid and resumed.startswith(f"{SCOPE_A}.")
        await page.wait_for_selector("#run[data-status=success][data-recorded=yes]", timeout=60_000)
        output = page.locator("details.json", has_text="Output").locator("pre")
        assert orjson.loads(await output.text_content() or "") == {
            "topic": "the inspector",
            "draft": "Announcing the inspector: a short post, ready for review.",
            "approved": True, "comment": "ship it", "published": True}
        command = page.locator("details.json", has_text="Command").locator("pre")
        assert orjson.loads(await command.text_content() or "") == {
            "resume": {"approved": True, "comment": "ship it"}}
        turns = await texts(page, "table.runs tbody tr td:first-child")
        assert turns == ["ask-1", f"{resumed.split('.', 1)[1]} resume"]
        await screenshot(page, "run-resumed")

        await page.click(f"a[href='/ui/threads/{SCOPE_A}.launch-1']")
        await page.wait_for_selector("ol.turns li")
        assert await page.locator("ol.turns li").evaluate_all(
            "items => items.map(i => i.dataset.requestId)") == [rid, resumed]
        await page.wait_for_selector("table.events tbody tr")
        steps = await texts(page, "table.events tbody tr td:first-child")
        assert steps and steps == sorted(steps, key=int, reverse=True)  # newest first
        await screenshot(page, "thread")
        again = await s.http.post(f"/ui/api/runs/{rid}/resume", headers=A,
                                  json={"resume": {"approved": False}})
        assert again.status_code == 403  # no CSRF token: refused before anything else


XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


async def no_script_ran(page: Any) -> None:
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    sources = await page.locator("script").evaluate_all("s => s.map(e => e.src)")
    assert [src.rsplit("/", 1)[1] for src in sources] == ["htmx.min.js", "ui.js"]
    assert await page.locator("img").count() == 0


async def test_replay_a_dead_letter(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path, bootstrap: str
) -> None:
    """A request for an unknown graph is dead-lettered; the Dead letters page shows its reason
    and original bytes as text (the ``<script>`` of its input never runs); Replay, once
    confirmed, re-produces exactly those bytes, and the runner dead-letters them a second time.
    (A graph name must match the contract's pattern, so the script rides in the input.)"""
    rid = f"{SCOPE_A}.dead-1"
    original = encode(request(rid, "no-such-graph", input={"text": XSS}))
    async with stack(worker_env, tmp_path) as s, browser() as context, Collector(
        bootstrap, topics.requests, topics.dlq
    ) as out:
        await produce(bootstrap, topics.requests, [(b"dead-1", original)])
        await out.wait_count(topics.dlq, 1, timeout=60)
        page = await context.new_page()
        await sign_in(page, f"{s.base}/ui/dead-letters", KEY_A)

        async def letters() -> int:
            await page.reload()
            return await page.locator("table.letters tr[data-letter]").count()

        await eventually(letters)
        row = page.locator("table.letters tr[data-letter]")
        reason = await row.locator("td.reason").text_content() or ""
        assert reason.startswith("unknown graph 'no-such-graph': registered graphs are "), reason
        assert await row.locator("pre.bytes").text_content() == original.decode()
        await no_script_ran(page)
        await row.locator("details summary").click()
        await screenshot(page, "dead-letters")

        asked: list[str] = []

        async def confirm(dialog: Any) -> None:
            asked.append(dialog.message)
            await dialog.accept()

        page.on("dialog", confirm)
        await row.locator("button.post").click()
        await page.wait_for_selector("table.letters .outcome.ok")
        letter_id = await row.get_attribute("data-letter")
        assert asked == [f"Replay dead letter {letter_id} to the requests topic? The request "
                         "runs again."]
        assert (await row.locator(".outcome").text_content() or "").startswith(
            f"replayed to {topics.requests}")
        await out.wait_count(topics.requests, 2, timeout=30)
        sent = [r for r in out.records[topics.requests]]
        assert [r.value for r in sent] == [original, original]
        assert [r.key for r in sent] == [b"dead-1", b"dead-1"]
        assert [list(r.headers) for r in sent] == [[], []]  # graphwire's own headers stripped
        await out.wait_count(topics.dlq, 2, timeout=60)  # ran again: still an unknown graph
        assert await eventually(lambda: _count_is(letters, 2))
        await no_script_ran(page)
        refused = await s.http.post(f"/ui/api/dead-letters/{letter_id}/replay", headers=A)
        assert (refused.status_code, refused.json()["detail"]) == (
            403, "missing or wrong CSRF token: reload the page at /ui and submit again")


async def _count_is(count: Any, want: int) -> bool:
    return bool(await count() == want)


async def test_a_script_in_the_input_renders_as_text_and_never_runs(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path
) -> None:
    """Input, output, thread id and event data holding ``<script>`` and an ``onerror`` image
    show as text on the Runs, run and thread pages; no script of theirs runs; every page is
    sent with the Content-Security-Policy."""
    async with stack(worker_env, tmp_path) as s, browser() as context:
        done = await s.http.post("/workflow/execute?wait=true", headers=A, json={
            "workflow_name": "echo", "input_data": {"text": XSS}, "thread_id": XSS})
        assert done.json()["output"] == {"text": XSS}, done.text
        rid = done.json()["request_id"]
        page = await context.new_page()
        policies: list[str] = []
        page.on("response", lambda r: policies.append(
            r.headers.get("content-security-policy", "")) if "/ui" in r.url else None)
        await sign_in(page, f"{s.base}/ui/runs", KEY_A)
        await page.wait_for_selector(f"tr[data-request-id='{rid}']")
        thread_cell = page.locator(f"tr[data-request-id='{rid}'] td:nth-child(6)")
        assert (await thread_cell.text_content() or "").strip() == XSS
        await no_script_ran(page)
        await page.goto(f"{s.base}/ui/runs/{rid}")
        await page.wait_for_selector("#run[data-status=success][data-recorded=yes]")
        output = page.locator("details.json", has_text="Output").locator("pre")
        assert orjson.loads(await output.text_content() or "") == {"text": XSS}
        source = page.locator("details.json", has_text="Input").locator("pre")
        assert orjson.loads(await source.text_content() or "") == {"text": XSS}
        await no_script_ran(page)
        await screenshot(page, "run-escaped")
        await page.click("dl.facts a[href^='/ui/threads/']")
        await page.wait_for_selector("ol.turns li")
        assert (await page.locator("h1 code").text_content() or "") == XSS
        await no_script_ran(page)
    assert policies and set(policies) == {
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"}


async def test_another_callers_runs_are_not_visible(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path
) -> None:
    """svc-a's Runs page lists only svc-a's runs; svc-echo's run, thread and JSON are 'not
    found' to svc-a, and svc-echo sees its own run but not svc-a's."""
    echo = {"X-API-Key": KEY_ECHO}
    async with stack(worker_env, tmp_path) as s, browser() as context:
        mine = (await s.http.post("/workflow/execute?wait=true", headers=A, json=run(
            "echo", thread_id="shared-name"))).json()["request_id"]
        theirs = (await s.http.post("/workflow/execute?wait=true", headers=echo, json=run(
            "echo", thread_id="shared-name"))).json()["request_id"]
        assert mine.split(".")[0] != theirs.split(".")[0]
        page = await context.new_page()
        await sign_in(page, f"{s.base}/ui/runs", KEY_A)

        async def listed() -> list[str]:
            return list(await page.locator("tr[data-request-id]").evaluate_all(
                "rows => rows.map(r => r.dataset.requestId)"))

        assert await eventually(listed) == [mine]
        await page.goto(f"{s.base}/ui/runs/{theirs}")
        await page.wait_for_selector("#page p.error")
        assert await page.locator("#page p.error").text_content() == (
            f"unknown request '{theirs}'")
        for path in (f"/ui/api/runs/{theirs}", f"/ui/fragments/runs/{theirs}"):
            hidden = await s.http.get(path, headers=A)
            assert (hidden.status_code, hidden.json()) == (
                404, {"detail": f"unknown request '{theirs}'"})
        listing = await s.http.get("/ui/api/runs", headers=A, params={"thread": "shared-name"})
        assert [r["request_id"] for r in listing.json()["runs"]] == [mine]
        their_thread = theirs.split(".")[0] + ".shared-name"
        hidden = await s.http.get(f"/ui/api/threads/{their_thread}", headers=A)
        assert hidden.status_code == 404
        theirs_listing = await s.http.get("/ui/api/runs", headers=echo)
        assert [r["request_id"] for r in theirs_listing.json()["runs"]] == [theirs]
        other = await context.browser.new_context()
        page = await other.new_page()
        await sign_in(page, f"{s.base}/ui/runs", KEY_ECHO)
        assert await eventually(listed) == [theirs]


async def test_cancel_a_running_run_from_its_page(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path
) -> None:
    """A run of ``paced`` (20 steps of 0.5 s) shows a cancel button while it runs; confirming it
    stops the run at a step boundary: its page turns ``cancelled`` and the button is gone.
    ``paced`` is registered as ``slow``, a graph svc-a's key may run."""
    env = {**worker_env, "GRAPHWIRE_GRAPHS": "slow=tests.sample_graphs:paced"}
    async with stack(env, tmp_path) as s, browser() as context:
        sent = await s.http.post("/workflow/execute", headers=A, json={
            "workflow_name": "slow", "input_data": {"steps": 20, "pause": 0.5},
            "request_id": "long-1"})
        assert sent.status_code == 202, sent.text
        rid = sent.json()["request_id"]
        page = await context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        await sign_in(page, f"{s.base}/ui/runs/{rid}", KEY_A)
        button = page.locator("button.post.danger", has_text="Cancel run")
        await button.wait_for(timeout=30_000)
        await screenshot(page, "run-cancel")
        await button.click()
        await page.wait_for_selector("#run[data-status=cancelled][data-recorded=yes]",
                                     timeout=60_000)
        assert await page.locator("button.post.danger").count() == 0
        final = await s.http.get(f"/workflow/status/{rid}", headers=A)
        assert final.json()["status"] == "cancelled", final.text
        steps_run = await texts(page, "svg.timeline .bar-label")
        assert 1 <= len(steps_run) < 20 and set(steps_run) == {"step"}
        again = await s.http.post(f"/ui/api/runs/{rid}/cancel", headers=A)
        assert again.status_code == 403  # no CSRF token: refused before anything else


async def test_the_live_feed_first_tells_the_page_to_reload_its_table(
    worker_env: dict[str, str], topics: TopicNames, tmp_path: Path
) -> None:
    """``/ui/api/live`` sends ``changed`` at its first poll, with the caller's newest run as
    the audit table has it: a run recorded between the table's render and the feed's start
    shows at once, not at the next change."""
    async with stack(worker_env, tmp_path) as s:
        done = await s.http.post("/workflow/execute?wait=true", headers=A, json=run("echo"))
        assert done.status_code == 200, done.text
        frames: list[str] = []
        async with s.http.stream("GET", "/ui/api/live", headers=A, timeout=30) as feed:
            buffer = ""
            async for chunk in feed.aiter_text():
                buffer += chunk
                *complete, buffer = buffer.split("\n\n")
                frames += complete
                if len(frames) >= 2 and any(f.startswith("event: changed") for f in frames):
                    break
        assert frames[0].startswith(": the caller's runs, live")
        event, data = frames[1].split("\n")
        assert event == "event: changed"
        assert set(orjson.loads(data.removeprefix("data: "))) == {"seen", "finished"}
