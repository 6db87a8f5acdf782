"""What a backend durably stored, read on a connection of the test's own.

The only SQL of the contract suite. The statements are written once, in SQL both
databases read (``?`` placeholders; each kind's :class:`Peek` adapts them), and only
check what the protocol does not return: leases, row counts, the stored bytes.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol

import asyncpg

from tests.stores import numbered


class Peek(Protocol):
    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...


class PostgresPeek:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @classmethod
    async def connect(cls, url: str) -> PostgresPeek:
        return cls(await asyncpg.connect(url, timeout=10))

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._conn.fetch(numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(numbered(sql), *args)

    async def close(self) -> None:
        await self._conn.close()


class SqlitePeek:
    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._conn.execute(sql, args).fetchall()]

    async def execute(self, sql: str, *args: Any) -> None:
        self._conn.execute(sql, args)

    async def close(self) -> None:
        self._conn.close()


# what the tests ask ------------------------------------------------------------------


async def lease(peek: Peek, job_id: str) -> tuple[str | None, float | None]:
    [(owner, expires)] = await peek.rows(
        "SELECT lease_owner, lease_expires_at FROM jobs WHERE id = ?", job_id)
    return owner, expires


async def count(peek: Peek, table: str, where: str = "1 = 1", *args: Any) -> int:
    [(n,)] = await peek.rows(f"SELECT count(*) FROM {table} WHERE {where}", *args)
    return int(n)


async def key_holder(peek: Peek, tenant_id: str, key: str) -> str | None:
    found = await peek.rows("SELECT id FROM jobs WHERE tenant_id = ? AND idempotency_key = ?",
                            tenant_id, key)
    assert len(found) <= 1
    return found[0][0] if found else None


async def stored_job_texts(peek: Peek, job_id: str) -> tuple[str, str | None]:
    """The payload and result as stored, byte for byte."""
    [(payload, result)] = await peek.rows("SELECT payload, result FROM jobs WHERE id = ?", job_id)
    return payload, result


async def stored_body(peek: Peek, delivery_id: str) -> bytes:
    [(body,)] = await peek.rows("SELECT body FROM deliveries WHERE id = ?", delivery_id)
    return bytes(body)


async def running_of(peek: Peek, tenant_id: str) -> int:
    return await count(peek, "jobs", "tenant_id = ? AND status = 'running'", tenant_id)


async def snapshot(peek: Peek) -> list[tuple[Any, ...]]:
    """Every job, delivery and attempt: to show that a refused write changed nothing."""
    return [*await peek.rows("SELECT * FROM jobs ORDER BY seq"),
            *await peek.rows("SELECT * FROM deliveries ORDER BY seq"),
            *await peek.rows("SELECT * FROM delivery_attempts ORDER BY id")]
