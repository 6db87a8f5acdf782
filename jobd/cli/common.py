"""What every command shares: the --config option, the database, output and errors."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console

from jobd.config import Config, load_config
from jobd.errors import JobdError
from jobd.store.database import Database

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
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise SystemExit(code)


def run_cli(app: typer.Typer) -> None:
    """Run the Typer app; every expected failure is one line on stderr, never a traceback."""
    try:
        app()
    except JobdError as exc:
        fail(exc.detail, exc.exit_code)
    except sqlite3.Error as exc:
        fail(f"database error: {exc}")
    except KeyboardInterrupt:
        raise SystemExit(130) from None
