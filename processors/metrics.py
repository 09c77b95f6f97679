"""Prometheus metrics of the runner, on a registry passed in (names end in their unit)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# The one label value for everything a request names that this process does not know (an
# unregistered graph, an HTTP method we do not serve): every value from input that becomes a label
# makes a new time series, kept in memory here and in Prometheus until restart.
UNKNOWN = "unknown"
# A graph may take its model from the request (a configurable model): the first this many model
# names get their own series, later ones count under ``other``.
MAX_MODEL_LABELS = 50

_RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RunnerMetrics:
    """The runner's counters, gauges and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.executions = Counter(
            "langgraph_workflow_executions_total",
            "Graph runs finished, by graph and status.",
            ["workflow_name", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "langgraph_workflow_duration_seconds",
            "Graph run duration, by graph.",
            ["workflow_name"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.active = Gauge(
            "langgraph_active_workflows", "Graph runs executing right now.", registry=r
        )
        self.in_flight = Gauge(
            "graphwire_in_flight_messages",
            "Messages held by this worker (running or queued behind their key).",
            registry=r,
        )
        self.events = Counter(
            "graphwire_events_published_total", "Events published, by type.", ["type"], registry=r
        )
        self.dead_letters = Counter(
            "graphwire_dead_letters_total",
            "Messages dead-lettered, by reason.",
            ["reason"],
            registry=r,
        )
        self.publish_retries = Counter(
            "graphwire_publish_retries_total",
            "Publishes retried after a Kafka error.",
            registry=r,
        )
        self.reply_to_failures = Counter(
            "graphwire_reply_to_failures_total",
            "Reply-to copies not delivered (the result is on the results topic), by reason: "
            "timeout, refused, own_topic, invalid_name, recent_failure (skipped after one).",
            ["reason"],
            registry=r,
        )
        self.commits = Counter(
            "graphwire_commits_total", "Offset commits, by outcome.", ["outcome"], registry=r
        )
        self.commit_latency = Histogram(
            "graphwire_commit_latency_seconds", "Time to commit offsets.", registry=r
        )
        self.paused = Gauge(
            "graphwire_paused_partitions", "Partitions paused for backpressure.", registry=r
        )
        self.cancelled = Counter(
            "graphwire_runs_cancelled_total",
            "Runs cancelled by shutdown or revoke after their grace period (redelivered).",
            registry=r,
        )
        # run control (issue 14): cancels, double-texting
        self.cancel_requests = Counter(
            "graphwire_cancel_requests_total",
            "Cancel messages handled, by what was found: running, pending (not started yet), "
            "finished (dead-lettered), invalid (dead-lettered), local (no Redis).",
            ["outcome"],
            registry=r,
        )
        self.run_cancels = Counter(
            "graphwire_run_cancels_total",
            "Requests ended cancelled, by action (interrupt, rollback) and cause (cancel, "
            "multitask).",
            ["action", "cause"],
            registry=r,
        )
        self.multitask = Counter(
            "graphwire_multitask_total",
            "Requests that arrived on a busy thread with a multitask_strategy other than "
            "enqueue, by strategy (reject: rejected at once; interrupt/rollback: the runs ahead "
            "were stopped).",
            ["strategy"],
            registry=r,
        )
        self.forks = Counter(
            "graphwire_forks_total",
            "Requests run from an earlier checkpoint of their thread (checkpoint_id).",
            registry=r,
        )
        self.store_operations = Counter(
            "graphwire_store_operations_total",
            "Operations on the long-term memory store (runtime.store), by kind: get, put "
            "(deletes too), search, list_namespaces.",
            ["kind"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "graphwire_store_call_seconds",
            "Time of one store call (a put includes waiting for its group commit), by kind.",
            ["kind"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )

        self.duplicates = Counter(
            "graphwire_duplicates_skipped_total",
            "Requests whose request_id was already done: not run again.",
            registry=r,
        )
        self.lease_waits = Counter(
            "graphwire_lease_waits_total",
            "Waits for a request_id's lease held by another live worker.",
            registry=r,
        )
        self.thread_waits = Counter(
            "graphwire_thread_waits_total",
            "Turns that waited for their thread: another turn ran on it (on any worker) or an "
            "earlier one waited for it.",
            registry=r,
        )
        self.misskeyed = Counter(
            "graphwire_misskeyed_requests_total",
            "Requests with a thread_id whose message key is not that thread_id (a producer "
            "keying by request_id, or none): still run one at a time per thread under the "
            "thread lease, after GRAPHWIRE_THREAD_ORDER_WINDOW_MS; fix the producer's key.",
            registry=r,
        )
        self.retries = Counter(
            "graphwire_retries_total", "Graph runs retried after a retriable error.", registry=r
        )
        self.cache = Counter(
            "graphwire_cache_lookups_total",
            "Result cache lookups, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.node_cache = Counter(
            "graphwire_node_cache_lookups_total",
            "Lookups of LangGraph node writes (CachePolicy) in the shared Redis node cache, by "
            "outcome: hit, miss, error (Redis failed: the node ran).",
            ["outcome"],
            registry=r,
        )
        self.stalls = Counter(
            "graphwire_partition_stalls_total",
            "Times a partition stalled at a message that could not be finished, not even "
            "dead-lettered (it is rewound and fetched again with backoff), by partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.stalled = Gauge(
            "graphwire_stalled_partitions",
            "Partitions held at a message that could not be finished yet.",
            registry=r,
        )
        self._event_children: dict[str, Any] = {}
        self._run_children: dict[tuple[str, str], Any] = {}
        self._duration_children: dict[str, Any] = {}
        self._node_children: dict[tuple[str, str], Any] = {}
        # graph names that may become label values: the registered ones (the processor sets
        # them); a request naming any other graph is counted under ``unknown``
        self.graph_names: frozenset[str] = frozenset()
        self._model_names: set[str] = set()

        self.llm_requests = Counter(
            "langgraph_llm_requests_total",
            "Chat model / LLM calls made by graphs, by model and status.",
            ["model", "status"],
            registry=r,
        )
        self.llm_tokens = Counter(
            "langgraph_llm_tokens_total",
            "Tokens reported by chat models, by model and type (input, output).",
            ["model", "type"],
            registry=r,
        )
        self.node_duration = Histogram(
            "graphwire_node_duration_seconds",
            "Time a node takes, by graph and node.",
            ["graph", "node"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "graphwire_consumer_lag_records",
            "Requests not yet consumed, per partition (fetch high watermark minus position).",
            ["topic", "partition"],
            registry=r,
        )
        # side effects (graphs/effects.py): alert on in_doubt, it needs a person
        self.effects = Counter(
            "graphwire_effects_total",
            "once() calls, by outcome: called, replayed, in_doubt, failed.",
            ["outcome"],
            registry=r,
        )
        self.deferred = Counter(  # issue 16: after_seconds/run_at are the scheduler's
            "graphwire_deferred_requests_total",
            "Requests with after_seconds or run_at, left to graphwire scheduler.",
            registry=r,
        )

    def graph_label(self, graph: str) -> str:
        """``graph`` if it is registered, else ``unknown`` (names from requests are unbounded)."""
        return graph if graph in self.graph_names else UNKNOWN

    def model_label(self, model: str) -> str:
        """``model`` if it is one of the first ``MAX_MODEL_LABELS`` names seen, else ``other``."""
        if model not in self._model_names:
            if len(self._model_names) >= MAX_MODEL_LABELS:
                return "other"
            self._model_names.add(model)
        return model

    def observe_store(self, kind: str, ops: int, seconds: float) -> None:
        """Count one call of the long-term memory store (``GroupCommitStore.observer``)."""
        self.store_operations.labels(kind).inc(ops)
        self.store_seconds.labels(kind).observe(seconds)

    def event_published(self, type_: str) -> None:
        """Count one published event (label children cached: this is per event)."""
        child = self._event_children.get(type_)
        if child is None:
            child = self._event_children[type_] = self.events.labels(type_)
        child.inc()

    def run_finished(self, graph: str, status: str, seconds: float | None) -> None:
        """Count one finished run, and its duration when it ran (``seconds``; None when it
        was answered without running: only a registered graph runs, so the duration's label
        values stay bounded). The label children are looked up once, not per run."""
        key = (self.graph_label(graph), status)  # bounded: unknown graphs share one key
        child = self._run_children.get(key)
        if child is None:
            child = self._run_children[key] = self.executions.labels(*key)
        child.inc()
        if seconds is not None:
            timer = self._duration_children.get(graph)
            if timer is None:
                timer = self._duration_children[graph] = self.duration.labels(graph)
            timer.observe(seconds)

    def node_finished(self, graph: str, node: str, seconds: float) -> None:
        """Observe one node's duration (per node: the label child is looked up once)."""
        key = (graph, node)
        child = self._node_children.get(key)
        if child is None:
            child = self._node_children[key] = self.node_duration.labels(graph, node)
        child.observe(seconds)


class AuditMetrics:
    """The audit sink's counters, gauges and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "graphwire_audit_records_total", "Records consumed, by topic.", ["topic"], registry=r
        )
        self.rows_written = Counter(
            "graphwire_audit_rows_written_total",
            "Rows inserted or updated in PostgreSQL, by table.",
            ["table"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "graphwire_audit_batch_rows",
            "Rows per batch written.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.write_seconds = Histogram(
            "graphwire_audit_write_duration_seconds",
            "Time to write one batch (one transaction).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.write_failures = Counter(
            "graphwire_audit_write_failures_total",
            "Failed batch writes: 'unavailable' (retried with backoff), 'conflict' (deadlock, "
            "retried at once) or 'data' (rows isolated as dead letters).",
            ["kind"],
            registry=r,
        )
        self.dead_letters = Counter(
            "graphwire_audit_dead_letters_total",
            "Records the sink could not decode, by topic (kept in graphwire_dead_letters).",
            ["topic"],
            registry=r,
        )
        self.lag = Gauge(
            "graphwire_audit_consumer_lag_records",
            "Records not yet written, per partition (high watermark minus next offset).",
            ["topic", "partition"],
            registry=r,
        )
