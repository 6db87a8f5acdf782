"""The API key cache of POST /jobs: keyed by the key as sent, entries live ttl_s."""

from __future__ import annotations

from collections.abc import Callable

from jobd.api.auth import TenantDirectory
from jobd.credentials import hash_api_key
from jobd.models import NewTenant
from jobd.store.sqlite import tenants as store_tenants
from jobd.store.sqlite.database import Database
from jobd.store.sqlite.store import Store
from tests.conftest import T0


def test_a_cached_key_answers_without_the_database_until_its_entry_expires(
        db: Database, store: Store, new_tenant: Callable[..., NewTenant]) -> None:
    tenant = new_tenant("acme")
    directory = TenantDirectory(store, ttl_s=60)
    first = directory.lookup(tenant.api_key, fresh=False)
    assert first is not None
    assert (first.tenant.id, first.key_hash) == ("acme", hash_api_key(tenant.api_key))

    db.write(store_tenants.rotate_api_key, "acme", now=T0)
    assert directory.lookup(tenant.api_key, fresh=False) is first  # the cached entry
    assert directory.lookup(tenant.api_key, fresh=True) is None     # the database's answer
    assert directory.lookup(tenant.api_key, fresh=False) is None    # and the entry is gone


def test_an_expired_entry_is_read_again(db: Database, store: Store,
                                        new_tenant: Callable[..., NewTenant]) -> None:
    tenant = new_tenant("acme")
    directory = TenantDirectory(store, ttl_s=0)
    assert directory.lookup(tenant.api_key, fresh=False) is not None
    db.write(store_tenants.set_tenant_disabled, "acme", disabled=True, now=T0)
    caller = directory.lookup(tenant.api_key, fresh=False)
    assert caller is not None and caller.tenant.disabled


def test_an_unknown_key_is_none_and_not_cached(store: Store,
                                               new_tenant: Callable[..., NewTenant]) -> None:
    new_tenant("acme")
    directory = TenantDirectory(store, ttl_s=60)
    assert directory.lookup("jobd_sk_nope", fresh=False) is None
    assert directory.lookup("jobd_sk_nope", fresh=False) is None
