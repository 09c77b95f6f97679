"""The official JavaScript client, ``@langchain/langgraph-sdk`` from npm, run with the machine's
Node.js (tests/agentapi/js/client.mjs) against a real gateway, runner, broker, Redis and
PostgreSQL; the test asserts exactly what the script printed."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from graphwire.processors.gateway.agentapi.ids import default_assistant_id
from graphwire.processors.gateway.auth import hash_key
from graphwire.topics.specs import TopicNames
from tests.agentapi.routes import RUNS, served_paths
from tests.gateway_helpers import gateway_settings, serve_app
from tests.helpers.runners import StartRunner

pytestmark = pytest.mark.integration

JS = Path(__file__).resolve().parent / "js"
SDK_VERSION = "1.15.0"
KEY_JS = "gw_test_key_js_sdk_0123456789abcdef"
OFFLINE = re.compile(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ECONNRESET|network|E404")
"""npm's words when the registry is out of reach (then these tests skip)."""


@pytest.fixture(scope="session")
def js_client() -> Iterator[list[str]]:
    """``node client.mjs`` with ``@langchain/langgraph-sdk`` installed from npm once
    (``npm install`` in tests/agentapi/js, skipped when node_modules already has the pinned
    version); skips when Node.js is missing or npm cannot reach the registry."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are not installed on this machine")
    installed = JS / "node_modules" / "@langchain" / "langgraph-sdk" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != SDK_VERSION:
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=JS,
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip()
            if OFFLINE.search(said):
                pytest.skip(f"npm cannot reach the registry: {said.splitlines()[-1]}")
            raise RuntimeError(f"npm install failed ({done.returncode}):\n{said[-3000:]}")
    yield [node, str(JS / "client.mjs")]


async def run_node(command: list[str], *args: str) -> dict[str, Any]:
    """Run the script (without blocking the event loop the gateway serves on); its JSON."""
    process = await asyncio.create_subprocess_exec(
        *command, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode(errors="replace")
    result: dict[str, Any] = json.loads(stdout)
    return result


async def test_the_javascript_sdk_works_unchanged(
    js_client: list[str], worker_env: dict[str, str], topics: TopicNames,
    start_runner: StartRunner
) -> None:
    """With a graphwire API key, the JS client's ``assistants.search`` lists the 5 built-in
    graphs' default assistants (LangGraph's uuid5 ids, ``created_by: system``, version 1);
    ``threads.create`` with ``graphId`` makes an idle thread with that ``metadata.graph_id``;
    ``threads.getState`` of it is empty; an unknown thread is the SDK's 404 error. Once the
    runs routes exist: ``runs.wait`` on ``pipeline`` answers its values and the state has them,
    and ``runs.stream`` on ``chat`` streams the events in LangGraph's server's order, the
    answer token by token and the tool's custom event, ending with the answer in the state."""
    keys = [{"name": "svc-js", "key_sha256": hash_key(KEY_JS), "graphs": ["*"]}]
    with_runs = RUNS in served_paths()
    await start_runner()
    settings = gateway_settings(worker_env,
                                gateway_api_keys=SecretStr(orjson.dumps(keys).decode()))
    async with serve_app(settings) as (_app, http):
        got = await run_node(js_client, str(http.base_url), KEY_JS,
                             "runs" if with_runs else "")
    graphs = ["approval", "chat", "echo", "pipeline", "slow"]
    assert got["assistants"] == [
        {"assistant_id": default_assistant_id(g), "graph_id": g, "name": g, "version": 1,
         "metadata": {"created_by": "system"}} for g in graphs]
    assert got["thread"] == {"status": "idle", "metadata": {"from": "js", "graph_id": "pipeline"},
                             "values": None, "interrupts": {}}
    assert got["state"] == {"values": {}, "next": [], "tasks": [], "checkpoint": None}
    assert got["unknown"] == {"status": 404, "message": 'HTTP 404: {"detail":"Thread '
                              '00000000-0000-4000-8000-000000000000 not found"}'}
    if not with_runs:
        assert sorted(got) == ["assistants", "state", "thread", "unknown"]
        return
    values = {"text": "hello from node", "tokens": ["hello", "from", "node"], "count": 3}
    assert (got["wait"], got["state_after_wait"]) == (values, values)
    assert got["stream"]["tokens"] == ["The ", "answer ", "is ", "5."]
    assert got["stream"]["custom"] == {"tool": "add", "a": 2, "b": 3}
    assert got["stream"]["events"] == [  # as langgraph dev sends them (test_oracle.py)
        "metadata", "values", "messages", "messages", "updates", "values", "custom", "messages",
        "updates", "values", "messages", "messages", "messages", "messages", "messages",
        "updates", "values"]
    assert got["answer"] == {"type": "ai", "content": "The answer is 5."}
