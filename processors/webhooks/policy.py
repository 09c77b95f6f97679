"""Which webhook URLs graphwire may call: the host allow-list and the address check (SSRF).

``GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS`` is a comma-separated list of host names (``hooks.example.com``),
wildcards for subdomains (``*.example.com``: any name under it, not the name itself) and IP
literals. Empty (the default): every webhook is refused.

Every name a URL's host resolves to must be a public (global unicast) address: private,
loopback, link-local (cloud metadata at 169.254.169.254), shared, reserved, multicast and
unspecified addresses are refused, unless the allow-list names that host exactly (not through a
wildcard): an operator who writes ``hooks.internal`` or ``10.0.0.7`` there means it. The check runs
inside the HTTP client's resolver, on the very addresses it connects to, so a name that resolves
to a public address when checked and a private one when connecting (DNS rebinding) cannot slip by
(``resolver.GuardedResolver``). This module is pure: runners and the gateway check with it too.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from graphwire.topics.models import webhook_url_problem


def normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class WebhookPolicy:
    """The allow-list, parsed once; ``refusal(url)`` says why a URL may not be called."""

    def __init__(self, allowed_hosts: str) -> None:
        entries = [normal_host(e) for e in allowed_hosts.split(",") if e.strip()]
        self.exact = frozenset(e for e in entries if not e.startswith("*."))
        self.suffixes = tuple(e[1:] for e in entries if e.startswith("*."))  # ".example.com"

    @property
    def enabled(self) -> bool:
        """False when the allow-list is empty: every webhook is refused."""
        return bool(self.exact or self.suffixes)

    def named(self, host: str) -> bool:
        """True when the allow-list names ``host`` exactly (private addresses allowed then)."""
        return normal_host(host) in self.exact

    def allows_host(self, host: str) -> bool:
        """True when ``host`` is named or under an allowed wildcard."""
        host = normal_host(host)
        return host in self.exact or any(host.endswith(s) for s in self.suffixes)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be a webhook (one sentence with the fix), or None when it may."""
        problem = webhook_url_problem(url)
        if problem is not None:
            return problem
        host = urlsplit(url).hostname or ""
        if not self.enabled:
            return (
                "webhooks are not enabled here: GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS is empty; ask the "
                f"operator to allow {host!r}, or send the request without a webhook"
            )
        if not self.allows_host(host):
            return (
                f"webhook host {host!r} is not in GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS; use an allowed "
                "host or ask the operator to add it"
            )
        return None

    def address_refusal(self, host: str, address: str) -> str | None:
        """Why ``host`` may not be called at ``address``, or None when it may."""
        if self.named(host):
            return None
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"webhook host {host!r} resolved to {address!r}, not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_global and not ip.is_multicast:
            return None
        kind = next(
            (name for name in ("loopback", "link_local", "private", "multicast", "reserved",
                               "unspecified") if getattr(ip, f"is_{name}")),
            "non-public",
        ).replace("_", "-")
        return (
            f"webhook host {host!r} resolves to the {kind} address {ip}, which graphwire does "
            "not call (SSRF protection); name the host exactly in GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS "
            "if it is meant to be called"
        )


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IP address rather than a name."""
    try:
        ipaddress.ip_address(normal_host(host))
    except ValueError:
        return False
    return True


def describe_url(url: str) -> str:
    """``url`` for logs and dead letters: scheme, host, port and path; the query (which may hold
    a token) left out."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an invalid URL)"
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}{query}"


def host_key(url: str) -> str:
    """What per-host limits count by: ``host:port``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"

