"""Which webhook URLs graphwire may call: the host allow-list and the address check (SSRF).

``GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS`` is a comma-separated list of host names (``hooks.example.com``),
wildcards for subdomains (``*.example.com``: any name under it, not the name itself) and IP
literals. Empty (the default): every webhook is refused. Webhooks are ``https://``: an entry
written ``http://hooks.internal`` (or ``http://*.svc.local``) also allows that host in cleartext.

Every address a URL's host resolves to must be a public (global unicast) address: private,
loopback, link-local (cloud metadata at 169.254.169.254), shared, reserved, multicast,
unspecified and site-local addresses are refused, and so is an IPv4 address wrapped in IPv6
(IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``) whose IPv4 is not public. This holds for hosts named exactly too: an operator who
means to call a private network lists it in ``GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS``. The check runs
inside the HTTP client's resolver, on the very addresses it connects to, so a name that resolves
to a public address when checked and a private one when connecting (DNS rebinding) cannot slip by
(``resolver.GuardedResolver``). This module is pure: runners and the gateway check with it too.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from graphwire.topics.models import webhook_url_problem

MAX_URL_LENGTH = 2048  # as the request's webhook field
_DESCRIBED_PATH = 120  # characters of a path kept in logs and dead letters
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local-use translation
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


def normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):  # not :: and ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    return None


def non_public_kind(ip: IPAddress) -> str | None:
    """What kind of non-public address ``ip`` is (``"loopback"``, ...), or None when public."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL:
            return "site-local"
        if ip in _NAT64_LOCAL:
            return "reserved"
        inner = embedded_ipv4(ip)
        if inner is not None:
            kind = non_public_kind(inner)
            return None if kind is None else f"{kind} (IPv4 {inner} inside)"
    if ip.is_global and not ip.is_multicast:
        return None
    return next(
        (name for name in ("loopback", "link_local", "private", "multicast", "reserved",
                           "unspecified") if getattr(ip, f"is_{name}")),
        "non-public",
    ).replace("_", "-")


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS: {entry!r} is not a network (write e.g. "
                "10.0.0.0/8 or fd00::/8)") from None
    return tuple(networks)


class WebhookPolicy:
    """The allow-list, parsed once; ``refusal(url)`` says why a URL may not be called."""

    def __init__(self, allowed_hosts: str, private_cidrs: str = "") -> None:
        """Raises ``ValueError`` for a ``private_cidrs`` entry that is not a network."""
        entries = [e.strip().lower() for e in allowed_hosts.split(",") if e.strip()]
        hosts = [normal_host(e.removeprefix("http://")) for e in entries]
        cleartext = [normal_host(e.removeprefix("http://")) for e in entries
                     if e.startswith("http://")]
        self.exact = frozenset(e for e in hosts if not e.startswith("*."))
        self.suffixes = tuple(e[1:] for e in hosts if e.startswith("*."))  # ".example.com"
        self.http_exact = frozenset(e for e in cleartext if not e.startswith("*."))
        self.http_suffixes = tuple(e[1:] for e in cleartext if e.startswith("*."))
        self.private = _networks(private_cidrs)

    @property
    def enabled(self) -> bool:
        """False when the allow-list is empty: every webhook is refused."""
        return bool(self.exact or self.suffixes)

    def named(self, host: str) -> bool:
        """True when the allow-list names ``host`` exactly (not through a wildcard)."""
        return normal_host(host) in self.exact

    def allows_host(self, host: str) -> bool:
        """True when ``host`` is named or under an allowed wildcard."""
        host = normal_host(host)
        return host in self.exact or any(host.endswith(s) for s in self.suffixes)

    def allows_http(self, host: str) -> bool:
        """True when the allow-list lets ``host`` be called over ``http://`` (``http://host``)."""
        host = normal_host(host)
        return host in self.http_exact or any(host.endswith(s) for s in self.http_suffixes)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be a webhook (one sentence with the fix), or None when it may."""
        if len(url) > MAX_URL_LENGTH:
            return (f"webhook URL is longer than {MAX_URL_LENGTH} characters; use a shorter URL "
                    "(the request field allows no more)")
        problem = webhook_url_problem(url)
        if problem is not None:
            return problem
        parts = urlsplit(url)
        host = parts.hostname or ""
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
        if parts.scheme == "http" and not self.allows_http(host):
            return (
                f"webhook {host!r} is http://, which would send results in cleartext; use "
                f"https://, or ask the operator to allow 'http://{host}' in "
                "GRAPHWIRE_WEBHOOK_ALLOWED_HOSTS"
            )
        return None

    def address_refusal(self, host: str, address: str) -> str | None:
        """Why ``host`` may not be called at ``address``, or None when it may."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"webhook host {host!r} resolved to {address!r}, not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        kind = non_public_kind(ip)
        if kind is None or any(ip.version == n.version and ip in n for n in self.private):
            return None
        return (
            f"webhook host {host!r} resolves to the {kind} address {ip}, which graphwire does "
            "not call (SSRF protection); if it is meant to be called, the operator lists its "
            "network in GRAPHWIRE_WEBHOOK_PRIVATE_CIDRS"
        )


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IP address rather than a name."""
    try:
        ipaddress.ip_address(normal_host(host))
    except ValueError:
        return False
    return True


def describe_url(url: str) -> str:
    """``url`` for logs and dead letters: scheme, host, port and path (its first 120
    characters); the query (which may hold a token) left out."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an invalid URL)"
    query = "?…" if parts.query else ""
    path = parts.path if len(parts.path) <= _DESCRIBED_PATH else parts.path[:_DESCRIBED_PATH] + "…"
    return f"{parts.scheme}://{parts.hostname}{port}{path}{query}"


def host_key(url: str) -> str:
    """What per-host limits count by: ``host:port``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"

