"""graphwire's Python client: stream one request's events, then run several at once.

    GRAPHWIRE_BOOTSTRAP_SERVERS=host:port python examples/python_client.py
"""

import asyncio
import os

from graphwire import GraphwireClient


async def main() -> None:
    brokers = os.environ.get("GRAPHWIRE_BOOTSTRAP_SERVERS", "localhost:9092")
    prefix = os.environ.get("GRAPHWIRE_TOPIC_PREFIX", "graphwire")
    async with GraphwireClient(brokers, topic_prefix=prefix) as client:
        request_id = await client.submit("pipeline", {"text": "Hello World"})
        async for event in client.events(request_id):  # in seq order, ends after run_finished
            print("event", event.seq, event.type, event.node or "", event.data)
        result = await client.result(request_id, timeout=60, raise_on_error=True)
        print("result", result.status, result.output)

        # many requests from one client: results are matched to requests by request_id
        texts = [f"Request Number {i}" for i in range(10)]
        results = await asyncio.gather(
            *(client.invoke("pipeline", {"text": t}, wait_timeout=60) for t in texts)
        )
        for text, res in zip(texts, results, strict=True):
            print(f"{text!r} -> {res.output['text']!r} ({res.output['count']} tokens)")


if __name__ == "__main__":
    asyncio.run(main())
