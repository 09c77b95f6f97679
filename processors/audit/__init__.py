"""The audit sink (``graphwire audit``): every request, event, result and dead letter in PostgreSQL.

- ``sink``         ``AuditSink``: the faust-streaming agent, batches, acks, health
- ``rows``         records to rows (and contract violations to dead-letter rows)
- ``writer``       ``AuditWriter``: one COPY + INSERT .. ON CONFLICT transaction per batch
- ``db``           connections, the audit schema, ``graphwire db migrate``
- ``migrations/``  the numbered SQL migrations
"""
