"""graphwire's built-in graphs, exactly as graphwire's registry builds them, for ``langgraph dev``
(the reference Agent Server that tests/agentapi/test_oracle.py compares graphwire with).

Loaded by ``langgraph.json`` beside this file; it needs the repository root on PYTHONPATH.
"""

from graphwire.graphs.registry import BUILTINS

approval = BUILTINS["approval"]()
chat = BUILTINS["chat"]()
echo = BUILTINS["echo"]()
pipeline = BUILTINS["pipeline"]()
slow = BUILTINS["slow"]()
