"""Per-principal caps of the gateway (issue 21, "no input exhausts a processor"): concurrent
runs and streams counted in Redis, a bounded wait for a PostgreSQL connection. Real broker,
worker, Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from graphwire.processors.dev.broker import free_port
from graphwire.processors.gateway.app import create_app
from graphwire.processors.settings import Settings
from tests.gateway_helpers import KEY_ECHO, A, gateway_settings, serve
from tests.kafka_helpers import WorkerProcess

pytestmark = pytest.mark.integration


@asynccontextmanager
async def serve_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The gateway on a free port, with its app (for its pool); short client timeout."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                          lifespan="on", access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            yield app, http
    finally:
        server.should_exit = True
        await task


def slow(seconds: float) -> dict[str, Any]:
    return {"workflow_name": "slow", "input_data": {"seconds": seconds}}


async def test_concurrent_runs_are_capped_per_principal_until_their_results_are_seen(
    worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """With a cap of 2, a third unfinished run of the same key is 429 (reason, Retry-After);
    another key is not affected; once the results are seen the key may run again; a batch
    over the cap submits nothing."""
    settings = gateway_settings(worker_env, gateway_max_concurrent_runs=2)
    async with serve(settings) as http:
        first = [await http.post("/workflow/execute", json=slow(4), headers=A) for _ in range(2)]
        assert [r.status_code for r in first] == [202, 202]
        refused = await http.post("/workflow/execute", json=slow(0.1), headers=A)
        assert refused.status_code == 429
        assert refused.json()["detail"] == (
            "2 runs of svc-a are not finished, the limit is 2 at once; wait for one to finish "
            "before starting another run")
        assert refused.headers["retry-after"] == "5"
        batch = await http.post("/workflow/batch", headers=A, json={
            "requests": [slow(0.1), slow(0.1)]})
        assert batch.status_code == 429
        assert batch.json()["detail"].endswith("before starting 2 more runs")
        other = await http.post("/workflow/execute", json={
            "workflow_name": "echo", "input_data": {"text": "x"}},
            headers={"X-API-Key": KEY_ECHO})
        assert other.status_code == 202  # caps are per principal
        ids = [r.json()["request_id"] for r in first]
        for rid in ids:  # both finish; the gateway's client sees their results
            deadline = time.monotonic() + 60
            while (await http.get(f"/workflow/status/{rid}", headers=A)).json().get(
                    "status") != "success":  # 404 until the runner took it
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # the slots are given back in the background
        again = await http.post("/workflow/execute?wait=true", json=slow(0.1), headers=A)
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "success"


async def test_open_streams_are_capped_per_principal(
    worker: WorkerProcess, worker_env: dict[str, str]
) -> None:
    """With a cap of 2, a third open stream of one key (live feed or run stream) is 429;
    closing one frees its slot."""
    settings = gateway_settings(worker_env, gateway_max_streams=2)
    async with serve(settings) as http:
        async with http.stream("GET", "/ui/api/live", headers=A) as one:
            assert one.status_code == 200
            async with http.stream("GET", "/ui/api/live", headers=A) as two:
                assert two.status_code == 200
                third = await http.get("/ui/api/live", headers=A)
                assert third.status_code == 429
                assert third.json()["detail"] == (
                    "svc-a has 2 streams open, the limit is 2; close one (or poll "
                    "/workflow/status) before opening another")
                assert third.headers["retry-after"] == "5"
                run = await http.post("/workflow/stream", json=slow(0.1), headers=A)
                assert run.status_code == 429  # refused before a run is submitted
        await asyncio.sleep(0.5)
        async with http.stream("POST", "/workflow/stream", json=slow(0.1), headers=A) as run:
            assert run.status_code == 200
            text = "".join([chunk async for chunk in run.aiter_text()])
        assert "event: result" in text


async def test_a_full_postgresql_pool_answers_503_instead_of_hanging(
    worker_env: dict[str, str], topics: Any
) -> None:
    """With every connection of the gateway's pool taken, status and crons answer 503 with
    Retry-After within the acquire timeout, and work again once a connection is free."""
    settings = gateway_settings(worker_env, gateway_db_pool_size=1,
                                gateway_db_acquire_timeout_s=0.5)
    async with serve_app(settings) as (app, http):
        db = app.state.gateway.db
        async with db.acquire():  # the only connection, held
            status = await http.get("/workflow/status/f3cb5844f63a.unknown", headers=A)
            crons = await http.get("/crons", headers=A)
        assert (status.status_code, crons.status_code) == (503, 503)
        assert status.json()["detail"] == (
            "all 1 PostgreSQL connections of this gateway stayed busy for 0.5 s; retry in a "
            "few seconds")
        assert status.headers["retry-after"] == "5"
        assert (await http.get("/crons", headers=A)).status_code == 200
