"""The API key cache of POST /jobs: keyed by the key as sent, entries live ttl_s."""

from __future__ import annotations

from jobd.api.auth import TenantDirectory
from jobd.credentials import hash_api_key
from jobd.store.backend import Backend
from tests.conftest import T0, NewTenantFactory


async def test_a_cached_key_answers_without_the_database_until_its_entry_expires(
        store: Backend, new_tenant: NewTenantFactory) -> None:
    tenant = await new_tenant("acme")
    directory = TenantDirectory(store, ttl_s=60)
    assert directory.cached(tenant.api_key) is None  # nothing cached yet
    first = await directory.lookup(tenant.api_key)
    assert first is not None
    assert (first.tenant.id, first.key_hash) == ("acme", hash_api_key(tenant.api_key))

    await store.rotate_api_key("acme", now=T0)
    assert directory.cached(tenant.api_key) is first            # the cached entry
    assert await directory.lookup(tenant.api_key) is None       # the database's answer
    assert directory.cached(tenant.api_key) is None             # and the entry is gone


async def test_an_expired_entry_is_not_answered(store: Backend,
                                                new_tenant: NewTenantFactory) -> None:
    tenant = await new_tenant("acme")
    directory = TenantDirectory(store, ttl_s=0)
    assert await directory.lookup(tenant.api_key) is not None
    assert directory.cached(tenant.api_key) is None
    await store.set_tenant_disabled("acme", disabled=True, now=T0)
    caller = await directory.lookup(tenant.api_key)
    assert caller is not None and caller.tenant.disabled


async def test_an_unknown_key_is_none_and_not_cached(store: Backend,
                                                     new_tenant: NewTenantFactory) -> None:
    await new_tenant("acme")
    directory = TenantDirectory(store, ttl_s=60)
    assert await directory.lookup("jobd_sk_nope") is None
    assert directory.cached("jobd_sk_nope") is None


async def test_a_lookup_the_store_answers_at_once_is_done_at_once(
        store: Backend, new_tenant: NewTenantFactory) -> None:
    """SQLite reads a tenant on the event loop's thread: the API goes on without a turn
    of the loop (the fast lane answers from the same call)."""
    tenant = await new_tenant("acme")
    found = TenantDirectory(store, ttl_s=60).lookup(tenant.api_key)
    if store.name == "sqlite":
        assert found.done()
    assert (await found) is not None
