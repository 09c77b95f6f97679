"""The HTTP gateway (``graphwire gateway``): REST and SSE over Kafka.

- ``app``     ``create_app()``: the FastAPI app, its endpoints and run ownership
- ``auth``    API keys, JWTs and the Redis rate limit
- ``models``  the request and response bodies (and so the OpenAPI document)
- ``sse``     server-sent event streams with Last-Event-ID and audit backfill
"""
