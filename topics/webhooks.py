"""The webhook contract: how ``graphwire webhooks`` signs the results it POSTs, and how a
receiver checks them (``verify_webhook``).

A delivery is ``POST <webhook URL>`` with the result JSON (exactly the bytes on the results
topic) as the body and these headers:

- ``X-Graphwire-Delivery``: the delivery id, the same on every attempt and every redelivery of
  one result message (dedupe on it);
- ``X-Graphwire-Request-Id``: the request's id (also in the body);
- ``X-Graphwire-Attempt``: 1, 2, ... for this delivery;
- ``X-Graphwire-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Graphwire-Signature``: ``v1=<hex>``, the HMAC-SHA256 keyed by ``GRAPHWIRE_WEBHOOK_SECRET``
  over ``<timestamp>.<body>`` (the timestamp's decimal digits, a dot, the raw body bytes).

A receiver recomputes the HMAC over the raw body it read, compares in constant time, and
refuses a timestamp too far from its clock (a replayed capture). In any language::

    expected = hex(hmac_sha256(secret, timestamp + "." + body))
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

import orjson

from graphwire.topics.errors import GraphwireError

HEADER_WEBHOOK = "x-graphwire-webhook"
"""Kafka header on a result message: the URL its request asked the result to be POSTed to."""

DELIVERY_HEADER = "X-Graphwire-Delivery"
REQUEST_ID_HEADER = "X-Graphwire-Request-Id"
ATTEMPT_HEADER = "X-Graphwire-Attempt"
TIMESTAMP_HEADER = "X-Graphwire-Timestamp"
SIGNATURE_HEADER = "X-Graphwire-Signature"
SIGNATURE_VERSION = "v1"


class WebhookSignatureError(GraphwireError):
    """A webhook delivery whose signature or timestamp does not check out: answer 401."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign_webhook(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Graphwire-Signature`` value for ``body`` signed at ``timestamp``."""
    digest = hmac.new(_key(secret), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: look the name up without regard to case
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | bytes,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery's signature and timestamp; the result it carries, decoded.

    ``body`` must be the raw request body (before any JSON parsing), ``headers`` the request's
    headers. Raises ``WebhookSignatureError`` when a header is missing, the signature does not
    match, or the timestamp is more than ``tolerance_s`` from ``now`` (default: the clock).
    """
    timestamp, signature = _header(headers, TIMESTAMP_HEADER), _header(headers, SIGNATURE_HEADER)
    if not timestamp or not signature:
        raise WebhookSignatureError(
            f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}: not a graphwire webhook delivery"
        )
    if not timestamp.isdigit():
        raise WebhookSignatureError(f"{TIMESTAMP_HEADER} is not Unix seconds: {timestamp[:40]!r}")
    expected = sign_webhook(secret, int(timestamp), body)
    given = [part.strip() for part in signature.split(",")]  # room for a second, rotated key
    if not any(hmac.compare_digest(expected, part) for part in given):
        raise WebhookSignatureError(
            "signature does not match the body: check that the receiver uses the same "
            "GRAPHWIRE_WEBHOOK_SECRET and verifies the raw body bytes"
        )
    skew = abs((time.time() if now is None else now) - int(timestamp))
    if skew > tolerance_s:
        raise WebhookSignatureError(
            f"timestamp is {skew:.0f}s away from this clock (tolerance {tolerance_s:g}s): a "
            "replayed delivery, or a clock to fix"
        )
    result: dict[str, Any] = orjson.loads(body)
    return result
