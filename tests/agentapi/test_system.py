"""The Agent Server API's system routes: ``/ok`` and ``/info``, as clients probe them."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from graphwire.topics.specs import TopicNames
from tests.gateway_helpers import A, gateway_settings, serve_app

pytestmark = pytest.mark.integration


async def test_ok_and_info_answer_as_the_agent_server_does(
    worker_env: dict[str, str], topics: TopicNames
) -> None:
    """``GET /ok`` is ``{"ok": true}``; ``GET /info`` names graphwire's version, the LangGraph
    it runs and the assistants and crons features (agent-chat-ui checks it for a 2xx)."""
    async with serve_app(gateway_settings(worker_env)) as (_app, http):
        ok = await http.get("/ok")
        info = await http.get("/info", headers=A)
    assert (ok.status_code, ok.json()) == (200, {"ok": True})
    body = info.json()
    assert (info.status_code, body["langgraph_py_version"], body["flags"]["assistants"],
            body["flags"]["crons"]) == (200, version("langgraph"), True, True)
