"""run_rows: one statement per 500 rows instead of executemany's one step per row."""

from __future__ import annotations

import sqlite3

import pytest

from jobd.store.sqlite import queries
from jobd.store.sqlite.queries import MAX_ROWS_PER_STATEMENT, Q, run_rows


@pytest.fixture
def conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT, owner TEXT)")
    return conn


def test_inserts_every_row_in_chunks(conn: sqlite3.Connection,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(Q, "test_insert", "INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT DO NOTHING")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    rows = [(i, f"v{i}") for i in range(2 * MAX_ROWS_PER_STATEMENT + 3)]
    assert run_rows(conn, "test_insert", rows) == len(rows)
    assert len(statements) == 3   # 500 + 500 + 3 rows
    assert conn.execute("SELECT count(*), sum(k) FROM t").fetchone() == (len(rows),
                                                                           sum(range(len(rows))))
    assert run_rows(conn, "test_insert", [(1, "again"), (5000, "new")]) == 1  # one conflict


def test_parameters_after_the_values_go_last(conn: sqlite3.Connection,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    conn.executemany("INSERT INTO t VALUES (?, 'old', ?)", [(1, "me"), (2, "me"), (3, "other")])
    monkeypatch.setitem(Q, "test_update", "UPDATE t SET v = x.column2 FROM (VALUES (?, ?)) AS x "
                                          "WHERE t.k = x.column1 AND t.owner = ?")
    assert run_rows(conn, "test_update", [(1, "a"), (3, "c")], "me") == 1
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [
        (1, "a"), (2, "old"), (3, "old")]


def test_the_values_row_is_repeated_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(Q, "test_shape", "INSERT INTO t (k, v) VALUES (?, f(?)) RETURNING k")
    queries._multi_row.cache_clear()
    assert queries._multi_row("test_shape", 3) == (
        "INSERT INTO t (k, v) VALUES (?, f(?)), (?, f(?)), (?, f(?)) RETURNING k")
