"""Submit a request and wait for its result with the plain confluent-kafka client.

    GRAPHWIRE_BOOTSTRAP_SERVERS=host:port python examples/confluent_kafka_client.py "Some text"

This is what a service in any stack does: produce a JSON request keyed by its request_id, and
read the results topic (keyed by request_id) for the answer. A real service keeps one consumer
running and matches results to its pending requests (or sets a `reply-to` header to get results
on a topic of its own).
"""

import json
import os
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer

brokers = os.environ.get("GRAPHWIRE_BOOTSTRAP_SERVERS", "localhost:9092")
prefix = os.environ.get("GRAPHWIRE_TOPIC_PREFIX", "graphwire")
text = sys.argv[1] if len(sys.argv) > 1 else "Hello from confluent-kafka"
request_id = f"ck-{uuid.uuid4().hex}"

# Subscribe first (from the end of the results topic), so the result cannot be missed.
consumer = Consumer({
    "bootstrap.servers": brokers,
    "group.id": f"example-{request_id}",  # a private group: this process reads every result
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
})
consumer.subscribe([f"{prefix}.results"])

producer = Producer({"bootstrap.servers": brokers, "acks": "all"})
request = {"request_id": request_id, "graph": "pipeline", "input": {"text": text}}
producer.produce(f"{prefix}.requests", key=request_id, value=json.dumps(request))
producer.flush(10)
print(f"submitted {request_id}", file=sys.stderr)

deadline = time.monotonic() + 60
try:
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        if message.key() == request_id.encode():
            result = json.loads(message.value())
            print(json.dumps(result))
            sys.exit(0 if result["status"] == "success" else 1)
finally:
    consumer.close()
print(f"no result for {request_id} within 60 s: is a worker running?", file=sys.stderr)
sys.exit(1)
