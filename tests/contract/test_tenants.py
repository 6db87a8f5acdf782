"""Tenants: create, duplicate, limits, disable, key rotation and lookup."""

from __future__ import annotations

from typing import Any

import pytest

from jobd import credentials
from jobd.errors import AlreadyExists, NotFound
from jobd.store.backend import Backend
from tests.conftest import T0
from tests.contract.helpers import tenant


async def test_create_returns_the_tenant_and_its_key_once(backend: Backend) -> None:
    created = await backend.create_tenant("acme", rate=5.5, burst=7, max_concurrency=3, now=T0)
    t = created.tenant
    assert (t.id, t.rate, t.burst, t.max_concurrency, t.disabled) == ("acme", 5.5, 7, 3, False)
    assert t.created_at == t.updated_at == T0
    assert t.api_key_prefix == credentials.display_prefix(created.api_key)
    assert t.webhook_secret
    assert await backend.find_tenant("acme") == t
    assert await backend.tenant_for_key_hash(credentials.hash_api_key(created.api_key)) == t
    assert await backend.webhook_secret("acme") == t.webhook_secret


async def test_a_duplicate_id_already_exists(backend: Backend) -> None:
    first = await tenant(backend, "acme")
    with pytest.raises(AlreadyExists, match="acme"):
        await tenant(backend, "acme", rate=1)
    assert await backend.find_tenant("acme") == first.tenant


async def test_unknown_tenants_and_keys(backend: Backend) -> None:
    assert await backend.find_tenant("nobody") is None
    assert await backend.tenant_for_key_hash("no-such-hash") is None
    assert await backend.webhook_secret("nobody") is None
    for change in (backend.update_tenant_limits("nobody", rate=1, burst=None, max_concurrency=None,
                                                clear_max_concurrency=False, now=T0),
                   backend.set_tenant_disabled("nobody", disabled=True, now=T0),
                   backend.rotate_api_key("nobody", now=T0)):
        with pytest.raises(NotFound, match="nobody"):
            await change


async def test_tenants_are_listed_in_byte_order(backend: Backend) -> None:
    for tenant_id in ("beta", "Zeta", "alpha", "_sys", "alpha-2"):
        await tenant(backend, tenant_id)
    assert [t.id for t in await backend.list_tenants()] == sorted(
        ["beta", "Zeta", "alpha", "_sys", "alpha-2"])


LIMITS: list[tuple[dict[str, Any], tuple[float, int, int | None]]] = [
    # (the change, then (rate, burst, max_concurrency)), from rate 10, burst 20, cap 4
    ({"rate": 2.5}, (2.5, 20, 4)),
    ({"burst": 3}, (10, 3, 4)),
    ({"max_concurrency": 9}, (10, 20, 9)),
    ({"max_concurrency": 0}, (10, 20, 4)),          # 0 is no change, as on the CLI
    ({"clear_max_concurrency": True}, (10, 20, None)),
    ({"rate": 1, "burst": 1, "max_concurrency": 1}, (1, 1, 1)),
    ({}, (10, 20, 4)),
]


@pytest.mark.parametrize(("change", "expected"), LIMITS)
async def test_update_limits(backend: Backend, change: dict[str, Any],
                             expected: tuple[float, int, int | None]) -> None:
    await tenant(backend, "acme", rate=10, burst=20, max_concurrency=4)
    args: dict[str, Any] = {"rate": None, "burst": None, "max_concurrency": None,
                            "clear_max_concurrency": False, **change}
    updated = await backend.update_tenant_limits("acme", now=T0 + 5, **args)
    assert (updated.rate, updated.burst, updated.max_concurrency) == expected
    assert updated.updated_at == T0 + 5 and updated.created_at == T0
    assert await backend.find_tenant("acme") == updated


async def test_disable_and_enable(backend: Backend) -> None:
    created = await tenant(backend, "acme")
    disabled = await backend.set_tenant_disabled("acme", disabled=True, now=T0 + 1)
    assert disabled.disabled and disabled.updated_at == T0 + 1
    # the key still finds the tenant: the caller decides what a disabled one may do
    found = await backend.tenant_for_key_hash(credentials.hash_api_key(created.api_key))
    assert found is not None and found.disabled
    assert not (await backend.set_tenant_disabled("acme", disabled=False, now=T0 + 2)).disabled


async def test_rotating_the_key_retires_the_old_one(backend: Backend) -> None:
    created = await tenant(backend, "acme")
    rotated = await backend.rotate_api_key("acme", now=T0 + 1)
    assert rotated.api_key != created.api_key
    assert rotated.tenant.api_key_prefix == credentials.display_prefix(rotated.api_key)
    assert rotated.tenant.webhook_secret == created.tenant.webhook_secret
    assert rotated.tenant.updated_at == T0 + 1
    assert await backend.tenant_for_key_hash(credentials.hash_api_key(created.api_key)) is None
    assert await backend.tenant_for_key_hash(
        credentials.hash_api_key(rotated.api_key)) == rotated.tenant
