"""What every command shares: the --config option, the database, output, errors and
the confirmation that destructive commands ask for.

A command that uses the database is an async function of the store's
:class:`~jobd.store.backend.Backend`, run by :func:`with_backend`: it opens the database
the config names (as the CLI: no daemon lock, no background threads beyond the
writer's), runs the function, and closes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jobd.clock import to_rfc3339
from jobd.config import (
    CONFIG_ENV,
    Config,
    ConfigSource,
    database_path_is_explicit,
    locate_config,
    read_config,
)
from jobd.errors import JobdError, StoreUnavailable
from jobd.store import open_backend
from jobd.store.backend import Backend
from jobd.store.cluster import Signal, open_coordination

try:  # Typer >= 0.26 carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer depends on click
    from click.exceptions import ClickException  # type: ignore[no-redef,assignment,unused-ignore]

ConfigOpt = Annotated[Path | None, typer.Option(  # JOBD_CONFIG is read by locate_config
    "--config", "-c",
    help=f"TOML config file. Without it: ${CONFIG_ENV}, then ./jobd.toml, then "
         "/etc/jobd/jobd.toml, else the defaults; JOBD_<SECTION>_<KEY> variables override "
         "keys. `jobd config show` says which file is read.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
YesOpt = Annotated[bool, typer.Option(
    "--yes", "-y", help="Do not ask for confirmation (required when not on a terminal).")]

T = TypeVar("T")
out = Console()
err = Console(stderr=True)


def load(path: Path | None) -> tuple[ConfigSource, Config]:
    """The config file to use (``--config``/``JOBD_CONFIG``, else the search) and its config."""
    source = locate_config(path)
    return source, read_config(source)


def config_from(path: Path | None) -> Config:
    return load(path)[1]


def existing_database(path: Path | None) -> Config:
    """The config, once its database is known to exist. A missing SQLite file is an error
    that says where jobd looked: only ``tenants create`` may start a new database (a
    PostgreSQL database is the server's to have)."""
    source, config = load(path)
    if is_missing(config):
        raise StoreUnavailable(missing_database(source, config))
    return config


def is_missing(config: Config) -> bool:
    """Whether the config names a SQLite file that does not exist."""
    database = config.database
    return database.url is None and database.path != ":memory:" and not Path(database.path).exists()


CLOSE_TIMEOUT_S = 3.0  # what a command's database calls get to finish once it is done


def with_backend(config: Config, fn: Callable[[Backend], Awaitable[T]], *,
                 tell: tuple[Signal, ...] = ()) -> T:
    """``fn`` of the configured database's backend, opened for this command and closed
    after. The store's own log lines stay out of the command's output: a failure reaches
    the command as an error, which it prints. ``tell``: what the daemons sharing the
    database are told once ``fn`` is done (they would find it by polling otherwise; a
    failure to tell them is not the command's)."""
    _quiet_store_logs()
    return asyncio.run(_with_opened(config, fn, tell))


async def _with_opened(config: Config, fn: Callable[[Backend], Awaitable[T]],
                       tell: tuple[Signal, ...] = ()) -> T:
    backend = open_backend(config.database)
    await backend.open()
    try:
        done = await fn(backend)
        if tell:
            coordination = open_coordination(backend, config)
            with contextlib.suppress(StoreUnavailable):
                await coordination.tell(*tell)
            await coordination.close()
        return done
    finally:  # also after Ctrl-C: a command never hangs on a call it gave up on
        await backend.close(timeout_s=CLOSE_TIMEOUT_S)


def _quiet_store_logs() -> None:
    store = logging.getLogger("jobd.store")
    if not any(isinstance(h, logging.NullHandler) for h in store.handlers):
        store.addHandler(logging.NullHandler())  # (else Python's last resort prints them)


def missing_database(source: ConfigSource, config: Config, *, can_create: bool = False) -> str:
    """Which file was looked for, why there, and how to point jobd at the right one."""
    path = config.database.path
    shown = Path(path).absolute()
    if database_path_is_explicit(config):
        why = ("JOBD_DATABASE_PATH" if "JOBD_DATABASE_PATH" in os.environ
               else f"database.path in {source.path}")
        return (f"database {shown} ({why}) does not exist; start the daemon (jobd serve) "
                "first, or set database.path / JOBD_DATABASE_PATH to the daemon's database")
    create = "; or pass --create to start a new, empty database here" if can_create else ""
    return (f"no database at {shown} (database.path is not set, so it is {path!r} in the "
            f"current directory; {source.describe()}). Point jobd at the daemon's database "
            f"with --config FILE or {CONFIG_ENV}=FILE (a config that sets database.path), or "
            f"with JOBD_DATABASE_PATH=PATH{create}")


def confirm(question: str, *, yes: bool, ask: bool = True) -> None:
    """Go on with a destructive command: with ``--yes``, or when the operator answers yes
    on a terminal (asked only if ``ask``: there is something to delete). Not on a
    terminal and no ``--yes``: exit 2 having done nothing, whatever there is to delete,
    so a script behaves the same on every run."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question} Not on a terminal to ask, so nothing was done: pass --yes to "
             "confirm", 2)
    if not ask:
        return
    err.print(f"{question} [y/N] ", end="", highlight=False, markup=False)
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):  # the prompt and answer stay
        fail("not confirmed: nothing was done")                   # off stdout (--json)


def fields_table(rows: Iterable[tuple[str, Any]], *, title: str | None = None) -> Table:
    """A two-column table of names and values. Values wrap rather than being cut, so an
    id, key or URL is never shortened; a value that fits the line stays on one line."""
    table = Table(show_header=False, title=title)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    return table


def list_table(*, title: str | None = None) -> Table:
    """A borderless table for lists of rows: it leaves the width to the columns, so lists
    fit an 80-column terminal."""
    return Table(title=title, box=None, pad_edge=False)


def short_time(ts: float | None) -> str:
    """``08-20 10:00:00`` (UTC), for list tables; --json has RFC 3339 times."""
    return "-" if ts is None else (to_rfc3339(ts) or "")[5:19].replace("T", " ")


def print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True,
              soft_wrap=True)
    raise SystemExit(code)


def run_cli(app: typer.Typer) -> None:
    """Run the Typer app; every expected failure is one line on stderr, never a traceback.

    Usage errors (a bad option value, a missing argument) are one line too, with the
    command's ``--help`` to look at, instead of Typer's framed box."""
    for arg in sys.argv[1:]:  # bytes the locale cannot decode arrive as lone surrogates
        if arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace") != arg:
            fail(f"argument {arg.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8", 2)
    try:
        code = app(prog_name="jobd", standalone_mode=False)
    except JobdError as exc:
        fail(exc.detail, exc.exit_code)
    except ClickException as exc:
        _usage_error(exc)
    except (KeyboardInterrupt, typer.Abort):
        raise SystemExit(130) from None
    except OSError as exc:  # a file we were pointed at cannot be used
        fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    raise SystemExit(code if isinstance(code, int) else 0)


def _usage_error(exc: ClickException) -> NoReturn:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        sys.stdout.write(ctx.get_help() + "\n")  # `jobd`, `jobd jobs`: the help, exit 2
        raise SystemExit(exc.exit_code)
    message = " ".join(exc.format_message().split())
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    err.print(f"[bold red]error:[/] {escape(message)}{hint}", highlight=False, soft_wrap=True)
    raise SystemExit(exc.exit_code)
