"""graphwire's long-running processors, one folder each, every one with ``start()``/``stop()``.

- ``runner/``   the graph runner (``graphwire worker``): requests in, events and results out
- ``consumer/`` the consumer-group member the runner and the webhook processor share: polling
  with backpressure, commits below every unfinished message, revoke, lag, stalls
- ``audit/``    the audit sink (``graphwire audit``): every message recorded in PostgreSQL
- ``gateway/``  the HTTP gateway (``graphwire gateway``): the REST/SSE API over Kafka
- ``cli/``      the ``graphwire`` command that wires them, and the operator commands
- ``dev/``      ``graphwire dev``: the whole product on one machine

Directly here only what every processor shares: ``settings`` (the one settings object),
``metrics``, ``logs`` and ``httpserver`` (``/health``, ``/ready``, ``/metrics``). The rooms talk
to each other only through Kafka and the run-status layout in Redis
(``graphwire.topics.runstatus``); the runner imports neither the gateway nor the audit sink.
"""
