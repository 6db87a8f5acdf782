"""Connecting to PostgreSQL and migrating its schema.

Every connection, pooled or single (the CLI, ``jobd migrate``), starts with the same
session settings, sent in the startup packet (asyncpg's ``server_settings``) so that
they cost no round trip and survive the pool: asyncpg's default release runs
``RESET ALL``, which would undo a ``SET`` made by an ``init`` callback. The pool here
releases a connection without that reset query (see :func:`create_pool`).

Errors name the database by its URL with the password masked; the password never
appears in a message, also not in a driver's message that is passed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qsl, unquote, urlsplit

from jobd.config import DatabaseConfig, mask_password
from jobd.errors import ConfigError, StoreUnavailable

try:
    import asyncpg
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ConfigError("database.url selects PostgreSQL, which needs the asyncpg driver: "
                      "pip install 'jobd[postgres]'") from None

MIGRATIONS_PACKAGE = "jobd.store.postgres.migrations"
# pg_advisory_xact_lock's key while migrating: b"jobd_mig" as a big-endian bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"jobd_mig", "big")
SCHEMA_TABLE = "jobd_schema"
MIN_SERVER_VERSION = (13,)  # the schema sets autovacuum_vacuum_insert_scale_factor (13+)

APPLICATION_NAME = "jobd"
CONNECT_TIMEOUT_S = 10.0
# jobd's transactions last milliseconds. A row lock held for seconds is someone else's
# (an operator's open psql session): fail the statement rather than queue behind it.
LOCK_TIMEOUT_S = 5.0
# A transaction left open (a bug, a stalled event loop) holds row locks and keeps vacuum
# from removing dead rows of the queue tables: the server ends its session after this.
IDLE_IN_TRANSACTION_TIMEOUT_S = 60.0

# ValueError: a URL the driver cannot parse (asyncpg's ClientConfigurationError is one too).
_CONNECT_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                   ValueError)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def synchronous_commit(synchronous: str) -> str:
    """``database.synchronous`` on PostgreSQL: ``off`` -> off; full, normal, extra -> on
    (a 201 is durable on the server's disk before it is sent)."""
    return "off" if synchronous == "off" else "on"


def session_settings(config: DatabaseConfig) -> dict[str, str]:
    """The settings every jobd connection starts with."""
    statement_ms = _milliseconds(config.statement_timeout)
    lock_ms = _milliseconds(LOCK_TIMEOUT_S)
    if statement_ms:
        lock_ms = min(lock_ms, statement_ms)
    return {
        "application_name": APPLICATION_NAME,
        # jobd's statements are short and frequent: JIT compiling one costs more (tens
        # of ms) than running it, and the planner's cost estimates can trigger it.
        "jit": "off",
        "statement_timeout": str(statement_ms),
        "lock_timeout": str(lock_ms),
        "idle_in_transaction_session_timeout": str(_milliseconds(IDLE_IN_TRANSACTION_TIMEOUT_S)),
        "synchronous_commit": synchronous_commit(config.synchronous),
    }


def _milliseconds(seconds: float) -> int:
    """Seconds as whole milliseconds; 0 stays 0 (no limit), anything else is >= 1 ms."""
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


async def connect(config: DatabaseConfig) -> asyncpg.Connection:
    """One connection with jobd's session settings (for the CLI and migrations)."""
    url = _require_url(config)
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S,
                                     server_settings=session_settings(config))
    except _CONNECT_ERRORS as exc:
        raise unavailable(exc, url, doing="cannot connect to") from None


async def create_pool(config: DatabaseConfig, *, min_size: int | None = None) -> asyncpg.Pool:
    """``database.pool_size`` connections with jobd's session settings; ``min_size`` of
    them (default: all) are opened now, the rest on demand.

    A released connection is not reset with asyncpg's default query (advisory unlock,
    CLOSE ALL, UNLISTEN, RESET ALL: one more round trip per acquire): jobd leaves no
    session state behind. It takes only transaction-level advisory locks, opens cursors
    only inside transactions, never SETs a session setting (SET LOCAL only), and listens
    for notifications, if ever, on a connection of its own. A transaction still open at
    release is rolled back by the pool, as always."""
    url = _require_url(config)
    size = config.pool_size
    try:
        return await asyncpg.create_pool(
            url, min_size=size if min_size is None else min(min_size, size), max_size=size,
            timeout=CONNECT_TIMEOUT_S, server_settings=session_settings(config),
            reset=_keep_session)
    except _CONNECT_ERRORS as exc:
        raise unavailable(exc, url, doing="cannot connect to") from None


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing beyond the rollback the pool does itself."""


def unavailable(exc: BaseException, url: str, *, doing: str = "error from") -> StoreUnavailable:
    """``exc`` as a StoreUnavailable naming the database without its password."""
    return StoreUnavailable(f"{doing} PostgreSQL at {mask_password(url)}: "
                            f"{scrub_password(_reason(exc), url)}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None)
        return f"{exc} (SQLSTATE {sqlstate})" if sqlstate else str(exc)
    return str(exc) or type(exc).__name__


def scrub_password(text: str, url: str) -> str:
    """``text`` with every password of ``url`` (user part or query) replaced by ``***``."""
    for secret in _passwords(url):
        text = text.replace(secret, "***")
    return text


def _passwords(url: str) -> Iterator[str]:
    try:
        parts = urlsplit(url)
        password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return
    candidates = [password] if password else []
    candidates += [value for key, value in query if key.lower() in ("password", "sslpassword")]
    for candidate in candidates:
        yield from {candidate, unquote(candidate)} - {""}


def _require_url(config: DatabaseConfig) -> str:
    if config.url is None:
        raise ConfigError("database.url is not set: the database is SQLite")
    return config.url


# migrations -------------------------------------------------------------------------


async def migrate_database(config: DatabaseConfig) -> int:
    """Connect, apply the pending migrations, disconnect (``jobd migrate``, a node's start)."""
    conn = await connect(config)
    try:
        return await migrate(conn, url=_require_url(config))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise unavailable(exc, _require_url(config), doing="cannot migrate") from None
    finally:
        await conn.close()


def migrations() -> list[Migration]:
    """Every migration shipped with jobd, in order."""
    found = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append(Migration(int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection, *, url: str = "") -> int:
    """Apply the pending migrations, each in one transaction; return the schema version.

    Each transaction first takes a transaction-level advisory lock, so nodes starting
    together migrate one after another, and each reads the version again under the lock.
    A database whose schema is newer than this jobd knows is refused (StoreUnavailable):
    an older node must not write to tables it does not understand."""
    where = mask_password(url) if url else "this database"
    _require_server_version(conn.get_server_version(), where)
    known = migrations()
    latest = known[-1].version if known else 0
    while True:
        async with conn.transaction():
            # A migration may rewrite big tables: no statement or lock timeout for it, and
            # the advisory lock waits for another node's migration however long it takes.
            await conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
                "version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())")
            current = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}")
            if current > latest:
                raise StoreUnavailable(
                    f"the schema of {where} is at version {current}, newer than this jobd "
                    f"knows ({latest}): upgrade jobd on this node")
            pending = next((m for m in known if m.version > current), None)
            if pending is None:
                return int(current)
            await conn.execute(pending.sql)
            await conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version, name) VALUES ($1, $2)",
                               pending.version, pending.name)


def _require_server_version(version: tuple[int, ...], where: str) -> None:
    if tuple(version[:len(MIN_SERVER_VERSION)]) < MIN_SERVER_VERSION:
        wanted = ".".join(map(str, MIN_SERVER_VERSION))
        found = ".".join(map(str, version[:2]))
        raise StoreUnavailable(f"{where} runs PostgreSQL {found}; jobd needs {wanted} or newer")
