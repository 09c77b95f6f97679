"""Prometheus metrics of the webhook processor (names end in their unit)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class WebhookMetrics:
    """Deliveries by outcome, attempt and delivery latency, retries, lag and in-flight."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "graphwire_webhook_deliveries_total",
            "Results finished by the webhook processor, by outcome: delivered (2xx), "
            "dead_lettered (gave up, see the dlq), skipped (no webhook).",
            ["outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "graphwire_webhook_attempts_total",
            "HTTP attempts, by result: 2xx, 3xx, 4xx, 5xx, timeout, connection, refused.",
            ["result"],
            registry=r,
        )
        self.retries = Counter(
            "graphwire_webhook_retries_total",
            "Attempts retried after a retriable failure, by reason.",
            ["reason"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "graphwire_webhook_attempt_duration_seconds",
            "Time of one HTTP attempt (connect, send, answer).",
            buckets=_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "graphwire_webhook_delivery_latency_seconds",
            "From the result's Kafka timestamp to its accepted delivery (queue wait and retries).",
            buckets=_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "graphwire_webhook_consumer_lag_records",
            "Results not fetched yet, by partition (the fetch's high watermark).",
            ["topic", "partition"],
            registry=r,
        )
        self.in_flight = Gauge(
            "graphwire_webhook_in_flight_results",
            "Results held: being delivered or waiting for a retry.",
            registry=r,
        )
        self.hosts_down = Gauge(
            "graphwire_webhook_hosts_down",
            "Hosts whose recent deliveries all gave up (one attempt each until one succeeds).",
            registry=r,
        )
        self.slow_answers = Counter(
            "graphwire_webhook_slow_answers_total",
            "Accepted answers slower than GRAPHWIRE_WEBHOOK_SLOW_S (counted against the host).",
            registry=r,
        )
        self.queued = Gauge(
            "graphwire_webhook_queued_results",
            "Results waiting for a busy host (holding no in-flight slot).",
            registry=r,
        )
        self.dead_letter_failures = Counter(
            "graphwire_webhook_dead_letter_failures_total",
            "Dead letters that could not be published yet (retried; the offset waits).",
            registry=r,
        )
        self.commits = Counter(
            "graphwire_webhook_commits_total", "Offset commits, by outcome.", ["outcome"],
            registry=r,
        )
