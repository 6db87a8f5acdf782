"""PostgreSQL connections: jobd's session settings, the pool, and errors without the password."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from jobd.config import DatabaseConfig
from jobd.errors import StoreUnavailable
from jobd.store.postgres import connection as pg
from jobd.store.postgres.connection import connect, create_pool, session_settings

SETTINGS = ("jit", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
            "synchronous_commit", "application_name")


async def shown(conn: asyncpg.Connection) -> dict[str, str]:
    return {name: await conn.fetchval(f"SHOW {name}") for name in SETTINGS}


@pytest.fixture
async def pool(pg_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """One connection, so every acquire gets the same session back."""
    p = await create_pool(DatabaseConfig(url=pg_database_url, pool_size=1, statement_timeout=1.5,
                                         synchronous="normal"))
    yield p
    await p.close()


async def test_pooled_connections_start_with_jobds_settings(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await shown(conn) == {
            "jit": "off", "statement_timeout": "1500ms", "lock_timeout": "1500ms",
            "idle_in_transaction_session_timeout": "1min", "synchronous_commit": "on",
            "application_name": "jobd"}


async def test_settings_and_session_survive_a_release(pool: asyncpg.Pool) -> None:
    """asyncpg's default release runs RESET ALL (and three more statements); jobd's pool
    does not, and its settings are not lost on the way."""
    async with pool.acquire() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        first = await shown(conn)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        assert await shown(conn) == first


async def test_a_transaction_left_open_is_rolled_back_at_release(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE scratch (x int)")
    async with pool.acquire() as conn:
        await conn.execute("BEGIN; INSERT INTO scratch VALUES (1)")  # never committed
        assert conn.is_in_transaction()
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM scratch") == 0


@pytest.mark.parametrize(("synchronous", "expected"),
                         [("full", "on"), ("normal", "on"), ("extra", "on"), ("off", "off")])
async def test_synchronous_maps_to_synchronous_commit(pg_database_url: str, synchronous: Any,
                                                      expected: str) -> None:
    conn = await connect(DatabaseConfig(url=pg_database_url, synchronous=synchronous))
    try:
        assert await conn.fetchval("SHOW synchronous_commit") == expected
    finally:
        await conn.close()


async def test_statement_timeout_zero_is_no_limit(pg_database_url: str) -> None:
    conn = await connect(DatabaseConfig(url=pg_database_url, statement_timeout=0))
    try:
        assert await conn.fetchval("SHOW statement_timeout") == "0"
        assert await conn.fetchval("SHOW lock_timeout") == "5s"
        assert await conn.fetchval("SHOW jit") == "off"
    finally:
        await conn.close()


async def test_a_statement_past_the_timeout_is_cancelled(pg_database_url: str) -> None:
    conn = await connect(DatabaseConfig(url=pg_database_url, statement_timeout=0.05))
    try:
        with pytest.raises(asyncpg.QueryCanceledError, match="statement timeout"):
            await conn.execute("SELECT pg_sleep(5)")
    finally:
        await conn.close()


def test_timeouts_in_milliseconds() -> None:
    settings = session_settings(DatabaseConfig(url="postgresql://h/db", statement_timeout=0.0004))
    assert settings["statement_timeout"] == "1"  # a tiny timeout is not "no limit"
    assert settings["lock_timeout"] == "1"       # never longer than the statement's
    assert session_settings(DatabaseConfig(url="postgresql://h/db", statement_timeout=2.25)
                            )["statement_timeout"] == "2250"


# errors without the password -----------------------------------------------------------


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(
        netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}"))


@pytest.mark.parametrize("how", ["wrong password", "no such database", "nothing listening",
                                 "password in the query", "unparsable port list"])
async def test_connection_errors_name_the_database_without_its_password(
        pg_database_url: str, how: str) -> None:
    secret = "Wr0ng-s3cret-pw"
    url = with_password(pg_database_url, secret)
    parts = urlsplit(url)
    url = {
        "wrong password": url,
        "no such database": urlunsplit(urlsplit(pg_database_url)._replace(path="/no_such_db")),
        "nothing listening": url.replace(f":{parts.port}/", ":1/"),
        "password in the query": f"postgresql://postgres@{parts.hostname}:{parts.port}"
                                 f"{parts.path}?password={secret}",
        "unparsable port list": url.replace(f":{parts.port}/", f":{parts.port},{parts.hostname}:x/"),
    }[how]
    real_password = urlsplit(pg_database_url).password or ""
    for attempt in (connect, create_pool):
        with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL at postgresql://"
                           ) as caught:
            await attempt(DatabaseConfig(url=url))
        message = str(caught.value)
        assert secret not in message and real_password not in message, message
        assert "***" in message, message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_password_the_driver_repeats_is_scrubbed() -> None:
    url = "postgresql://jobd:p%40ss@db/jobd?sslpassword=k3y"
    text = "bad things near p@ss and p%40ss and k3y"
    assert pg.scrub_password(text, url) == "bad things near *** and *** and ***"
    message = str(pg.unavailable(ValueError(text), url))
    assert message == ("error from PostgreSQL at postgresql://jobd:***@db/jobd?sslpassword=***: "
                       "bad things near *** and *** and ***")
