"""Bearer API keys: a key names exactly one tenant; disabled tenants are refused.

``POST /jobs`` is the hot path, so it authenticates from a small in-memory
cache (entries live ``ttl_s``, a miss reads the database) and the insert
transaction checks the key again, so a rotated key or a disabled tenant is
refused at once all the same. Other endpoints always read the database.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

from aiohttp import web

from jobd.api.futures import then
from jobd.credentials import hash_api_key
from jobd.errors import Unauthorized
from jobd.models import Tenant
from jobd.store.backend import Backend

CACHE_MAX = 10_000  # keys cached at once; past that the cache starts over


@dataclass(slots=True)
class Caller:
    tenant: Tenant
    key_hash: str


class TenantDirectory:
    """Finds the tenant of an API key: from a cache whose entries live ``ttl_s``
    (:meth:`cached`), or from the database (:meth:`lookup`, which also fills the cache).
    The cache is keyed by the key as sent, so a hit costs no hashing (the keys are in
    this process's memory for that second anyway, as each request is)."""

    def __init__(self, store: Backend, ttl_s: float = 1.0) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[Caller, float]] = {}

    def cached(self, key: str) -> Caller | None:
        """The caller of ``key`` if the cache holds it and its entry is fresh."""
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[1] < self._ttl_s:
            return hit[0]
        return None

    def forget(self) -> None:
        """Drop every cached key (a tenant changed elsewhere: another node, the CLI)."""
        self._cache.clear()

    def lookup(self, key: str) -> asyncio.Future[Caller | None]:
        """The database's answer for ``key`` (None: no tenant holds it), kept in the cache."""
        key_hash = hash_api_key(key)
        return then(self._store.tenant_for_key_hash(key_hash),
                    functools.partial(self._remember, key, key_hash))

    def _remember(self, key: str, key_hash: str, tenant: Tenant | None) -> Caller | None:
        if tenant is None:
            self._cache.pop(key, None)
            return None
        caller = Caller(tenant, key_hash)
        if len(self._cache) > CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (caller, time.monotonic())
        return caller


def bearer_key(header: str) -> str:
    """The API key of an ``Authorization`` header's value; Unauthorized for any other form."""
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send 'Authorization: Bearer <apiKey>'")
    if not key.isascii():  # (a byte 0x80-0xFF arrives from aiohttp as a lone surrogate)
        raise Unauthorized("the API key is unknown or was revoked")
    return key


def authorized(caller: Caller | None) -> Caller:
    """``caller``, if there is one and its tenant may call the API."""
    if caller is None:
        raise Unauthorized("the API key is unknown or was revoked")
    if caller.tenant.disabled:
        raise Unauthorized(f"tenant {caller.tenant.id!r} is disabled")
    return caller


async def authenticate(request: web.Request, directory: TenantDirectory) -> Caller:
    """The caller of an aiohttp request, read from the database."""
    key = bearer_key(request.headers.get("Authorization", ""))
    return authorized(await directory.lookup(key))
