"""A throwaway PostgreSQL server for the tests: a pytest plugin (tests/conftest.py loads it).

``pg_url`` (session): ``JOBD_TEST_PG_URL`` when set (a role that may CREATE DATABASE),
else a server started here from Debian's binaries (/usr/lib/postgresql/<version>/bin):
data and socket in a temp dir, a free port on 127.0.0.1, a random password, fsync on;
stopped (``-m immediate``) and removed at the end of the session. ``initdb`` refuses to
run as root, so as root every server command runs as the ``postgres`` user, which owns
the temp dir. ``initdb`` takes seconds, the start a fraction of one, so the initialised
cluster is kept once per machine (keyed by server version and options) and each session
copies it.

``pg_database_url`` (function): a fresh database for one test (``CREATE DATABASE
test_<pid>_<n> TEMPLATE template0``), dropped after it.

``pg_own_server`` (function): a server started for one test alone, which the test may
stop and start again (:meth:`Server.shut_down`, :meth:`Server.start_again`).

``pg_jobd_databases`` (session): migrated databases lent to the tests that run jobd on
PostgreSQL (tests/conftest.py's ``database`` fixture, one per directory a test keeps a
database in). Made, migrated and dropped per test, a database would cost half a second
(the drop forces a checkpoint); a lent one comes back emptied instead: its other sessions
ended, every row of jobd's tables deleted, their identities restarted. One that cannot be
emptied, or whose schema a test changed, is dropped rather than lent again.

Without server binaries (or asyncpg) the PostgreSQL tests are skipped with the reason,
except where ``CI`` is set: there they must run, so they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

from jobd.config import mask_password

TEST_URL_ENV = "JOBD_TEST_PG_URL"
BIN_DIRS = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"  # who runs the server when the tests run as root
SUPERUSER = "postgres"
# Local (socket) connections trust; TCP ones need the password, like a real deployment.
INITDB_ARGS = ("-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--auth-local=trust",
               "--auth-host=scram-sha-256", "--no-sync", "--no-instructions")
TEMPLATE_FORMAT = 1  # bump when the template cluster must be made anew
START_TIMEOUT_S = 30
PORT_ATTEMPTS = 3


@dataclass
class Server:
    bin_dir: Path
    root: Path        # temp dir: data/, the socket, server.log
    port: int
    password: str
    version: str
    started_in_s: float

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            _run_as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data),
                                 "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def shut_down(self, mode: str = "fast") -> None:
        """Stop the server and keep its data (``mode``: pg_ctl's: smart, fast, immediate)."""
        _run_as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode,
                             "-w", "stop"])

    def start_again(self) -> None:
        """Start the server :meth:`shut_down` stopped, on the same port, with its data."""
        _run_as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l",
                             str(self.root / "server.log"), "-w", "-t", str(START_TIMEOUT_S),
                             "start"])


_started: list[Server] = []
_names = itertools.count(1)


# fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL server for the session, as a superuser URL."""
    given = os.environ.get(TEST_URL_ENV)
    if given:
        yield given
        return
    _require_asyncpg()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable(f"no PostgreSQL server binaries ({BIN_DIRS}/initdb): install Debian's "
                     f"postgresql package, or set {TEST_URL_ENV}")
    server = start_server(bin_dir)
    _started.append(server)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def pg_own_server() -> Iterator[Server]:
    """A server of its own for one test, which may stop and start it (never the
    session's, nor the one ``JOBD_TEST_PG_URL`` names); removed after it."""
    _require_asyncpg()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable(f"no PostgreSQL server binaries ({BIN_DIRS}/initdb) to start a server "
                     "that a test may restart")
    server = start_server(bin_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database_url(pg_url: str) -> Iterator[str]:
    """A new, empty database (from template0) for one test; dropped after it.

    Made and dropped in line, not ahead in the background: DROP DATABASE forces a
    checkpoint, which would then also write out the database made ahead."""
    name = f"test_{os.getpid()}_{next(_names)}"
    try:
        admin(pg_url, f"CREATE DATABASE {name} TEMPLATE template0")
    except OSError as exc:
        pytest.fail(f"the PostgreSQL server at {mask_password(pg_url)} is unreachable: {exc}",
                    pytrace=False)
    try:
        yield with_database(pg_url, name)
    finally:
        admin(pg_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class DatabasePool:
    """Migrated jobd databases on one server, lent one per :meth:`take`, emptied by
    :meth:`give_back`. See the module docstring."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._free: list[str] = []
        self._made: set[str] = set()

    def take(self) -> str:
        """The URL of an empty, migrated database no other test holds."""
        if self._free:
            return with_database(self.server_url, self._free.pop())
        from jobd.config import DatabaseConfig
        from jobd.store.postgres.connection import migrate_database

        name = f"jobd_{os.getpid()}_{next(_names)}"
        try:
            admin(self.server_url, f"CREATE DATABASE {name} TEMPLATE template0")
        except OSError as exc:
            pytest.fail(f"the PostgreSQL server at {mask_password(self.server_url)} is "
                        f"unreachable: {exc}", pytrace=False)
        self._made.add(name)
        url = with_database(self.server_url, name)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, migrate_database(DatabaseConfig(url=url))).result()
        return url

    def give_back(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        try:
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, _empty(url)).result()
        except Exception:
            self._drop(name)  # whatever a test left there, no later test gets it
            return
        self._free.append(name)

    def close(self) -> None:
        for name in list(self._made):
            self._drop(name)

    def _drop(self, name: str) -> None:
        self._made.discard(name)
        with contextlib.suppress(Exception):
            admin(self.server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _empty(url: str) -> None:
    """End the database's other sessions (a killed daemon's may linger), delete every row
    of jobd's tables but the schema version, restart their identity columns. Raises if
    the schema is not the latest migration's (a test changed it)."""
    import asyncpg

    from jobd.store.postgres.connection import SCHEMA_TABLE, migrations

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        version = await conn.fetchval(f"SELECT max(version) FROM {SCHEMA_TABLE}")
        if version != migrations()[-1].version:
            raise RuntimeError(f"schema version {version}")
        tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename <> $1", SCHEMA_TABLE)]
        identities = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND is_identity = 'YES'")
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '10s'")
            # Foreign keys are not checked meanwhile: every table is emptied.
            await conn.execute("SET LOCAL session_replication_role = replica")
            for table in tables:
                await conn.execute(f'DELETE FROM "{table}"')
            for row in identities:
                await conn.execute(f'ALTER TABLE "{row["table_name"]}" '
                                   f'ALTER COLUMN "{row["column_name"]}" RESTART')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_jobd_databases(pg_url: str) -> Iterator[DatabasePool]:
    """Migrated databases to lend to tests (see :class:`DatabasePool`)."""
    pool = DatabasePool(pg_url)
    try:
        yield pool
    finally:
        pool.close()


class Session:
    """One connection of the test's own, used from code that runs no event loop (as an
    operator's psql session would be): ``execute`` blocks until the server answered."""

    def __init__(self, url: str) -> None:
        import asyncpg

        self._pool = ThreadPoolExecutor(1)  # the connection's loop lives in this thread
        self._loop = asyncio.new_event_loop()
        self._conn = self._run(asyncpg.connect(url, timeout=10))

    def execute(self, sql: str, *args: Any) -> None:
        self._run(self._conn.execute(sql, *args))

    def close(self) -> None:
        try:
            self._run(self._conn.close())
        finally:
            self._pool.submit(self._loop.close).result()
            self._pool.shutdown()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self, coro: Any) -> Any:
        return self._pool.submit(self._loop.run_until_complete, coro).result(60)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for server in _started:
        terminalreporter.write_line(
            f"PostgreSQL {server.version} for the tests started in {server.started_in_s:.2f} s "
            f"on 127.0.0.1:{server.port} (tests/pg.py)")


# helpers ----------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin(url: str, *statements: str) -> None:
    """Run ``statements`` on their own connection, outside any test's event loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _execute(url, *statements)).result()


async def _execute(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}. CI is set: the PostgreSQL tests must run there, not skip",
                    pytrace=False)
    pytest.skip(reason)


def _require_asyncpg() -> None:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        _unavailable("asyncpg is not installed (pip install -e '.[dev]')")


def find_bin_dir() -> Path | None:
    """The newest installed server's bin directory."""
    found = [p.parent for p in Path("/").glob(BIN_DIRS.lstrip("/") + "/initdb")]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def start_server(bin_dir: Path) -> Server:
    began = time.monotonic()
    version = _server_version(bin_dir)
    template = _template_cluster(bin_dir, version)
    root = Path(tempfile.mkdtemp(prefix="jobd-pg-"))
    try:
        _give_to_server_user(root)
        _run_as_server_user(["cp", "-a", str(template), str(root / "data")])
        port = _start(bin_dir, root)
        password = secrets.token_hex(12)
        socket_url = f"postgresql://{SUPERUSER}@/postgres?host={root}&port={port}"
        admin(socket_url, f"ALTER ROLE {SUPERUSER} PASSWORD '{password}'")
    except BaseException:
        with contextlib.suppress(Exception):
            _run_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(root / "data"),
                                 "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Server(bin_dir=bin_dir, root=root, port=port, password=password, version=version,
                  started_in_s=time.monotonic() - began)


def _start(bin_dir: Path, root: Path) -> int:
    """Start the server on a free port (another one if that port is taken meanwhile)."""
    log = root / "server.log"
    for _ in range(PORT_ATTEMPTS):
        port = _free_port()
        with (root / "data" / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = {_conf_string(str(root))}\n")
        done = _run_as_server_user(
            [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(log), "-w",
             "-t", str(START_TIMEOUT_S), "start"], check=False)
        if done.returncode == 0:
            return port
        text = log.read_text(errors="replace") if log.exists() else ""
        if "already in use" not in text:
            raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{text}")
    raise RuntimeError(f"PostgreSQL found no free port in {PORT_ATTEMPTS} attempts")


def _template_cluster(bin_dir: Path, version: str) -> Path:
    """An initialised data directory kept for every session of this machine and user."""
    owner = SERVER_USER if os.geteuid() == 0 else str(os.geteuid())
    key = hashlib.sha256(repr((TEMPLATE_FORMAT, str(bin_dir), version, INITDB_ARGS,
                               owner)).encode()).hexdigest()[:16]
    final = Path(tempfile.gettempdir()) / f"jobd-pg-template-{key}"
    if (final / "data" / "PG_VERSION").exists():
        return final / "data"
    building = Path(tempfile.mkdtemp(prefix="jobd-pg-template-building-"))
    try:
        _give_to_server_user(building)
        _run_as_server_user([str(bin_dir / "initdb"), "-D", str(building / "data"),
                             *INITDB_ARGS])
        try:
            building.rename(final)  # atomic: a session racing us keeps its own copy
        except OSError:
            if not (final / "data" / "PG_VERSION").exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return final / "data"


def _server_version(bin_dir: Path) -> str:
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    match = re.search(r"\d+(?:\.\d+)+", out)
    return match.group(0) if match else out.strip()


def _give_to_server_user(path: Path) -> None:
    """The server user must own its directories (it refuses data it does not own)."""
    if os.geteuid() == 0:
        shutil.chown(path, SERVER_USER, SERVER_USER)


def _run_as_server_user(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        if shutil.which("runuser"):
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        else:
            argv = ["su", SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]
    # A clean environment: the caller's PG* variables and locale must not leak in.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/",
                          stdin=subprocess.DEVNULL, timeout=START_TIMEOUT_S * 2)
    if check and done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({done.returncode}): "
                           f"{done.stdout}{done.stderr}")
    return done


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _conf_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
