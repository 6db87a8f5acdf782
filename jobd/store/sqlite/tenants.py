"""Tenant transactions. Each function runs inside a transaction the caller opened."""

from __future__ import annotations

import sqlite3

from jobd import credentials
from jobd.errors import AlreadyExists, NotFound
from jobd.models import NewTenant, Tenant
from jobd.store import rows
from jobd.store.sqlite.queries import Q


def create_tenant(conn: sqlite3.Connection, tenant_id: str, *, rate: float, burst: int,
                  max_concurrency: int | None, now: float) -> NewTenant:
    api_key = credentials.new_api_key()
    try:
        conn.execute(Q["tenant_insert"], {
            "id": tenant_id, "api_key_hash": credentials.hash_api_key(api_key),
            "api_key_prefix": credentials.display_prefix(api_key),
            "webhook_secret": credentials.new_webhook_secret(), "rate": rate, "burst": burst,
            "max_concurrency": max_concurrency, "now": now,
        })
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"tenant {tenant_id!r} already exists") from None
    return NewTenant(tenant=get_tenant(conn, tenant_id), api_key=api_key)


def webhook_secret(conn: sqlite3.Connection, tenant_id: str) -> str | None:
    found = conn.execute(Q["tenant_webhook_secret"], (tenant_id,)).fetchall()
    return str(found[0][0]) if found else None


def find_tenant(conn: sqlite3.Connection, tenant_id: str) -> Tenant | None:
    found = conn.execute(Q["tenant_get"], (tenant_id,)).fetchall()
    return rows.tenant(found[0]) if found else None


def get_tenant(conn: sqlite3.Connection, tenant_id: str) -> Tenant:
    tenant = find_tenant(conn, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} does not exist")
    return tenant


def list_tenants(conn: sqlite3.Connection) -> list[Tenant]:
    return [rows.tenant(r) for r in conn.execute(Q["tenant_list"]).fetchall()]


def tenant_for_key_hash(conn: sqlite3.Connection, key_hash: str) -> Tenant | None:
    found = conn.execute(Q["tenant_by_key_hash"], (key_hash,)).fetchall()
    return rows.tenant(found[0]) if found else None


def update_tenant_limits(conn: sqlite3.Connection, tenant_id: str, *, rate: float | None,
                         burst: int | None, max_concurrency: int | None,
                         clear_max_concurrency: bool, now: float) -> Tenant:
    current = get_tenant(conn, tenant_id)
    cap = None if clear_max_concurrency else (max_concurrency or current.max_concurrency)
    conn.execute(Q["tenant_update_limits"], {
        "id": tenant_id, "rate": current.rate if rate is None else rate,
        "burst": current.burst if burst is None else burst, "max_concurrency": cap, "now": now,
    })
    return get_tenant(conn, tenant_id)


def set_tenant_disabled(conn: sqlite3.Connection, tenant_id: str, *, disabled: bool,
                        now: float) -> Tenant:
    get_tenant(conn, tenant_id)
    conn.execute(Q["tenant_set_disabled"], {"id": tenant_id, "disabled": int(disabled), "now": now})
    return get_tenant(conn, tenant_id)


def rotate_api_key(conn: sqlite3.Connection, tenant_id: str, *, now: float) -> NewTenant:
    get_tenant(conn, tenant_id)
    api_key = credentials.new_api_key()
    conn.execute(Q["tenant_set_key"], {
        "id": tenant_id, "api_key_hash": credentials.hash_api_key(api_key),
        "api_key_prefix": credentials.display_prefix(api_key), "now": now,
    })
    return NewTenant(tenant=get_tenant(conn, tenant_id), api_key=api_key)
