"""GuardedResolver: aiohttp's resolver with the webhook policy's address check (SSRF)."""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from graphwire.processors.webhooks.policy import WebhookPolicy, is_ip_literal, normal_host


class AddressRefused(OSError):
    """A webhook host resolved to an address graphwire does not call (raised by the resolver)."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing addresses the policy does not allow (``AddressRefused``)."""

    def __init__(self, policy: WebhookPolicy, resolver: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if is_ip_literal(host):  # aiohttp does not ask for these; a direct caller may
            address = normal_host(host)
            ip_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            results: list[ResolveResult] = [
                {"hostname": host, "host": address, "port": port, "family": ip_family,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}
            ]
        else:
            results = await self._resolver.resolve(host, port, family)
        for result in results:
            refusal = self._policy.address_refusal(host, result["host"])
            if refusal is not None:
                raise AddressRefused(refusal)
        return results

    async def close(self) -> None:
        await self._resolver.close()
