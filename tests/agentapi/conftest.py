"""Fixtures of the Agent Server API tests: the reference server (``langgraph dev``)."""

from tests.agentapi.oracle.server import oracle_url

__all__ = ["oracle_url"]
