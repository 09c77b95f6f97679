"""The graph runner (``graphwire worker``), in the order a request meets it.

- ``runner``       ``GraphRunner``: wires it all; what a revoke and a stop do to runs
- ``scheduler``    ``KeyScheduler``: one run at a time per key, many keys at once
- ``processing``   one message: decode -> claim -> (cache) -> run -> publish -> mark done
- ``graphrun``     one graph run: attempts, timeouts, checkpoints, events
- ``dedup``        ``DedupStore``: leases and done markers in Redis (the writing side)
- ``cache``        ``ResultCache``: results of identical requests, in Redis
- ``redisbatch``   ``RedisBatcher``: the Redis calls of concurrent runs share round trips
- ``checkpoints``  the PostgreSQL checkpointer for durable runs
- ``publisher``    ``Publisher``: events, results and dead letters to Kafka
- ``gate``         ``DependencyGate``: pauses work while Redis or PostgreSQL are down
- ``callbacks``    LangChain callbacks: LLM and token metrics, per-node logs
- ``tracing``      OpenTelemetry spans per run and per node (optional)

The consumer loop itself (polling with a pause at the in-flight limit, commits, the revoke
hand-over, lag, stalled partitions) is ``graphwire.processors.consumer``, shared with the webhook
processor. Start here: ``GraphRunner`` in ``runner.py``.
"""
