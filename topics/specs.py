"""Topic names and the configuration each topic is created with."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How one topic should look: name, partition count and topic-level configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The graphwire topics under one prefix (``GRAPHWIRE_TOPIC_PREFIX``)."""

    prefix: str = "graphwire"

    @property
    def requests(self) -> str:
        """Requests in, keyed by thread_id or request_id."""
        return f"{self.prefix}.requests"

    @property
    def events(self) -> str:
        """Per-node events out, keyed by request_id."""
        return f"{self.prefix}.events"

    @property
    def results(self) -> str:
        """Results out, keyed by request_id."""
        return f"{self.prefix}.results"

    @property
    def dlq(self) -> str:
        """Dead letters: original bytes and headers plus the reason."""
        return f"{self.prefix}.dlq"

    @property
    def control(self) -> str:
        """Control messages in (cancel), keyed by request_id; consumed by the runners' group."""
        return f"{self.prefix}.control"

    def specs(self, partitions: int, replication_factor: int = 1) -> list[TopicSpec]:
        """Specs for all topics; requests/events/results share the partition count."""
        week = str(7 * 24 * 3600 * 1000)
        month = str(30 * 24 * 3600 * 1000)
        return [
            TopicSpec(self.requests, partitions, {"retention.ms": week}),
            TopicSpec(self.events, partitions, {"retention.ms": week}),
            TopicSpec(self.results, partitions, {"retention.ms": week}),
            TopicSpec(self.dlq, max(1, partitions // 4), {"retention.ms": month}),
            TopicSpec(self.control, max(1, partitions // 4), {"retention.ms": week}),
        ]
