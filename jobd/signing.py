"""Webhook signatures: a simple ``X-Signature`` header plus Standard Webhooks.

* ``X-Signature: sha256=<hex HMAC-SHA256(secret, body)>``
* ``webhook-id`` / ``webhook-timestamp`` / ``webhook-signature`` as specified by
  https://www.standardwebhooks.com/ (``v1,<base64 HMAC-SHA256>`` over
  ``"{id}.{timestamp}.{body}"``), so the official verifier libraries accept them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

_WHSEC_PREFIX = "whsec_"


def x_signature(secret: str, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of ``body`` keyed with the UTF-8 secret."""
    mac = _keyed(secret, standard=False).copy()
    mac.update(body)
    return "sha256=" + mac.hexdigest()


@functools.lru_cache(maxsize=1024)
def _keyed(secret: str, *, standard: bool) -> hmac.HMAC:
    """An HMAC-SHA256 with the key already mixed in, to ``copy()`` for each message:
    a tenant's deliveries share a secret, and setting the key up is most of the cost
    of signing a webhook body."""
    if standard and secret.startswith(_WHSEC_PREFIX):
        key = base64.b64decode(secret[len(_WHSEC_PREFIX) :])
    else:
        key = secret.encode("utf-8")
    return hmac.new(key, digestmod=hashlib.sha256)


def standard_webhook_signature(
    secret: str, msg_id: str, timestamp: int, body: bytes
) -> str:
    """Standard Webhooks ``webhook-signature`` value (``v1,<base64>``)."""
    mac = _keyed(secret, standard=True).copy()
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


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
