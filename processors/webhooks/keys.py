"""SigningKeys: the webhook signing keys of every caller, derived from the operator's master
secrets (``GRAPHWIRE_WEBHOOK_SECRET``, and ``GRAPHWIRE_WEBHOOK_PREVIOUS_SECRETS`` while rotating).

Nothing is stored: a caller's key is ``signing_key(master, scope)`` (``graphwire.topics.webhooks``),
so the webhook processor, the gateway (which shows a caller its key) and the operator's CLI
compute the same key from the same secret. Rotation: put a new master in
``GRAPHWIRE_WEBHOOK_SECRET`` and the old one in ``GRAPHWIRE_WEBHOOK_PREVIOUS_SECRETS``; every
delivery is then signed with both (``v2=<new>, v2=<old>``), so receivers holding the old key keep
verifying until they have fetched the new one; then drop the previous secret.
"""

from __future__ import annotations

from graphwire.processors.settings import Settings
from graphwire.topics.errors import GraphwireError
from graphwire.topics.webhooks import scope_of, sign_webhook, signing_key


class SigningKeys:
    """The master secrets, newest first; the keys and signatures derived from them."""

    def __init__(self, master: str, previous: list[str] | None = None) -> None:
        if not master:
            raise GraphwireError(
                "GRAPHWIRE_WEBHOOK_SECRET is not set: webhooks are signed with keys derived "
                "from it; set it to a long random value (e.g. `openssl rand -hex 32`)"
            )
        self._masters = [master.encode(), *(p.encode() for p in previous or [] if p)]

    @classmethod
    def from_settings(cls, settings: Settings) -> SigningKeys:
        """Raises ``GraphwireError`` (saying what to set) when there is no master secret."""
        master = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        previous = (settings.webhook_previous_secrets.get_secret_value()
                    if settings.webhook_previous_secrets else "")
        return cls(master, [p.strip() for p in previous.split(",") if p.strip()])

    def key(self, scope: str) -> str:
        """The current signing key of ``scope``."""
        return signing_key(self._masters[0], scope)

    def signature(self, request_id: str, timestamp: int, body: bytes, *, delivery_id: str,
                  url: str) -> str:
        """The ``X-Graphwire-Signature`` value: one ``v2=`` per master secret, newest first,
        with the keys of ``request_id``'s caller."""
        scope = scope_of(request_id)
        return ", ".join(
            sign_webhook(signing_key(master, scope), timestamp, body, delivery_id=delivery_id,
                         url=url)
            for master in self._masters
        )
