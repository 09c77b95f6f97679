"""LangGraph's own Agent Server (``langgraph dev``) serving graphwire's built-in graphs: the
oracle tests/agentapi/test_oracle.py compares graphwire's Agent Server API with."""
