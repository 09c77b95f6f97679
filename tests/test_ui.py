"""The run inspector (/ui) in a real browser: headless Debian chromium over a real worker, audit
sink, gateway, broker, Redis and PostgreSQL. Screenshots land in test-artifacts/ui/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import KEY_A, KEY_ECHO, A
from tests.kafka_helpers import Collector, encode, produce, request
from tests.ui_helpers import browser, eventually, scope_of, screenshot, sign_in, stack

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
        await page.wait_for_selector("svg.timeline")
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
        await page.wait_for_selector("#run[data-status=success]", timeout=60_000)
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
