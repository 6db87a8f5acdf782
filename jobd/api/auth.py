"""Bearer API keys: a key names exactly one tenant; disabled tenants are refused.

``POST /jobs`` is the hot path, so it authenticates from a small in-memory
cache (entries live ``ttl_s``, a miss reads the database) and the insert
transaction checks the key again, so a rotated key or a disabled tenant is
refused at once all the same. Other endpoints always read the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from jobd.credentials import hash_api_key
from jobd.errors import Unauthorized
from jobd.models import Tenant
from jobd.store.sqlite.store import Store


@dataclass(slots=True)
class Caller:
    tenant: Tenant
    key_hash: str


class TenantDirectory:
    """Finds the tenant of an API key. ``fresh=False`` may answer from a cache whose
    entries live ``ttl_s``; it is keyed by the key as sent, so a hit costs no hashing
    (the keys are in this process's memory for that second anyway, as each request is)."""

    def __init__(self, store: Store, ttl_s: float = 1.0) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[Caller, float]] = {}

    def lookup(self, key: str, *, fresh: bool) -> Caller | None:
        now = time.monotonic()
        if not fresh:
            hit = self._cache.get(key)
            if hit is not None and now - hit[1] < self._ttl_s:
                return hit[0]
        key_hash = hash_api_key(key)
        tenant = self._store.tenant_for_key_hash(key_hash)
        if tenant is None:
            self._cache.pop(key, None)
            return None
        caller = Caller(tenant, key_hash)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (caller, now)
        return caller


def authenticate(request: web.Request, directory: TenantDirectory, *, fresh: bool = True) -> Caller:
    return authenticate_key(request.headers.get("Authorization", ""), directory, fresh=fresh)


def authenticate_key(header: str, directory: TenantDirectory, *, fresh: bool = True) -> Caller:
    """The caller named by an ``Authorization`` header's value."""
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send 'Authorization: Bearer <apiKey>'")
    if not key.isascii():  # (a byte 0x80-0xFF arrives from aiohttp as a lone surrogate)
        raise Unauthorized("the API key is unknown or was revoked")
    caller = directory.lookup(key, fresh=fresh)
    if caller is None:
        raise Unauthorized("the API key is unknown or was revoked")
    if caller.tenant.disabled:
        raise Unauthorized(f"tenant {caller.tenant.id!r} is disabled")
    return caller
