"""Which Kafka errors the output publisher retries and which it gives up on."""

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)

from graphwire.processors.runner.publisher import _can_succeed_later


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (KafkaConnectionError(), True),
        (KafkaTimeoutError(), True),
        (NotLeaderForPartitionError(), True),
        (TopicAuthorizationFailedError(), False),
        (MessageSizeTooLargeError(), False),
    ],
)
def test_retries_only_what_can_succeed_later(error: Exception, retry: bool) -> None:
    """Lost connections and leader moves are retried; refusals become PublishFailed."""
    assert _can_succeed_later(error) is retry  # type: ignore[arg-type]
