"""``jobd tenants``: create tenants and manage their keys and limits."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from jobd.cli.common import (
    ConfigOpt,
    JsonOpt,
    err,
    existing_database,
    fail,
    fields_table,
    is_missing,
    list_table,
    load,
    missing_database,
    out,
    print_json,
    with_backend,
)
from jobd.clock import SystemClock, to_rfc3339
from jobd.config import LIMIT_MAX, RATE_MAX, database_path_is_explicit
from jobd.errors import NotFound, StoreUnavailable
from jobd.models import NewTenant, Tenant
from jobd.store.backend import Backend

app = typer.Typer(help="Create tenants and manage their API keys, rate limits and concurrency.\n\n"
                  "Examples: jobd tenants create acme --json | jobd tenants update acme --rate 50",
                  no_args_is_help=True)

TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TenantArg = Annotated[str, typer.Argument(help="Tenant id, e.g. tenant_123.")]
RateOpt = Annotated[float | None, typer.Option("--rate", min=0.001, max=RATE_MAX,
                                               help="POST /jobs requests per second.")]
BurstOpt = Annotated[int | None, typer.Option("--burst", min=1, max=LIMIT_MAX,
                                              help="Token bucket capacity.")]
ConcurrencyOpt = Annotated[int | None, typer.Option(
    "--max-concurrency", min=0, max=LIMIT_MAX,
    help="Most jobs of this tenant running at once (0: no cap).")]
_clock = SystemClock()
T = TypeVar("T")


def tenant_doc(tenant: Tenant, *, with_secret: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tenantId": tenant.id, "apiKeyPrefix": tenant.api_key_prefix, "rate": tenant.rate,
        "burst": tenant.burst, "maxConcurrency": tenant.max_concurrency,
        "disabled": tenant.disabled, "createdAt": to_rfc3339(tenant.created_at),
        "updatedAt": to_rfc3339(tenant.updated_at),
    }
    if with_secret:
        doc["webhookSecret"] = tenant.webhook_secret
    return doc


def _print_credentials(new: NewTenant, as_json: bool, what: str) -> None:
    if as_json:
        print_json({"tenantId": new.tenant.id, "apiKey": new.api_key,
                    "webhookSecret": new.tenant.webhook_secret})
        return
    out.print(fields_table([("tenantId", new.tenant.id), ("apiKey", new.api_key),
                            ("webhookSecret", new.tenant.webhook_secret)], title=what))
    err.print("[yellow]The API key is shown only now; jobd keeps only its hash.[/]")


def _print_tenant(tenant: Tenant, as_json: bool) -> None:
    doc = tenant_doc(tenant, with_secret=True)
    if as_json:
        print_json(doc)
        return
    out.print(fields_table(doc.items()))


def _change(config: ConfigOpt, change: Callable[[Backend], Awaitable[T]]) -> T:
    return with_backend(existing_database(config), change)


@app.command("create")
def create(tenant_id: TenantArg, rate: RateOpt = None, burst: BurstOpt = None,
           max_concurrency: ConcurrencyOpt = None, json: JsonOpt = False,
           create_database: Annotated[bool, typer.Option(
               "--create", help="Start a new database if the file does not exist (needed "
                                "when database.path is only the default).")] = False,
           config: ConfigOpt = None) -> None:
    """Create a tenant and print its API key (once) and webhook secret.

    The database must exist (jobd serve creates it), unless --create is given or the
    config sets database.path: a key written to a database the daemon does not use
    would be refused.

    Example: jobd tenants create acme --rate 50 --burst 100 --json
    """
    if not TENANT_ID.match(tenant_id):
        fail("tenant id must be 1-64 characters: letters, digits, '_', '.', '-'", 2)
    source, cfg = load(config)
    path = Path(cfg.database.path)
    new_file = is_missing(cfg)
    if new_file and not (create_database or database_path_is_explicit(cfg)):
        raise StoreUnavailable(missing_database(source, cfg, can_create=True))
    defaults = cfg.rate_limit
    new = with_backend(cfg, lambda backend: backend.create_tenant(
        tenant_id, rate=defaults.rate if rate is None else rate,
        burst=defaults.burst if burst is None else burst,
        max_concurrency=max_concurrency or None, now=_clock.now()))
    if new_file:
        err.print(f"created a new database at {path.absolute()}", highlight=False,
                  soft_wrap=True)
    _print_credentials(new, json, f"tenant {tenant_id} created")


@app.command("list")
def list_(json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """List tenants.

    Example: jobd tenants list --json
    """
    tenants = with_backend(existing_database(config), lambda backend: backend.list_tenants())
    if json:
        print_json([tenant_doc(t) for t in tenants])
        return
    table = list_table(title=f"{len(tenants)} tenant(s)")
    table.add_column("tenant", overflow="fold")
    for name in ("key", "rate/s", "burst", "max conc.", "state", "created"):
        table.add_column(name, no_wrap=True)
    for t in tenants:
        table.add_row(t.id, t.api_key_prefix, f"{t.rate:g}", str(t.burst),
                      str(t.max_concurrency or "-"), "disabled" if t.disabled else "enabled",
                      (to_rfc3339(t.created_at) or "")[:10])
    out.print(table)


@app.command("show")
def show(tenant_id: TenantArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Show a tenant, its limits and its webhook secret.

    Example: jobd tenants show acme
    """
    tenant = with_backend(existing_database(config), lambda backend: backend.find_tenant(tenant_id))
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} does not exist")
    _print_tenant(tenant, json)


@app.command("update")
def update(tenant_id: TenantArg, rate: RateOpt = None, burst: BurstOpt = None,
           max_concurrency: ConcurrencyOpt = None, json: JsonOpt = False,
           config: ConfigOpt = None) -> None:
    """Change a tenant's rate limit or concurrency cap.

    Example: jobd tenants update acme --rate 100 --max-concurrency 4
    """
    if rate is None and burst is None and max_concurrency is None:
        fail("nothing to change: give --rate, --burst or --max-concurrency", 2)
    tenant = _change(config, lambda backend: backend.update_tenant_limits(
        tenant_id, rate=rate, burst=burst, max_concurrency=max_concurrency or None,
        clear_max_concurrency=max_concurrency == 0, now=_clock.now()))
    _print_tenant(tenant, json)


DISABLED_NOTE = (
    "Its API key is now refused (401) on every endpoint. Disabling does not pause the "
    "tenant: its jobs already queued or retrying still run, and their webhooks are still "
    "sent. To stop those jobs, cancel them: jobd jobs list --tenant {id} --status queued "
    "(and --status retry), then jobd jobs cancel JOB_ID.")


@app.command("disable")
def disable(tenant_id: TenantArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Refuse the tenant's API key (401) until enabled again.

    It does not pause the tenant: its queued and retrying jobs still run, and
    their webhooks are still sent. To stop them, cancel them (jobd jobs cancel).

    Example: jobd tenants disable acme
    """
    _print_tenant(_change(config, lambda backend: backend.set_tenant_disabled(
        tenant_id, disabled=True, now=_clock.now())), json)
    err.print(f"tenant {tenant_id} disabled. " + DISABLED_NOTE.format(id=tenant_id),
              highlight=False)


@app.command("enable")
def enable(tenant_id: TenantArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Accept the tenant's API key again.

    Example: jobd tenants enable acme
    """
    _print_tenant(_change(config, lambda backend: backend.set_tenant_disabled(
        tenant_id, disabled=False, now=_clock.now())), json)
    err.print(f"tenant {tenant_id} enabled: its API key is accepted again", highlight=False)


@app.command("rotate-key")
def rotate_key(tenant_id: TenantArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Issue a new API key; the old one stops working.

    Example: jobd tenants rotate-key acme
    """
    _print_credentials(_change(config, lambda backend: backend.rotate_api_key(
        tenant_id, now=_clock.now())), json, f"new API key for {tenant_id}")
