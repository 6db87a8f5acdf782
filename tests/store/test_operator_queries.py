"""Operators' reads at scale: ``jobs list`` per status and the index-only counts behind
``stats``, ``top`` and ``/metrics`` — their plans, their paging and their numbers."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobd.models import JobStatus
from jobd.store.sqlite import jobs as store_jobs
from jobd.store.sqlite import scheduling
from jobd.store.sqlite.connection import connect, migrate
from jobd.store.sqlite.queries import Q
from jobd.store.sqlite.stats import collect_stats, job_counts
from tests.conftest import T0
from tests.store.conftest import Transactions

LIST_QUERIES = {  # query -> the index it must read
    "job_list_of_tenant": "jobs_tenant_seq",
    "job_list_waiting": "jobs_due",
    "job_list_running": "jobs_running",
    "job_list_failed": "jobs_failed_seq",
}
COUNT_QUERIES = {
    "waiting_jobs_capped": "jobs_due",
    "job_totals_by_tenant": "jobs_tenant_seq",
    "job_counts_waiting": "jobs_due",
    "job_counts_running": "jobs_running",
    "job_counts_failed": "jobs_failed_seq",
}


def list_params(status: str | None = None, tenant: str | None = None) -> dict[str, Any]:
    return {"tenant_id": tenant, "status": status, "type": None, "before": 2**63 - 1, "limit": 50}


def plan(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[str]:
    return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]


@pytest.fixture(params=["no statistics", "analyzed"])
def migrated(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A migrated file as the daemon leaves it (no ANALYZE), or with statistics."""
    conn = connect(str(tmp_path / "plans.db"))
    migrate(conn)
    if request.param == "analyzed":
        conn.execute("ANALYZE")
    yield conn
    conn.close()


@pytest.mark.parametrize("name, status", [("job_list_of_tenant", None),
                                          ("job_list_of_tenant", "succeeded"),
                                          ("job_list_waiting", "queued"),
                                          ("job_list_waiting", "retry"),
                                          ("job_list_running", "running"),
                                          ("job_list_failed", "fatal"),
                                          ("job_list_failed", "cancelled")])
def test_each_listing_reads_its_index(migrated: sqlite3.Connection, name: str,
                                      status: str | None) -> None:
    for tenant in (None, "acme"):
        params = list_params(status, "acme" if name == "job_list_of_tenant" else tenant)
        steps = plan(migrated, Q[name], params)
        assert any(f"USING INDEX {LIST_QUERIES[name]}" in s for s in steps), (name, steps)


def test_failed_jobs_come_out_of_the_index_in_order(migrated: sqlite3.Connection) -> None:
    steps = plan(migrated, Q["job_list_failed"], list_params("fatal"))
    assert not any("TEMP B-TREE" in s for s in steps), steps


@pytest.mark.parametrize("name", sorted(COUNT_QUERIES))
def test_counts_read_indexes_only(migrated: sqlite3.Connection, name: str) -> None:
    steps = plan(migrated, Q[name], {"cap": 10} if ":cap" in Q[name] else ())
    assert any(f"INDEX {COUNT_QUERIES[name]}" in s for s in steps), (name, steps)
    assert not any(s.startswith("SCAN jobs") and "INDEX" not in s for s in steps), steps


def test_the_operator_index_is_used_by_no_other_query(migrated: sqlite3.Connection) -> None:
    """jobs_failed_seq is partial so it cannot capture the scheduler's and the
    workers' queries (a full (status, seq) index would, without statistics)."""
    mine = {"job_list_failed", "job_counts_failed"}
    for name, sql in Q.items():
        if name in mine:
            continue
        params: Any = {k: 1 for k in _named(sql)} if ":" in sql else (1,) * sql.count("?")
        try:
            steps = plan(migrated, sql, params)
        except sqlite3.Error:  # statements whose parameters this guess cannot satisfy
            continue
        assert not any("jobs_failed_seq" in s for s in steps), (name, steps)


def _named(sql: str) -> set[str]:
    import re
    return set(re.findall(r":(\w+)", sql))


# behaviour on a real file ---------------------------------------------------------------


OWNER = "w"


def _jobs(conn: sqlite3.Connection, statuses: list[tuple[str, str]], *, at: float) -> list[str]:
    """One job per (tenant, status), created in order at ``at`` + i."""
    from jobd.models import NewJob

    ids = []
    for i, (tenant, status) in enumerate(statuses):
        now = at + i
        future = now + 3600 if status in ("queued", "cancelled") else now
        job = NewJob(tenant_id=tenant, type="noop", payload="{}", priority=0, max_attempts=2,
                     timeout_seconds=None, run_at=future, webhook_url=None,
                     idempotency_key=f"k{at}-{i}")
        job_id = store_jobs.insert_job(conn, job, body_hash=b"x" * 32, now=now,
                                       idempotency_ttl_s=60).job_id
        ids.append(job_id)
        if status == "cancelled":
            store_jobs.cancel_job(conn, job_id, tenant_id=None, now=now)
        if status in ("queued", "cancelled"):
            continue
        [claimed] = scheduling.claim_due_jobs(conn, now=now, limit=1, owner=OWNER, lease_s=600).jobs
        assert claimed.id == job_id
        if status == "succeeded":
            scheduling.finish_job(conn, claimed, owner=OWNER, status=JobStatus.SUCCEEDED, now=now)
        elif status == "fatal":
            scheduling.finish_job(conn, claimed, owner=OWNER, status=JobStatus.FATAL, now=now,
                                  error="boom")
        elif status == "retry":
            scheduling.schedule_retry(conn, claimed, owner=OWNER, now=now, next_run_at=now + 3600,
                                      error="flaky")
    return ids


MIX = [("acme", "succeeded"), ("other", "fatal"), ("acme", "queued"), ("acme", "retry"),
       ("other", "succeeded"), ("acme", "running"), ("other", "cancelled"), ("acme", "fatal"),
       ("other", "queued"), ("other", "succeeded"), ("acme", "cancelled"), ("other", "retry")]


@pytest.fixture
def mixed(db: Transactions, new_tenant: Any) -> list[tuple[str, str, str]]:
    new_tenant("acme")
    new_tenant("other")
    ids = db.write(_jobs, MIX, at=T0)
    return [(job_id, tenant, status) for job_id, (tenant, status) in zip(ids, MIX, strict=True)]


@pytest.mark.parametrize("status", [None, *[s.value for s in JobStatus]])
@pytest.mark.parametrize("tenant", [None, "acme", "other"])
@pytest.mark.parametrize("backlog", ["short", "long"])
def test_list_pages_newest_first_for_every_filter(db: Transactions, mixed: list[tuple[str, str, str]],
                                                  status: str | None, tenant: str | None,
                                                  backlog: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if backlog == "long":  # more waiting jobs than list_jobs sorts: queued ones are walked
        monkeypatch.setattr(store_jobs, "SORT_WAITING_MAX", 2)
    expected = [job_id for job_id, t, s in reversed(mixed)
                if (status is None or s == status) and (tenant is None or t == tenant)]
    pages: list[str] = []
    before = None
    while True:
        page = db.read(store_jobs.list_jobs, tenant_id=tenant, status=status, limit=2,
                       before_seq=before)
        if not page:
            break
        pages += [j.id for j in page]
        before = page[-1].seq
    assert pages == expected


def test_index_only_counts_match_a_full_count(db: Transactions, mixed: list[tuple[str, str, str]]) -> None:
    def full(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in conn.execute("SELECT tenant_id, status, count(*) FROM jobs NOT INDEXED "
                              "GROUP BY tenant_id, status"):
            out.setdefault(r[0], {})[r[1]] = r[2]
        return out

    expected = db.read(full)
    stats = db.read(collect_stats, now=T0 + 100)
    assert stats.by_tenant == expected
    totals: dict[str, int] = {}
    for counts in expected.values():
        for status, n in counts.items():
            totals[status] = totals.get(status, 0) + n
    assert stats.by_status == totals == db.read(job_counts)
    queued_due = [j.next_run_at for j in db.read(store_jobs.list_jobs, status="queued")]
    assert stats.oldest_queued_due == min(queued_due)
    # inside a caller's transaction the counts join it instead of opening their own
    assert db.write(job_counts) == totals
