"""``jobd config``: which config file jobd reads, and the settings that result."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

from jobd.cli.common import ConfigOpt, JsonOpt, load, print_json
from jobd.config import Config

app = typer.Typer(help="Show which config file jobd reads and the settings in force.\n\n"
                  "Example: jobd config show",
                  no_args_is_help=True)

HIDDEN = "<hidden>"
_SECRET_KEYS = {("smtp", "password")}
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def settings_doc(config: Config) -> dict[str, Any]:
    """The settings by their TOML names, secrets hidden."""
    doc: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    for section, key in _SECRET_KEYS:
        if doc[section].get(key) is not None:
            doc[section][key] = HIDDEN
    if config.database.url is not None:  # its password, if any, is hidden
        doc["database"]["url"] = config.database.location
    return doc


def render_toml(doc: dict[str, dict[str, Any]]) -> str:
    """``{section: {key: value}}`` as TOML; a key whose value is None is a comment."""
    lines: list[str] = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            name = key if _BARE_KEY.match(key) else json.dumps(key)
            if value is None:
                lines.append(f"# {name} is not set")
            else:
                lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


@app.command("show")
def show(json_: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Say which config file jobd reads here and print the settings in force (defaults,
    that file, then JOBD_* variables) as TOML; secrets are hidden.

    The file is the first of: --config, JOBD_CONFIG, ./jobd.toml, /etc/jobd/jobd.toml.

    Example: jobd config show --json
    """
    source, cfg = load(config)
    if cfg.database.url is not None:  # PostgreSQL: the URL, its password masked
        database, exists = cfg.database.location, None
    else:
        path = Path(cfg.database.path).absolute()
        database, exists = str(path), path.exists()
    if json_:
        print_json({"configFile": None if source.path is None else str(source.path.absolute()),
                    "foundBy": source.found_by, "database": database,
                    "databaseExists": exists, "settings": settings_doc(cfg)})
        return
    state = "" if exists is None else " (exists)" if exists else " (does not exist)"
    typer.echo(f"# {source.describe()}\n# database: {database}{state}\n")
    typer.echo(render_toml(settings_doc(cfg)), nl=False)
