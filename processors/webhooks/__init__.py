"""The webhook processor (``graphwire webhooks``): POSTs results to the webhooks requests name.

- ``dispatcher``  ``WebhookDispatcher``: the results topic's consumer group (a
  ``graphwire.processors.consumer.GroupConsumer``), fair shares per host and caller, dead letters
- ``delivery``    ``WebhookSender``: one signed POST with retries, per-host limits, hosts down
- ``policy``      ``WebhookPolicy``: the host allow-list and the address check (SSRF); pure, so
  runners and the gateway refuse with the same rules
- ``resolver``    ``GuardedResolver``: the address check inside aiohttp's DNS resolution
- ``metrics``     ``WebhookMetrics``

The signature scheme and ``verify_webhook`` for receivers are in ``graphwire.topics.webhooks``.
"""
