"""The graph runner (``graphwire worker``), in the order a request meets it.

- ``runner``        ``GraphRunner``: wires it all; what a revoke and a stop do to runs
- ``keyqueue``      ``KeyQueue``: one run at a time per key, many keys at once
- ``processing``    ``RequestProcessor``: one message's life, top to bottom: admit -> claim ->
                    answer (kept, poison, cancelled, busy, cached, or run) -> finish -> mark done
- ``answer``        ``Answer``: how a request ends (pure values); ``EventPositions``
- ``graphrun``      ``RunExecutor``: one graph run: config, starting point, tries, stop
- ``threadstate``   what a thread holds for a request: an earlier start's run (finished,
                    between steps, at an interrupt or a breakpoint), anything to continue
- ``noderetry``     which node's own ``RetryPolicy`` already retried a failure (no run retry)
- ``nodecache``     ``RedisNodeCache``: LangGraph's node cache (``CachePolicy``) in Redis
- ``claims``        ``RedisClaims``: leases, thread leases and done markers in Redis
- ``localclaims``   ``LocalClaims``: the same calls without Redis (``GRAPHWIRE_DEDUP=false``)
- ``cache``         ``ResultCache``: results of identical requests, in Redis
- ``redisbatch``    ``RedisBatcher``: the Redis calls of concurrent runs share round trips
- ``checkpoints``   the PostgreSQL checkpointer for durable runs (``pgsaver``) and the
                    long-term memory store graphs get as ``runtime.store`` (``pgstore``)
- ``effectjournal`` ``PgEffectJournal``: side effects at most once (``graphs/effects.py``)
- ``publisher``     ``OutputPublisher``: events, then ``finish`` (the one final-answer path)
- ``control``       cancels and roll backs from ``<prefix>.control``
- ``failures``      which PostgreSQL and Redis failures are the message's, not an outage
- ``gate``          ``DependencyGate``: pauses work while Redis or PostgreSQL are down
- ``identity``      the gateway's caller, given to graphs under Agent Server's names
- ``callbacks``     LangChain callbacks: LLM and token metrics, per-node logs
- ``tracing``       OpenTelemetry spans per run and per node (optional)

The consumer loop itself (polling with a pause at the in-flight limit, commits, the revoke
hand-over, lag, stalled partitions) is ``graphwire.processors.consumer``, shared with the webhook
processor. Start here: ``GraphRunner`` in ``runner.py``.
"""
