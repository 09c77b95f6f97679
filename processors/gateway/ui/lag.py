"""Consumer lag per partition for the Overview page: the runners' group on the requests topic
and the audit sink's group on the four topics, read from Kafka (committed offsets and log end
offsets), kept for a few seconds so a page that refreshes does not ask the broker each time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from graphwire.processors.gateway.ui.models import PartitionLag

KEEP_S = 5.0
TIMEOUT_S = 5.0


class LagReader:
    """``read()``: lag per (group, topic, partition), cached for ``KEEP_S``."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self._kept: tuple[float, list[PartitionLag]] | None = None
        self._lock = asyncio.Lock()

    def groups(self) -> dict[str, list[str]]:
        topics = self._settings.topics
        return {self._settings.group_id: [topics.requests],
                self._settings.audit_group_id: [topics.requests, topics.results,
                                                topics.events, topics.dlq]}

    async def read(self) -> list[PartitionLag]:
        """Raises on a broker that does not answer within ``TIMEOUT_S``."""
        async with self._lock:
            if self._kept is not None and time.monotonic() - self._kept[0] < KEEP_S:
                return self._kept[1]
            found = await asyncio.wait_for(self._read(), TIMEOUT_S)
            self._kept = (time.monotonic(), found)
            return found

    async def _read(self) -> list[PartitionLag]:
        options = {"bootstrap_servers": self._settings.bootstrap_servers,
                   **self._settings.kafka_security()}
        consumer = AIOKafkaConsumer(enable_auto_commit=False, **options)
        admin = AIOKafkaAdminClient(**options)
        await consumer.start()
        try:
            await admin.start()
            try:
                await consumer.topics()
                wanted = {t for topics in self.groups().values() for t in topics}
                tps = [TopicPartition(t, p) for t in sorted(wanted)
                       for p in sorted(consumer.partitions_for_topic(t) or ())]
                ends = await self._log_ends(consumer, tps)
                found: list[PartitionLag] = []
                for group, topics in self.groups().items():
                    mine = [tp for tp in tps if tp.topic in topics]
                    if not mine:
                        continue
                    committed = await admin.list_consumer_group_offsets(group, partitions=mine)
                    for tp in mine:
                        meta = committed.get(tp)
                        done = meta.offset if meta is not None and meta.offset >= 0 else None
                        found.append(PartitionLag(group=group, topic=tp.topic,
                                                  partition=tp.partition, committed=done,
                                                  end=ends[tp],
                                                  lag=max(0, ends[tp] - (done or 0))))
                return found
            finally:
                await admin.close()
        finally:
            await consumer.stop()

    @staticmethod
    async def _log_ends(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[Any, int]:
        """Each partition's high watermark, as a fetch reports it. ``end_offsets`` alone is not
        enough: some Kafka-protocol brokers (Tansu) answer ListOffsets with the last batch's
        base offset, short of the end by the batch's other records."""
        if not tps:
            return {}
        listed = await consumer.end_offsets(tps)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(0, listed[tp] - 1))
        await consumer.getmany(*tps, timeout_ms=300, max_records=len(tps))
        return {tp: max(int(listed[tp]), consumer.highwater(tp) or 0) for tp in tps}
