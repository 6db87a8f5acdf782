"""Secrets and identifiers: API keys, webhook secrets, job and delivery ids."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import threading
import time

API_KEY_PREFIX = "jobd_sk_"
WEBHOOK_SECRET_PREFIX = "whsec_"


def new_api_key() -> str:
    """256 random bits behind a recognisable prefix."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    """Keys are high-entropy random strings, so one SHA-256 is enough to store them."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def display_prefix(api_key: str) -> str:
    """Enough of a key to recognise it in a listing, never enough to use it."""
    return api_key[: len(API_KEY_PREFIX) + 4] + "…"


def new_webhook_secret() -> str:
    """A Standard Webhooks style secret: ``whsec_`` + base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


# base64 with its 64 symbols re-assigned in ASCII order, so that text order is value order
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SORTABLE = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_TO_SORTABLE = bytes.maketrans(_B64, _SORTABLE)


_RANDOM_REFILL = 4096  # bytes read from the OS at a time
_random_pool = bytearray()
_random_lock = threading.Lock()
os.register_at_fork(after_in_child=_random_pool.clear)  # a child never reuses the parent's


def _random_bytes(n: int) -> bytes:
    """``n`` bytes from ``os.urandom``, read 4 KiB at a time; each byte is handed out
    once. One ``getrandom`` call per id would let go of the GIL per id, and the
    writer thread, which makes the ids of a batch, then waits to win it back."""
    with _random_lock:
        if len(_random_pool) < n:
            _random_pool[:] = os.urandom(_RANDOM_REFILL)
        out = bytes(_random_pool[-n:])
        del _random_pool[-n:]
    return out


def _ordered_token() -> str:
    """42 bits of milliseconds (until 2109) then 80 random bits, as 22 URL-safe
    characters whose text order is their value order, so ids made later sort later.
    New rows then land at the right edge of the id index instead of at random pages,
    which makes inserting a job cheaper. 80 random bits per millisecond keep ids
    unguessable. (Not the stdlib's base32: it is pure Python.)"""
    millis = (time.time_ns() // 1_000_000 << 6) & 0xFFFF_FFFF_FFC0  # 42 bits, top of 48
    raw = millis.to_bytes(6, "big") + _random_bytes(10)
    return binascii.b2a_base64(raw, newline=False)[:22].translate(_TO_SORTABLE).decode("ascii")


def new_job_id() -> str:
    """``job_`` + 22 characters: creation time (ms) and 80 random bits."""
    return "job_" + _ordered_token()


def new_delivery_id() -> str:
    """``msg_`` + 22 characters, ordered like job ids."""
    return "msg_" + _ordered_token()
