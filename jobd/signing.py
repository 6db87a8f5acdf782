"""Webhook signatures: a simple ``X-Signature`` header plus Standard Webhooks.

* ``X-Signature: sha256=<hex HMAC-SHA256(secret, body)>``
* ``webhook-id`` / ``webhook-timestamp`` / ``webhook-signature`` as specified by
  https://www.standardwebhooks.com/ (``v1,<base64 HMAC-SHA256>`` over
  ``"{id}.{timestamp}.{body}"``), so the official verifier libraries accept them.
"""

from __future__ import annotations

import base64
import functools
import hmac

_WHSEC_PREFIX = "whsec_"


def x_signature(secret: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of ``body`` keyed with the UTF-8 secret."""
    return "sha256=" + hmac.digest(secret.encode("utf-8"), body, "sha256").hex()


@functools.lru_cache(maxsize=1024)
def _standard_key(secret: str) -> bytes:
    if secret.startswith(_WHSEC_PREFIX):
        return base64.b64decode(secret[len(_WHSEC_PREFIX) :])
    return secret.encode("utf-8")


def standard_webhook_signature(
    secret: str, msg_id: str, timestamp: int, body: bytes
) -> str:
    """Standard Webhooks ``webhook-signature`` value (``v1,<base64>``)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.digest(_standard_key(secret), signed, "sha256")  # one-shot, in C
    return "v1," + base64.b64encode(mac).decode("ascii")


def signature_headers(
    secret: str, msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """All signature headers for one webhook delivery."""
    return {
        "X-Signature": x_signature(secret, body),
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_webhook_signature(
            secret, msg_id, timestamp, body
        ),
    }


def verify_x_signature(secret: str, body: bytes, header: str) -> bool:
    """Constant-time check of an ``X-Signature`` header value."""
    expected = x_signature(secret, body)
    return hmac.compare_digest(expected.encode("ascii"), header.strip().encode("utf-8"))
