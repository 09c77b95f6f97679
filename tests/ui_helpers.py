"""The run inspector under test: a worker, the audit sink and the gateway on this test's topics
and audit schema, and Debian's chromium driven headless by Playwright (no browser download)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from graphwire.processors.gateway.auth import Principal
from tests.gateway_helpers import gateway_settings, serve
from tests.kafka_helpers import ROOT, WorkerProcess, wait_for_members

CHROMIUM = os.environ.get("GRAPHWIRE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("GRAPHWIRE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "ui"


def scope_of(kind: str, name: str) -> str:
    """The namespace of a caller's runs (``<scope>.<id>``)."""
    return Principal(kind, name, frozenset(), 1).scope


def need_chromium() -> None:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")


@dataclass
class Stack:
    http: httpx.AsyncClient
    base: str
    prefix: str


@asynccontextmanager
async def stack(worker_env: dict[str, str], tmp_path: Path, **overrides: Any,
                ) -> AsyncIterator[Stack]:
    """Worker + audit sink (this test's schema) + gateway; yields the gateway's client."""
    prefix = worker_env["GRAPHWIRE_TOPIC_PREFIX"]
    audit_env = {**worker_env, "GRAPHWIRE_AUDIT_SCHEMA": prefix,
                 "GRAPHWIRE_AUDIT_GROUP_ID": f"{prefix}-audit",
                 "GRAPHWIRE_AUDIT_BATCH_WITHIN_S": "0.1", "GRAPHWIRE_AUDIT_HTTP_PORT": "0"}
    worker = WorkerProcess(worker_env, log_path=tmp_path / "worker.log").start()
    sink = WorkerProcess(audit_env, "--migrate", command="audit",
                         log_path=tmp_path / "sink.log").start()
    try:
        await wait_for_members(worker_env["GRAPHWIRE_BOOTSTRAP_SERVERS"],
                               worker_env["GRAPHWIRE_GROUP_ID"], 1)
        settings = gateway_settings(worker_env, audit_schema=prefix,
                                    audit_group_id=f"{prefix}-audit", **overrides)
        async with serve(settings) as http:
            yield Stack(http, str(http.base_url).rstrip("/"), prefix)
    finally:
        worker.stop()
        sink.stop()


@asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    """A fresh headless chromium context (its own sessionStorage and cookies)."""
    from playwright.async_api import async_playwright

    need_chromium()
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--no-sandbox", "--disable-gpu"])
        try:
            context = await chromium.new_context(viewport={"width": 1280, "height": 900})
            yield context
        finally:
            await chromium.close()


async def sign_in(page: Any, url: str, key: str) -> None:
    """Open ``url`` and type the key into the inspector's key form."""
    await page.goto(url)
    await page.fill("#key-form input[name=key]", key)
    await page.click("#key-form button[type=submit]")


async def screenshot(page: Any, name: str) -> Path:
    """Save the whole page as ``test-artifacts/ui/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
