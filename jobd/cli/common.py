"""What every command shares: the --config option, the database, output and errors."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from jobd.config import Config, load_config
from jobd.errors import JobdError
from jobd.store.database import Database

try:  # Typer >= 0.26 carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer depends on click
    from click.exceptions import ClickException  # type: ignore[no-redef,assignment]

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", envvar="JOBD_CONFIG", show_envvar=True,
    help="TOML config file (defaults for every key; JOBD_<SECTION>_<KEY> overrides).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]

out = Console()
err = Console(stderr=True)


def config_from(path: Path | None) -> Config:
    return load_config(path)


def open_db(path: Path | None, *, must_exist: bool = True) -> Database:
    return Database(config_from(path).database, must_exist=must_exist)


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
    try:
        code = app(prog_name="jobd", standalone_mode=False)
    except JobdError as exc:
        fail(exc.detail, exc.exit_code)
    except sqlite3.Error as exc:
        fail(f"database error: {exc}")
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
