"""The consumer-group member that the runner and the webhook processor share.

Both read a topic as a group, hold each message until their own work on it is finished, and
commit only below every unfinished one. What they do with a message is theirs; how it is
fetched, paused, committed and handed over on revoke is here, once.

- ``group``    ``GroupConsumer``: the consumer settings, polling with a pause at the in-flight
  limit, the commit loop, the revoke hand-over and the lag gauge
- ``offsets``  ``OffsetTracker``: commit only below every unfinished message; ``RevokeListener``
- ``stalls``   ``Stalls``: a partition held at a message that cannot be finished, rewound and
  fetched again with backoff (the runner's)

It imports nothing from the processors that use it.
"""

from graphwire.processors.consumer.group import GroupConsumer
from graphwire.processors.consumer.offsets import OffsetTracker, RevokeListener
from graphwire.processors.consumer.stalls import Stalls

__all__ = ["GroupConsumer", "OffsetTracker", "RevokeListener", "Stalls"]
