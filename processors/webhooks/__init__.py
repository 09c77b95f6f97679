"""The webhook processor (``graphwire webhooks``): POSTs results to the webhooks requests name.

- ``dispatcher``  ``WebhookDispatcher``: the consumer group on the results topic, offsets, dead
  letters
- ``delivery``    ``WebhookSender``: one signed POST with retries, per-host limits, hosts down
- ``policy``      ``WebhookPolicy``: the host allow-list and the address check (SSRF); pure, so
  runners and the gateway refuse with the same rules
- ``resolver``    ``GuardedResolver``: the address check inside aiohttp's DNS resolution
- ``metrics``     ``WebhookMetrics``

The signature scheme and ``verify_webhook`` for receivers are in ``graphwire.topics.webhooks``.
"""
