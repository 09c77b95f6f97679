"""The one settings object: environment variables ``GRAPHWIRE_*`` and an optional ``.env`` file.

Nothing else in graphwire reads ``os.environ``. Secrets are ``SecretStr`` and stay masked in
``repr``, logs and ``graphwire`` output.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any, Literal, Self

from aiokafka.helpers import create_ssl_context
from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from graphwire.topics.specs import TopicNames


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """graphwire's configuration; flags on the CLI override these."""

    model_config = SettingsConfigDict(
        env_prefix="GRAPHWIRE_",
        env_file=".env",
        frozen=True,
        extra="ignore",
        # Kubernetes secrets mounted as files: GRAPHWIRE_SECRETS_DIR=/run/secrets/graphwire
        # with one file per setting, named like its variable (graphwire_database_url, ...).
        secrets_dir=os.environ.get("GRAPHWIRE_SECRETS_DIR") or None,
    )

    # Kafka
    bootstrap_servers: str = "localhost:9092"
    """Comma-separated ``host:port`` list of Kafka brokers."""
    topic_prefix: str = Field(default="graphwire", pattern=r"^[A-Za-z0-9._-]{1,200}$")
    """Topics are ``<prefix>.requests``, ``.events``, ``.results``, ``.dlq``."""
    group_id: str = "graphwire-runners"
    """Consumer group of the runners."""
    partitions: int = Field(default=12, ge=1)
    """Partitions for ``graphwire topics ensure`` (requests/events/results)."""
    replication_factor: int = Field(default=1, ge=1)
    """Replication factor for ``graphwire topics ensure``; use 3 in production."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    """CA bundle to verify the brokers' certificates (SSL and SASL_SSL)."""

    # Runner
    max_in_flight: int = Field(default=64, ge=1)
    """Messages a worker holds at once (running or queued behind their key)."""
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Requests larger than this are rejected (the dead letter keeps the bytes)."""
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest message the producer sends (dead letters carry oversized requests)."""
    reply_to_timeout_s: float = Field(default=5.0, gt=0, le=300)
    """How long a result's copy to a request's ``reply-to`` topic may take; a topic that is
    missing, refused or slow gets no copy (a warning and a metric), the results topic has it."""
    reply_to_backoff_s: float = Field(default=60.0, ge=0)
    """After a reply-to copy failed, copies to that topic are skipped for this long (0: never
    skipped), so a requester's missing topic does not cost every request the timeout."""
    fetch_max_wait_ms: int = Field(default=50, ge=0)
    """How long the broker may hold a fetch waiting for data. Apache Kafka answers as soon as
    data arrives, so this bounds only the polling of idle partitions; the test broker (Tansu)
    polls inside the wait, and delivers about 1 ms later at 50 than at 10 (p50)."""
    poll_timeout_ms: int = Field(default=100, ge=1)
    """How long one poll waits for records before the loop checks its state."""
    commit_interval_ms: int = Field(default=100, ge=1)
    """How often finished offsets are committed."""
    linger_ms: int = Field(default=1, ge=0)
    """Producer batching delay."""
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    """Compression of the messages graphwire produces (it reads every codec)."""
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long in-flight runs may take to finish before they are cancelled."""
    revoke_grace_s: float = Field(default=10.0, ge=0)
    """On rebalance, how long runs of revoked partitions may take before they are cancelled."""
    worker_id: str = Field(default_factory=_default_worker_id)
    """Names this worker in logs (and, later, in Redis leases)."""

    # Graphs
    graphs: str = ""
    """Extra graphs: ``name=package.module:attr,...``."""
    langgraph_json: str | None = None
    """Path to a LangGraph CLI ``langgraph.json`` whose graphs to serve."""
    allowed_graphs: str = ""
    """Comma-separated allow-list: requests for any other graph are rejected, even when it is
    registered (empty: every registered graph)."""

    # Idempotency (Redis) and durable runs (PostgreSQL)
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    database_url: SecretStr = SecretStr("postgresql://localhost:5432/postgres")
    dedup: bool = True
    """Exactly-once effect per request_id: a Redis lease while running, a done marker after."""
    lease_ms: int = Field(default=30_000, ge=1000)
    """A run's lease; renewed every third of it, so a dead worker's runs restart after this."""
    done_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    """How long a finished request_id is remembered (re-produced within it: not run again)."""
    # -- hostile input (thread exclusivity) --
    thread_order_window_ms: int = Field(default=1000, ge=0, le=60_000)
    """A request on a thread whose message key is not its thread_id (mis-keyed: its turns land
    on different partitions) waits until its message is this old before taking a free thread,
    so that turns produced just before it, fetched by other workers, go first (turns wait for
    their thread in Kafka timestamp order). Correctly keyed requests never wait for it; 0: off.
    Needs dedup (Redis), like the thread lease itself."""
    checkpoints: bool = True
    """PostgreSQL checkpoints: a redelivered request resumes from its last finished step."""
    checkpoint_schema: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL schema for the checkpoint tables (default: the connection's search_path)."""
    checkpoint_encryption_key: SecretStr | None = None
    """AES key (16, 24 or 32 bytes) encrypting checkpoint values and writes at rest (LangGraph's
    EncryptedSerializer, AES-EAX); best from the secrets file graphwire_checkpoint_encryption_key.
    Every worker and CLI reading the checkpoints needs the same key."""
    store: bool = True
    """LangGraph's long-term memory store for every run (``runtime.store``), in the checkpoint
    database and schema (LangGraph's PostgresStore table ``store``), shared by all workers. On
    only with checkpoints; ``false``: runs get no store, unless a graph was compiled with one."""
    store_sweep_interval_s: float = Field(default=300.0, gt=0)
    """How often each worker deletes the store's items whose TTL expired."""
    max_deliveries: int = Field(default=5, ge=1, le=100)
    """A request whose run took its worker down this many times (a crash, out of memory, a
    kill; not a drain on SIGTERM nor a retry after an outage) is not started again: an
    ``error`` result (PoisonMessage) and a dead letter instead. Counted in Redis (needs dedup)."""
    max_attempts: int = Field(default=3, ge=1, le=20)
    """Runs of a request whose graph fails with a retriable error (graphs and requests override)."""
    retry_backoff_s: float = Field(default=0.5, gt=0)
    """First retry delay; doubles per retry (with jitter), at most ``retry_backoff_max_s``."""
    retry_backoff_max_s: float = Field(default=30.0, gt=0)
    checkpoint_ttl_s: int = Field(default=30 * 24 * 3600, ge=0)
    """``graphwire checkpoints prune`` deletes threads idle for longer than this."""
    durability: Literal["exit", "async", "sync"] = "async"
    """When LangGraph writes checkpoints: after each step in the background, in line, or at exit."""
    gc_young_threshold: int = Field(default=50_000, ge=0)
    """The worker's and the gateway's young-generation GC threshold (Python's default is 700):
    a run, or a request, allocates thousands of short-lived objects, so the default collects
    many times per run. Objects alive after start-up (graphs, routes, modules) are frozen out of
    collections. 0 keeps Python's defaults."""
    sync_nodes: Literal["declared", "thread", "inline"] = "declared"
    """Where plain sync nodes run: as each graph declares (``sync_nodes`` in its graphwire
    metadata; undeclared means ``thread``), or forced to a worker thread or the event loop."""

    # Audit sink (PostgreSQL record of every request, event, result and dead letter)
    audit_group_id: str = "graphwire-audit"
    """Consumer group of the audit sink (separate from the runners')."""
    audit_schema: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """PostgreSQL schema of the audit tables (default: the connection's search_path)."""
    audit_batch_max: int = Field(default=2000, ge=1, le=100_000)
    """Records per write: a batch is written when it has this many..."""
    audit_batch_within_s: float = Field(default=0.5, gt=0)
    """...or when this many seconds passed since its first record."""
    audit_commit_interval_s: float = Field(default=1.0, gt=0)
    """How often the sink commits the offsets of written batches."""
    audit_http_port: int = Field(default=8081, ge=0, le=65535)
    """``/health``, ``/ready`` and ``/metrics`` of the sink (0 disables)."""
    audit_retention_days: float = Field(default=30.0, gt=0)
    """``graphwire db prune`` deletes events older than this."""

    # Scheduler (graphwire scheduler): after_seconds/run_at and crons, tables in the audit schema
    scheduler_group_id: str = "graphwire-scheduler"
    """Consumer group in which schedulers read requests for the delayed ones."""
    scheduler_http_port: int = Field(default=8082, ge=0, le=65535)
    """``/health``, ``/ready`` and ``/metrics`` of the scheduler (0 disables)."""
    scheduler_tick_s: float = Field(default=0.2, gt=0, le=60)
    """Longest the leader sleeps between looks at what is due."""
    scheduler_standby_poll_s: float = Field(default=2.0, gt=0, le=300)
    """How often a standby tries to take the lead."""
    scheduler_missed_grace_s: float = Field(default=60.0, ge=0)
    """A cron firing reached later than this is missed; its cron's ``missed`` policy decides."""
    scheduler_batch: int = Field(default=500, ge=1, le=100_000)
    """Due requests produced per round."""
    scheduler_retention_s: float = Field(default=7 * 24 * 3600, gt=0)
    """Fired schedules are kept this long (``fired_at``), then deleted."""

    # HTTP gateway (graphwire gateway)
    gateway_host: str | None = None
    """Listen address; unset: ``0.0.0.0``, or ``127.0.0.1`` when GRAPHWIRE_GATEWAY_AUTH=false."""
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    gateway_auth: bool = True
    """Require an API key or a JWT (false: anonymous, for development only)."""
    gateway_api_keys: SecretStr | None = None
    """JSON list of ``{"name", "key_sha256", "graphs": [...] or ["*"], "rate_per_minute"}``."""
    gateway_api_keys_file: str | None = None
    """The same JSON in a file (e.g. a mounted Kubernetes secret)."""
    gateway_jwt_secret: SecretStr | None = None
    """HS256 key for JWTs (claims: ``sub``, ``graphs``, ``exp``)."""
    gateway_jwt_public_key: str | None = None
    """RS256 public key (PEM text or a path to a PEM file)."""
    gateway_jwt_audience: str | None = None
    """Required ``aud`` of every JWT (required setting with RS256, see gateway_jwt_any_audience)."""
    gateway_jwt_issuer: str | None = None
    """Required ``iss`` of every JWT, when set."""
    gateway_rate_per_minute: int = Field(default=600, ge=1)
    """Requests per minute per principal (API keys may set their own)."""
    gateway_cors_origins: str = ""
    """Comma-separated origins allowed by CORS (none by default)."""
    gateway_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    gateway_wait_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Longest ``?wait=true`` and SSE stream wait for a result."""
    gateway_max_batch: int = Field(default=100, ge=1, le=10_000)

    # -- hostile input (gateway auth) --
    gateway_allowed_hosts: str = ""
    """Comma-separated ``Host`` names the gateway answers (``api.example.com``,
    ``*.example.com``, ``*`` for any); others get a 400 (DNS rebinding). Empty: the loopback
    names and the bound address without authentication, any name with it."""
    gateway_jwt_any_audience: bool = False
    """Accept RS256 JWTs without GRAPHWIRE_GATEWAY_JWT_AUDIENCE. Off, an RS256 key with no
    audience refuses to start: a key shared by a company IdP would accept every app's tokens."""
    gateway_jwt_max_age_s: float | None = Field(default=None, gt=0)
    """Refuse JWTs issued (``iat``, then required) longer ago than this, whatever their ``exp``."""
    gateway_jwt_role_claim: str = Field(default="role", min_length=1, max_length=200)
    """The JWT claim (a string, or a list of strings) whose value ``operator`` makes the caller
    an operator: it sees and acts on every run, also those produced to Kafka directly."""
    gateway_legacy_scopes: bool = True
    """Callers also own the runs, threads and crons stored under their former 48-bit scope
    (ids ``<12 hex>.<id>``, graphwire 0.1): they read, cancel and continue them. Switch off
    once those have aged out (the audit retention); until then the short scope is guessable."""
    gateway_ops_port: int = Field(default=8084, ge=0, le=65535)
    """``/health``, ``/ready`` (with each dependency's state) and ``/metrics`` of the gateway,
    away from the API's port (0: on the API's port, as before). The API's port keeps ``/health``
    and a ``/ready`` that says only ready or not."""
    gateway_ops_host: str = "0.0.0.0"
    """Address of the ops port (Prometheus and the kubelet reach it; keep it off the Ingress)."""
    gateway_docs: bool = False
    """Serve Swagger UI at ``/docs`` and ReDoc at ``/redoc`` (their scripts come from a CDN);
    ``/openapi.json`` is always served."""

    @property
    def gateway_bind_host(self) -> str:
        """Where the gateway listens: GRAPHWIRE_GATEWAY_HOST, else every interface with
        authentication and only the loopback one without."""
        if self.gateway_host:
            return self.gateway_host
        return "0.0.0.0" if self.gateway_auth else "127.0.0.1"

    # -- hostile input (gateway limits) --
    gateway_max_concurrent_runs: int = Field(default=32, ge=1)
    """Runs one principal may have submitted and not yet finished, across every gateway replica
    (counted in Redis): over it, a new run gets 429, so one key cannot fill every worker's
    ``max_in_flight``. A run counts from its submission until a gateway sees its result."""
    gateway_run_slot_ttl_s: float = Field(default=3600.0, ge=1)
    """Backstop for a run whose result no gateway saw (a replica restarted): its slot frees
    itself after this long. A refused caller's finished runs are also checked in Redis."""
    gateway_max_streams: int = Field(default=8, ge=1)
    """Open SSE streams (``/workflow/stream``, ``/ui/api/live``) per principal, across replicas."""
    gateway_db_acquire_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """How long a request waits for one of the gateway's PostgreSQL connections before it
    answers 503 (the pool is full), instead of hanging."""
    gateway_db_pool_size: int = Field(default=4, ge=1, le=100)
    """The gateway's PostgreSQL connections (status fallback, streams' backfill, crons, UI)."""
    gateway_max_crons: int = Field(default=50, ge=1)
    """Crons one principal may define through the gateway."""
    gateway_cron_min_interval_s: float = Field(default=60.0, ge=1)
    """Shortest time between two firings of a cron defined through the gateway (a 6-field
    schedule firing every second is refused). Crons of the CLI and the client are the
    operator's and are not limited."""
    gateway_max_kept_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """Bytes of results and events (as received) the gateway keeps for callers still to
    read them; the oldest are dropped first. Size it well below the gateway's memory limit."""

    # Webhooks (graphwire webhooks): POST each result to its request's webhook URL
    webhook_allowed_hosts: str = ""
    """Comma-separated hosts webhooks may call (``hooks.example.com``, ``*.example.com``, IPs);
    empty: requests with a webhook are rejected. ``https://`` only, unless an entry is written
    ``http://host`` (that host may also be called in cleartext). Every address must be public
    unless it is in ``webhook_private_cidrs``."""
    webhook_secret: SecretStr | None = None
    """The master secret each caller's signing key is derived from (``X-Graphwire-Signature``);
    required to deliver, and on the gateway to show callers their key. Never give it to a
    receiver: it derives every caller's key."""
    webhook_group_id: str = "graphwire-webhooks"
    """Consumer group of the webhook processors, on the results topic."""
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """One attempt (connect, send, answer) may take this long."""
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    """Attempts on 5xx, 408, 429, timeouts and connection errors before the dead letter."""
    webhook_backoff_s: float = Field(default=1.0, gt=0)
    """Delay before the second attempt; doubles per attempt (with jitter)..."""
    webhook_backoff_max_s: float = Field(default=60.0, gt=0)
    """...up to this (and a ``Retry-After`` up to this is honoured)."""
    webhook_max_in_flight: int = Field(default=1000, ge=1)
    """Results held at once (being delivered or waiting for a retry)."""
    webhook_per_host: int = Field(default=8, ge=1)
    """Concurrent requests to one host (``host:port``)."""
    webhook_host_down_after: int = Field(default=10, ge=1)
    """A host whose last this many attempts all failed is "down": one result at a time probes it
    with one attempt, the others go to the dead letters at once (replay them once it is back),
    so a dead receiver never holds the in-flight slots other hosts' results need."""
    webhook_http_port: int = Field(default=8083, ge=0, le=65535)
    """``/health``, ``/ready`` and ``/metrics`` of the webhook processor (0 disables)."""
    # -- hostile input (webhooks) --
    webhook_previous_secrets: SecretStr | None = None
    """Comma-separated previous master secrets, while rotating: every delivery is also signed
    with the keys derived from them, so receivers keep verifying until they fetched the new key.
    Operator action: drop them once every receiver has its new key."""
    webhook_private_cidrs: str = ""
    """Comma-separated networks (``10.0.0.0/8``, ``fd00::/8``) allowed webhook hosts may resolve
    to although they are not public (private, loopback, ...); empty: only public addresses."""
    webhook_host_max_in_flight: int = Field(default=100, ge=1)
    """In-flight slots (of ``webhook_max_in_flight``) one host may hold; its further results
    wait in the host's queue without holding a slot, so one slow receiver cannot take them all."""
    webhook_caller_max_in_flight: int = Field(default=100, ge=1)
    """In-flight slots one caller (the scope of its request ids) may hold over all its hosts, so
    a tenant's many hosts (subdomains under a wildcard) cannot take them all either; results
    produced to Kafka directly (no scope) are the operator's and not counted."""
    webhook_max_queued: int = Field(default=10_000, ge=1)
    """Results waiting in hosts' queues at most; at the limit fetching pauses."""
    webhook_max_queued_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    """Bytes of the results waiting in hosts' queues at most (one host's queue: a tenth of it);
    at the limit fetching pauses."""
    webhook_host_max_queued: int = Field(default=1000, ge=1)
    """Results one host's queue holds at most; a result beyond it goes to the dead letters with
    the reason at once (replay it when the receiver keeps up)."""
    webhook_slow_s: float | None = Field(default=None, gt=0)
    """An answer slower than this (default: half of ``webhook_timeout_s``) counts against its
    host like a failed attempt (towards ``webhook_host_down_after``), though it is delivered."""

    # Operations
    http_port: int = Field(default=8080, ge=0, le=65535)
    """``/health``, ``/ready`` and ``/metrics`` of the worker (0 disables; ``--processes N``
    gives child i the port ``http_port + i``)."""
    http_host: str = "0.0.0.0"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    run_callbacks: bool = True
    """LLM calls and tokens (a LangChain callback on every run, which only takes model
    events) and node durations (timed from the run's stream); with ``otel``, node spans (then
    the callback takes every chain event too). About 4% of a trivial graph's speed; switch
    them off for cheap, high-volume graphs."""
    otel: bool = False
    """OpenTelemetry spans per run and node (``graphwire[otel]``; exporter from ``OTEL_*``)."""

    # -- hostile input (deployment and demo graphs) --
    demo_graphs: bool = Field(
        default=False,
        validation_alias=AliasChoices(
            "demo_graphs", "graphwire_demo_graphs", "graphwire_builtin_graphs"
        ),
    )
    """Serve the built-in demo graphs (echo, pipeline, slow, chat, approval) besides the
    configured ones. Off by default: ``slow`` sleeps as long as a caller asks, and any caller
    may run them; ``graphwire dev`` turns them on, ``graphwire worker --demo-graphs`` too.
    ``GRAPHWIRE_BUILTIN_GRAPHS`` is its former name and still read."""

    @property
    def builtin_graphs(self) -> bool:
        """Former name of ``demo_graphs``."""
        return self.demo_graphs

    # -- hostile input (runner input) --
    max_run_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    """Longest a run may take (each try of it): the ``timeout_s`` of a request that gives none,
    and the cap of one that asks for more (its ``run_started`` event says so, and a timeout's
    message names this setting), so no request holds a worker slot for ever."""
    reply_to_allowed: str = ""
    """Comma-separated ``fnmatch`` patterns a request's ``reply-to`` topic must match (e.g.
    ``graphwire.replies.*,billing.results``); empty: any topic. Either way, never graphwire's
    own requests, events, dlq or control topics."""

    @model_validator(mode="after")
    def _check_sasl(self) -> Self:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"security_protocol={self.security_protocol} needs GRAPHWIRE_SASL_MECHANISM, "
                "GRAPHWIRE_SASL_USERNAME and GRAPHWIRE_SASL_PASSWORD"
            )
        return self

    @property
    def topics(self) -> TopicNames:
        """The topic names under this prefix."""
        return TopicNames(self.topic_prefix)

    def kafka_security(self) -> dict[str, Any]:
        """Connection and security options shared by every Kafka client graphwire makes."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context: ssl.SSLContext = create_ssl_context(cafile=self.ssl_cafile)
            options["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        return options
