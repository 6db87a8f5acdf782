"""Tenant transitions and reads, each one statement."""

from __future__ import annotations

import asyncpg

from jobd import credentials
from jobd.errors import AlreadyExists, NotFound
from jobd.models import NewTenant, Tenant
from jobd.store import rows
from jobd.store.postgres.queries import Q


async def create_tenant(conn: asyncpg.Connection, tenant_id: str, *, rate: float, burst: int,
                        max_concurrency: int | None, now: float) -> NewTenant:
    api_key = credentials.new_api_key()
    try:
        row = await conn.fetchrow(Q["tenant_insert"], tenant_id, credentials.hash_api_key(api_key),
                                  credentials.display_prefix(api_key),
                                  credentials.new_webhook_secret(), rate, burst, max_concurrency,
                                  now)
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"tenant {tenant_id!r} already exists") from None
    return NewTenant(tenant=rows.tenant(row), api_key=api_key)


async def find_tenant(conn: asyncpg.Connection, tenant_id: str) -> Tenant | None:
    row = await conn.fetchrow(Q["tenant_get"], tenant_id)
    return rows.tenant(row) if row else None


async def list_tenants(conn: asyncpg.Connection) -> list[Tenant]:
    return [rows.tenant(r) for r in await conn.fetch(Q["tenant_list"])]


async def tenant_for_key_hash(conn: asyncpg.Connection, key_hash: str) -> Tenant | None:
    row = await conn.fetchrow(Q["tenant_by_key_hash"], key_hash)
    return rows.tenant(row) if row else None


async def webhook_secret(conn: asyncpg.Connection, tenant_id: str) -> str | None:
    secret: str | None = await conn.fetchval(Q["tenant_webhook_secret"], tenant_id)
    return secret


async def update_tenant_limits(conn: asyncpg.Connection, tenant_id: str, *, rate: float | None,
                               burst: int | None, max_concurrency: int | None,
                               clear_max_concurrency: bool, now: float) -> Tenant:
    """Limits left None keep their value; a ``max_concurrency`` of 0 keeps the cap too."""
    row = await conn.fetchrow(Q["tenant_update_limits"], tenant_id, rate, burst,
                              clear_max_concurrency, max_concurrency, now)
    return _updated(row, tenant_id)


async def set_tenant_disabled(conn: asyncpg.Connection, tenant_id: str, *, disabled: bool,
                              now: float) -> Tenant:
    return _updated(await conn.fetchrow(Q["tenant_set_disabled"], tenant_id, disabled, now),
                    tenant_id)


async def rotate_api_key(conn: asyncpg.Connection, tenant_id: str, *, now: float) -> NewTenant:
    api_key = credentials.new_api_key()
    row = await conn.fetchrow(Q["tenant_set_key"], tenant_id, credentials.hash_api_key(api_key),
                              credentials.display_prefix(api_key), now)
    return NewTenant(tenant=_updated(row, tenant_id), api_key=api_key)


def _updated(row: asyncpg.Record | None, tenant_id: str) -> Tenant:
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} does not exist")
    return rows.tenant(row)
