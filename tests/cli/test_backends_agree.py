"""The CLI says the same on both backends: one history of jobs, webhooks and tenants, made
through the store's protocol at fixed times on SQLite and on PostgreSQL, then every read
command, as text and as JSON, with the CLI's clock stopped. The outputs must be equal
once the ids each database was given are numbered by first appearance."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobd.clock import FakeClock
from jobd.config import DatabaseConfig
from tests.cli.conftest import InProcessCli, Seeder, make_tenant
from tests.conftest import T0, Databases
from tests.stores import BlockingStore
from tests.support import write_config

NOW = T0 + 7 * 86_400  # the CLI's clock: a week after the tenants were made
GENERATED = re.compile(r"\b(?:job|msg)_[A-Za-z0-9_-]{16,}|jobd_sk_[A-Za-z0-9_-]+|whsec_[A-Za-z0-9+/=]+")
READS = [("jobs", "list"), ("jobs", "list", "--status", "fatal"), ("jobs", "list", "--tenant", "other"),
         ("dlq", "list"), ("tenants", "list"), ("tenants", "show", "acme"), ("stats",),
         ("prune", "--dry-run")]


class Site:
    """One backend with the history on it, and the CLI on its config."""

    def __init__(self, kind: str, tmp: Path, request: pytest.FixtureRequest) -> None:
        self.databases = Databases(kind, request)
        section = self.databases(tmp)
        self.store = BlockingStore(DatabaseConfig.model_validate(section))
        self.cli = InProcessCli(write_config(tmp / "jobd.toml", tmp, 0, database=section,
                                             jobs={"retention_days": 1}))
        self.ids: dict[str, str] = {}

    def close(self) -> None:
        self.store.close()
        self.databases.give_back()


def history(site: Site) -> dict[str, str]:
    """Tenants, and jobs in every state with their webhooks, at fixed times."""
    make_tenant(site.store, "acme")
    make_tenant(site.store, "other")
    seed = Seeder(site.store)
    hook = "https://hooks.example.com/in"
    t = T0 + 100.0
    ok = seed.succeeded("acme", at=t, webhook_url=hook, payload={"to": "a@example.com"})
    seed.deliver(ok, now=t + 1.5, status_codes=[200])
    fatal = seed.fatal("acme", at=t + 10, errors=3, webhook_url=hook)
    dead = seed.deliver(fatal, now=t + 20.25, status_codes=[500, 502, 503])
    waiting = seed.submit("other", now=t + 30, run_at=NOW + 3600)
    running = seed.submit("other", now=t + 40)
    seed.attempt(running, now=t + 41, finish=False)
    site.store.run(lambda b: b.cancel_job(waiting, tenant_id=None, now=t + 50))
    recent = seed.submit("acme", now=NOW - 30)
    seed.attempt(recent, now=NOW - 20, error="boom", retry_at=NOW + 60)
    return {"ok": ok, "fatal": fatal, "dead": dead, "waiting": waiting, "running": running,
            "recent": recent}


def numbered(text: str, names: dict[str, str]) -> str:
    """``text`` with each generated id replaced by its number of first appearance."""
    return GENERATED.sub(lambda m: names.setdefault(m.group(0), f"<id{len(names)}>"), text)


@pytest.fixture
def sites(tmp_path: Path, request: pytest.FixtureRequest, pg_url: str,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Site]]:
    for module in ("dlq", "jobs", "ops", "tenants"):
        monkeypatch.setattr(f"jobd.cli.{module}._clock", FakeClock(NOW))
    made: dict[str, Site] = {}
    try:
        for kind in ("sqlite", "postgres"):
            where = tmp_path / kind
            where.mkdir()
            made[kind] = Site(kind, where, request)
        yield made
    finally:
        for site in made.values():
            site.close()


def test_every_read_command_says_the_same_on_both_backends(sites: dict[str, Site]) -> None:
    made = {kind: history(site) for kind, site in sites.items()}
    reads = [*READS, *(("jobs", "show", made["sqlite"][name]) for name in made["sqlite"]
                       if name != "dead"),
             ("dlq", "show", made["sqlite"]["dead"])]
    said: dict[str, list[str]] = {}
    for kind, site in sites.items():
        ids = dict(zip(made["sqlite"].values(), made[kind].values(), strict=True))
        names: dict[str, str] = {}
        said[kind] = []
        for args in reads:
            args = tuple(ids.get(a, a) for a in args)
            for json in (False, True):
                done = site.cli(*args, *(["--json"] if json else []))
                said[kind].append(f"$ jobd {' '.join(args[:2])} (json={json})\n"
                                  + numbered(done.stdout + done.stderr, names))
    for lite, post in zip(said["sqlite"], said["postgres"], strict=True):
        assert post == lite
    assert any("boom" in text for text in said["sqlite"])  # the views are not empty
    assert any("HTTP 503" in text for text in said["sqlite"])
