"""Prometheus metrics of ``graphwire scheduler`` (names end in their unit)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)


class SchedulerMetrics:
    """The scheduler's counters and gauges, on a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.leader = Gauge(
            "graphwire_scheduler_leader", "1 while this replica is the leader, else 0.",
            registry=r,
        )
        self.stored = Counter(
            "graphwire_scheduler_stored_total",
            "Requests stored to run later, by source (request: after_seconds/run_at; cron).",
            ["source"], registry=r,
        )
        self.fired = Counter(
            "graphwire_scheduler_fired_total",
            "Stored requests produced to the requests topic, by source.",
            ["source"], registry=r,
        )
        self.missed = Counter(
            "graphwire_scheduler_missed_firings_total",
            "Cron firings missed while no scheduler ran, by what the cron's policy did.",
            ["policy"], registry=r,
        )
        self.skipped = Counter(
            "graphwire_scheduler_skipped_firings_total",
            "Cron firings not produced, by reason (rate_limited: the cron's owner was over "
            "its gateway rate limit).",
            ["reason"], registry=r,
        )
        self.lateness = Histogram(
            "graphwire_scheduler_lateness_seconds",
            "How long after its due time a request was produced.",
            buckets=_LATENESS_BUCKETS, registry=r,
        )
        self.pending = Gauge(
            "graphwire_scheduler_pending_requests",
            "Stored requests not produced yet (as the leader last counted).",
            registry=r,
        )
        self.errors = Counter(
            "graphwire_scheduler_errors_total",
            "PostgreSQL or Kafka failures the scheduler waited out, by where.",
            ["stage"], registry=r,
        )
