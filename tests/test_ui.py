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
        page.on("console", lambda m: print("CONSOLE", m.type, m.text))
        page.on("response", lambda r: print("RESP", r.status, r.url))
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
        assert orjson.loads(await output.inner_text()) == {
            "text": "hello inspector", "tokens": ["hello", "inspector"], "count": 2}
        await screenshot(page, "run")

        await page.goto(f"{s.base}/ui/")  # Overview: same tab, the key is remembered
        await page.wait_for_selector("section.card[data-graph=pipeline]")
        assert await texts(page, "section.card[data-graph=pipeline] .runs-count") == ["3"]
        assert await texts(page, "section.card[data-graph=pipeline] .error-rate") == [
            "0.0% (0)"]
        await page.wait_for_selector("table.lag tbody tr td")
        await screenshot(page, "overview")
