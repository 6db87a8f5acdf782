"""Bearer API keys: a key names exactly one tenant; disabled tenants are refused."""

from __future__ import annotations

from aiohttp import web

from jobd.errors import Unauthorized
from jobd.models import Tenant
from jobd.store.store import Store


def authenticate(request: web.Request, store: Store) -> Tenant:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send 'Authorization: Bearer <apiKey>'")
    tenant = store.tenant_for_api_key(key)
    if tenant is None:
        raise Unauthorized("the API key is unknown or was revoked")
    if tenant.disabled:
        raise Unauthorized(f"tenant {tenant.id!r} is disabled")
    return tenant
