"""LangGraph's official SDK (``pip install langgraph-sdk``) against graphwire's gateway, as it
talks to LangGraph Platform: only the URL changes.

Start a worker and a gateway with the demo graphs (examples/README.md), then::

    LANGGRAPH_API_KEY=<a graphwire API key> python examples/langgraph_sdk.py http://localhost:8000

It creates a thread and streams a ``chat`` run on it (the model's tokens as they come), waits
for a stateless ``pipeline`` run, and on ``approval`` stops at the review's interrupt and
resumes it with ``Command(resume=...)``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

# this file is named like the SDK's package: import the package, not this file
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from langgraph_sdk import get_client  # noqa: E402 (after the path fix)
from langgraph_sdk.schema import Command  # noqa: E402


async def main(url: str) -> None:
    """The three flows, printed one line each."""
    async with get_client(url=url) as client:  # the key: LANGGRAPH_API_KEY
        thread = await client.threads.create()
        tokens = []
        async for part in client.runs.stream(
            thread["thread_id"], "chat", stream_mode="messages-tuple",
            input={"messages": [{"type": "human", "content": "what is 2 + 3?"}]},
        ):
            if part.event == "messages" and part.data[0]["type"] == "AIMessageChunk":
                tokens.append(part.data[0]["content"])
        print("chat:", "".join(tokens))

        result = await client.runs.wait(None, "pipeline", input={"text": "Hello Kafka World"})
        print("pipeline:", result)

        review = await client.threads.create()
        asked = await client.runs.wait(review["thread_id"], "approval",
                                       input={"topic": "graphwire"})
        print("asked:", asked["__interrupt__"][0]["value"]["draft"])
        done = await client.runs.wait(review["thread_id"], "approval",
                                      command=Command(resume={"approved": True}))
        print("published:", done["published"])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://localhost:8000"))
