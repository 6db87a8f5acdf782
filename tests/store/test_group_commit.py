"""The daemon's writer: many callers share one transaction, each fails alone,
and nobody hears "done" before COMMIT."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobd.config import Config
from jobd.errors import AlreadyExists, IdempotencyConflict, StoreUnavailable, Unauthorized
from jobd.models import IdempotentResult, JobStatus, NewJob, NewTenant
from jobd.store.sqlite import jobs as store_jobs
from jobd.store.sqlite import tenants as store_tenants
from jobd.store.sqlite.backend import SqliteBackend
from tests.conftest import T0, make_config
from tests.store.conftest import write, writer_stats

NewJobFactory = Callable[..., NewJob]


@pytest.fixture(autouse=True)
def acme(new_tenant: Callable[..., NewTenant]) -> NewTenant:
    return new_tenant("acme")


@pytest.fixture
def observer(config: Config) -> Iterator[sqlite3.Connection]:
    """A second connection, as another process (the CLI) would see the file."""
    conn = sqlite3.connect(config.database.path, isolation_level=None, check_same_thread=False)
    yield conn
    conn.close()


def job_ids(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT id FROM jobs").fetchall()}


async def later(call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """``call(...)``, made once the coroutine runs (a task: see enqueue)."""
    return await call(*args, **kwargs)


async def insert(store: SqliteBackend, job: NewJob, *, now: float = T0) -> IdempotentResult:
    """An insert that goes to the writer once the coroutine runs (a task: see enqueue)."""
    return await store.insert_job(job, body_hash=job.idempotency_key.encode(), now=now,
                                  idempotency_ttl_s=3600.0)


class WriterGate:
    """A unit that holds the writer thread until released, so that everything
    queued meanwhile lands in the same next batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def unit(self, conn: sqlite3.Connection) -> str:
        self.entered.set()
        assert self.release.wait(10), "gate never released"
        return "gate"

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10), "writer never ran the gate"


async def enqueue(*coros: Awaitable[Any]) -> list[asyncio.Future[Any]]:
    tasks = [asyncio.ensure_future(c) for c in coros]
    await asyncio.sleep(0)  # each task runs until it awaits its future: all are queued now
    return tasks


# grouping ---------------------------------------------------------------------------


async def test_200_concurrent_inserts_all_commit_in_fewer_batches(
        store: SqliteBackend, new_job: NewJobFactory, observer: sqlite3.Connection) -> None:
    before = writer_stats(store)
    jobs = [new_job(key=f"k{i}") for i in range(200)]
    results = await asyncio.gather(*(insert(store, job) for job in jobs))

    assert len(results) == 200
    assert all(not r.replayed for r in results)
    ids = {r.job_id for r in results}
    assert len(ids) == 200
    assert job_ids(observer) == ids
    keys = {r[0] for r in observer.execute("SELECT idempotency_key FROM jobs")}
    assert keys == {f"k{i}" for i in range(200)}

    after = writer_stats(store)
    assert after.units - before.units == 200
    assert after.transactions - before.transactions < 200, "no grouping happened"


async def test_units_queued_while_the_writer_is_busy_share_one_batch(
        store: SqliteBackend, new_job: NewJobFactory) -> None:
    gate = WriterGate()
    before = writer_stats(store)
    gate_task = asyncio.create_task(write(store, gate.unit))
    await gate.wait_entered()
    tasks = await enqueue(*(insert(store, new_job(key=f"g{i}")) for i in range(50)))
    gate.release.set()
    assert await gate_task == "gate"
    await asyncio.gather(*tasks)
    after = writer_stats(store)
    assert (after.transactions, after.units) == (before.transactions + 2, before.units + 51)


# grouped units ----------------------------------------------------------------------


async def one_batch(store: SqliteBackend, *coros: Awaitable[Any]) -> list[Any]:
    """Run ``coros`` as one batch of the writer (queued while a gate holds it); return
    each one's result or exception."""
    gate = WriterGate()
    gate_task = asyncio.create_task(write(store, gate.unit))
    await gate.wait_entered()
    tasks = await enqueue(*coros)
    gate.release.set()
    await gate_task
    return await asyncio.gather(*tasks, return_exceptions=True)


class Recorder:
    """A grouped unit: records each call's items, answers each item on its own."""

    def __init__(self, fail_all: bool = False) -> None:
        self.calls: list[list[Any]] = []
        self.fail_all = fail_all

    def __call__(self, conn: sqlite3.Connection, items: list[Any]) -> list[tuple[bool, Any]]:
        self.calls.append(list(items))
        conn.execute("UPDATE tenants SET burst = burst + ? WHERE id = 'acme'", (len(items),))
        if self.fail_all:
            raise Boom("the whole group")
        return [(False, Boom(f"item {i}")) if i < 0 else (True, i * 10) for i in items]


async def test_grouped_items_of_one_batch_share_one_call(store: SqliteBackend,
                                                         observer: sqlite3.Connection) -> None:
    group = Recorder()
    outcomes = await one_batch(store, *(store.writer.call_grouped(group, i)
                                        for i in (1, 2, -3, 4)))
    assert group.calls == [[1, 2, -3, 4]]
    assert outcomes[:2] == [10, 20] and outcomes[3] == 40
    assert isinstance(outcomes[2], Boom) and str(outcomes[2]) == "item -3"
    assert observer.execute("SELECT burst FROM tenants WHERE id = 'acme'").fetchone()[0] == 1004


async def test_a_group_that_raises_fails_its_items_and_nothing_else(
        store: SqliteBackend, new_job: NewJobFactory, observer: sqlite3.Connection) -> None:
    group = Recorder(fail_all=True)
    kept, *failed = await one_batch(store, insert(store, new_job(key="kept")),
                                    *(store.writer.call_grouped(group, i) for i in (1, 2)))
    assert isinstance(kept, IdempotentResult)
    assert all(isinstance(f, Boom) for f in failed)
    assert job_ids(observer) == {kept.job_id}
    assert observer.execute("SELECT burst FROM tenants WHERE id = 'acme'").fetchone()[0] == 1000


async def test_a_group_answering_the_wrong_count_fails_and_the_writer_lives_on(
        store: SqliteBackend, new_job: NewJobFactory, observer: sqlite3.Connection) -> None:
    def short(conn: sqlite3.Connection, items: list[Any]) -> list[tuple[bool, Any]]:
        conn.execute("UPDATE tenants SET burst = 1 WHERE id = 'acme'")
        return [(True, "only one")]

    kept, *failed = await one_batch(store, insert(store, new_job(key="kept")),
                                    *(store.writer.call_grouped(short, i) for i in (1, 2)))
    assert isinstance(kept, IdempotentResult)
    assert all(isinstance(f, RuntimeError) and "2 items" in str(f) for f in failed)
    assert observer.execute("SELECT burst FROM tenants WHERE id = 'acme'").fetchone()[0] == 1000
    assert isinstance(await insert(store, new_job(key="after")), IdempotentResult)


# a batch of nothing but new jobs -----------------------------------------------------


class Tracer:
    """A unit that starts recording the writer connection's statements (the writer's
    thread runs it), then holds the writer like a WriterGate."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.gate = WriterGate()

    def unit(self, conn: sqlite3.Connection) -> str:
        conn.set_trace_callback(self.statements.append)
        return self.gate.unit(conn)

    def kinds(self) -> list[str]:
        """Each statement's first word (BEGIN, INSERT, SELECT, SAVEPOINT, COMMIT ...)."""
        return [sql.split(None, 1)[0].upper() for sql in self.statements]


async def traced_batch(store: SqliteBackend, *coros: Awaitable[Any]) -> tuple[list[Any], Tracer]:
    """Run ``coros`` as one batch of the writer, its statements traced."""
    tracer = Tracer()
    gate_task = asyncio.create_task(write(store, tracer.unit))
    await tracer.gate.wait_entered()
    tasks = await enqueue(*coros)
    tracer.gate.release.set()
    await gate_task
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await write(store, lambda conn: conn.set_trace_callback(None))
    # the gate's COMMIT first, the BEGIN of the unit that stops the trace last
    assert tracer.kinds()[0] == "COMMIT" and tracer.kinds()[-1] == "BEGIN"
    del tracer.statements[0], tracer.statements[-1]
    return outcomes, tracer


async def test_a_batch_of_only_new_jobs_is_one_statement_without_begin_or_commit(
        store: SqliteBackend, new_job: NewJobFactory, observer: sqlite3.Connection) -> None:
    before = writer_stats(store)
    outcomes, tracer = await traced_batch(store, *(insert(store, new_job(key=f"n{i}"))
                                                   for i in range(20)))
    assert tracer.kinds() == ["INSERT"]  # SQLite's own transaction: committed, one fsync
    assert all(isinstance(r, IdempotentResult) and not r.replayed for r in outcomes)
    assert job_ids(observer) == {r.job_id for r in outcomes}
    after = writer_stats(store)  # the tracer's gate, the batch, the unit that ends the trace
    assert (after.transactions, after.units) == (before.transactions + 3, before.units + 22)


async def test_new_jobs_with_other_writes_share_the_writers_transaction(
        store: SqliteBackend, new_job: NewJobFactory, observer: sqlite3.Connection) -> None:
    outcomes, tracer = await traced_batch(
        store, insert(store, new_job(key="a")), write(store, note_burst, 7),
        insert(store, new_job(key="b")))
    assert tracer.kinds()[0] == "BEGIN" and tracer.kinds()[-1] == "COMMIT"
    assert tracer.kinds().count("INSERT") == 1  # the two jobs still share one statement
    first, noted, last = outcomes
    assert noted == 7 and isinstance(first, IdempotentResult) and isinstance(last, IdempotentResult)
    assert job_ids(observer) == {first.job_id, last.job_id}


async def test_new_jobs_alone_that_the_statement_leaves_go_one_by_one_and_the_rest_stay(
        store: SqliteBackend, new_job: NewJobFactory, observer: sqlite3.Connection) -> None:
    used = await insert(store, new_job(key="used"))
    outcomes, tracer = await traced_batch(
        store,
        insert(store, new_job(key="fresh")),
        insert(store, new_job(key="twice")),
        insert(store, new_job(key="twice")),  # the same body: a replay of the one before
        later(store.insert_job, new_job(key="used"), body_hash=b"another body", now=T0,
              idempotency_ttl_s=3600.0),  # 409
        later(store.insert_job, new_job(key="bad-key"), body_hash=b"bad-key", now=T0,
              idempotency_ttl_s=3600.0, api_key_hash="not the tenant's"),  # a revoked key: 401
    )
    fresh, twice, again, conflict, revoked = outcomes
    assert isinstance(fresh, IdempotentResult) and not fresh.replayed
    assert isinstance(twice, IdempotentResult) and not twice.replayed
    assert isinstance(again, IdempotentResult) and again.replayed
    assert again.job_id == twice.job_id
    assert isinstance(conflict, IdempotencyConflict)
    assert isinstance(revoked, Unauthorized)
    assert job_ids(observer) == {used.job_id, fresh.job_id, twice.job_id}
    # the statement committed the two it inserted; the three it left had a transaction
    kinds = tracer.kinds()
    assert kinds[0] == "INSERT" and kinds[2] == "BEGIN" and kinds[-1] == "COMMIT"
    assert kinds.count("SAVEPOINT") == 3


async def test_new_jobs_alone_that_the_database_refuses_get_store_unavailable(
        tmp_path: Path, new_job: NewJobFactory) -> None:
    (tmp_path / "impatient").mkdir()
    impatient = SqliteBackend(make_config(tmp_path / "impatient",
                                  database={"busy_timeout": 0.05}).database)
    await impatient.open()
    other = sqlite3.connect(tmp_path / "impatient" / "jobd.db", isolation_level=None)
    try:
        await write(impatient, store_tenants.create_tenant, "acme", rate=1.0, burst=1,
                              max_concurrency=None, now=T0)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
        before = writer_stats(impatient)
        outcomes = await asyncio.gather(*(insert(impatient, new_job(key=f"r{i}")) for i in range(3)),
                                        return_exceptions=True)
        assert all(isinstance(o, StoreUnavailable) for o in outcomes)
        assert writer_stats(impatient).failed > before.failed
        other.execute("ROLLBACK")
        assert other.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
        assert isinstance(await insert(impatient, new_job(key="later")), IdempotentResult)
    finally:
        other.close()
        await impatient.close()


def note_burst(conn: sqlite3.Connection, burst: int) -> int:
    conn.execute("UPDATE tenants SET burst = ? WHERE id = 'acme'", (burst,))
    return burst


# one failure fails alone ------------------------------------------------------------


class Boom(Exception):
    pass


async def test_a_failing_unit_is_rolled_back_alone(store: SqliteBackend, new_job: NewJobFactory,
                                                   observer: sqlite3.Connection) -> None:
    doomed = new_job(key="doomed")

    def insert_then_raise(conn: sqlite3.Connection) -> None:
        store_jobs.insert_job(conn, doomed, body_hash=b"x", now=T0, idempotency_ttl_s=60.0)
        conn.execute("UPDATE tenants SET burst = 1 WHERE id = 'acme'")
        raise Boom("after writing")

    gate = WriterGate()
    transactions0 = writer_stats(store).transactions
    gate_task = asyncio.create_task(write(store, gate.unit))
    await gate.wait_entered()
    before = [insert(store, new_job(key=f"before{i}")) for i in range(10)]
    after = [insert(store, new_job(key=f"after{i}")) for i in range(10)]
    tasks = await enqueue(*before, write(store, insert_then_raise), *after)
    gate.release.set()
    await gate_task
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    assert writer_stats(store).transactions == transactions0 + 2  # all 21 units were one
    failed = outcomes[10]
    assert isinstance(failed, Boom)
    assert str(failed) == "after writing"
    good = outcomes[:10] + outcomes[11:]
    assert all(isinstance(r, IdempotentResult) for r in good)

    committed = job_ids(observer)
    assert committed == {r.job_id for r in good if isinstance(r, IdempotentResult)}
    assert observer.execute("SELECT count(*) FROM jobs WHERE idempotency_key = 'doomed'"
                            ).fetchone()[0] == 0
    assert observer.execute("SELECT burst FROM tenants WHERE id = 'acme'").fetchone()[0] == 1000


async def test_a_store_error_in_one_unit_fails_alone(store: SqliteBackend, new_job: NewJobFactory,
                                                     observer: sqlite3.Connection) -> None:
    gate = WriterGate()
    gate_task = asyncio.create_task(write(store, gate.unit))
    await gate.wait_entered()
    tasks = await enqueue(
        insert(store, new_job(key="a")),
        write(store, store_tenants.create_tenant, "acme", rate=1.0, burst=1,
                    max_concurrency=None, now=T0),            # IntegrityError → AlreadyExists
        insert(store, new_job(key="b")),
    )
    gate.release.set()
    await gate_task
    first, duplicate, last = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(duplicate, AlreadyExists)
    assert isinstance(first, IdempotentResult) and isinstance(last, IdempotentResult)
    assert job_ids(observer) == {first.job_id, last.job_id}


async def test_the_writer_keeps_working_after_failures(store: SqliteBackend,
                                                       new_job: NewJobFactory) -> None:
    def fail(conn: sqlite3.Connection) -> None:
        raise Boom

    for _ in range(3):
        with pytest.raises(Boom):
            await write(store, fail)
    result = await insert(store, new_job())
    assert await store.find_job(result.job_id) is not None


# durability before the answer -------------------------------------------------------


async def test_a_result_is_visible_to_others_as_soon_as_the_await_returns(
        store: SqliteBackend, new_job: NewJobFactory, config: Config) -> None:
    for i in range(20):
        result = await insert(store, new_job(key=f"v{i}"))
        fresh = sqlite3.connect(config.database.path)  # a brand-new reader, like another process
        try:
            row = fresh.execute("SELECT status FROM jobs WHERE id = ?",
                                (result.job_id,)).fetchone()
        finally:
            fresh.close()
        assert row == ("queued",)


async def test_the_unit_is_not_visible_before_commit(store: SqliteBackend, new_job: NewJobFactory,
                                                     observer: sqlite3.Connection) -> None:
    job = new_job(key="pending")
    seen_inside: list[int] = []

    def insert_and_look(conn: sqlite3.Connection) -> IdempotentResult:
        result = store_jobs.insert_job(conn, job, body_hash=b"h", now=T0,
                                       idempotency_ttl_s=60.0)
        seen_inside.append(observer.execute("SELECT count(*) FROM jobs").fetchone()[0])
        return result

    result = await write(store, insert_and_look)
    assert seen_inside == [0]  # uncommitted inside the unit ...
    assert job_ids(observer) == {result.job_id}  # ... committed by the time we hear back


async def test_replay_through_the_store(store: SqliteBackend, new_job: NewJobFactory) -> None:
    job = new_job(key="same")
    first, second = await asyncio.gather(insert(store, job), insert(store, job))
    assert first.job_id == second.job_id
    assert [first.replayed, second.replayed].count(True) == 1
    found = await store.find_job(first.job_id, "acme")
    assert found is not None and found.status is JobStatus.QUEUED
