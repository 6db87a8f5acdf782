"""Which config file and which database the CLI uses when it is not told, as a user runs
it: the real ``jobd`` process in a directory of its own, without ``--config``.

SQLite only: without a config the database is SQLite's file, which may be missing or
created here; a PostgreSQL database (``database.url``) is the server's to have."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from jobd.config import load_config
from tests.support import JOBD

pytestmark = pytest.mark.skipif(Path("/etc/jobd/jobd.toml").exists(),
                                reason="this machine has an /etc/jobd/jobd.toml, which jobd would read")


def jobd(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``jobd ARGS`` in ``cwd``: no --config, no JOBD_* variables but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBD_")}
    return subprocess.run([*JOBD, *args], cwd=cwd, env={**clean, **(env or {})}, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=60)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    return " ".join(proc.stderr.split())


# a management command never creates an empty database by accident --------------------


def test_tenants_create_without_a_database_says_where_it_looked_and_creates_nothing(
        tmp_path: Path) -> None:
    message = one_line_error(jobd(tmp_path, "tenants", "create", "acme"), 1)
    assert f"no database at {tmp_path / 'jobd.db'}" in message
    assert str(tmp_path / "jobd.toml") in message and "/etc/jobd/jobd.toml" in message
    for remedy in ("--config", "JOBD_CONFIG", "database.path", "JOBD_DATABASE_PATH", "--create"):
        assert remedy in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [("tenants", "disable", "acme"), ("tenants", "rotate-key", "acme"),
                                  ("tenants", "update", "acme", "--rate", "5"),
                                  ("tenants", "list"), ("jobs", "list"), ("dlq", "list"),
                                  ("stats",), ("prune", "--dry-run")])
def test_other_commands_without_a_database_fail_the_same_way(tmp_path: Path,
                                                             args: tuple[str, ...]) -> None:
    message = one_line_error(jobd(tmp_path, *args), 1)
    assert f"no database at {tmp_path / 'jobd.db'}" in message and "JOBD_DATABASE_PATH" in message
    assert "--create" not in message  # only `tenants create` takes it
    assert list(tmp_path.iterdir()) == []


def test_create_flag_starts_a_new_database_and_says_so(tmp_path: Path) -> None:
    proc = jobd(tmp_path, "tenants", "create", "acme", "--create", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tenantId"] == "acme"
    assert f"created a new database at {tmp_path / 'jobd.db'}" in " ".join(proc.stderr.split())
    assert [t["tenantId"] for t in json.loads(jobd(tmp_path, "tenants", "list", "--json").stdout)] == [
        "acme"]


def test_a_database_path_set_in_the_config_or_environment_is_created_without_create(
        tmp_path: Path) -> None:
    (tmp_path / "jobd.toml").write_text('[database]\npath = "state/jobs.db"\n')
    (tmp_path / "state").mkdir()
    proc = jobd(tmp_path, "tenants", "create", "acme", "--json")  # ./jobd.toml, found by search
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "state" / "jobs.db").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = jobd(elsewhere, "tenants", "create", "acme", "--json",
                env={"JOBD_DATABASE_PATH": str(tmp_path / "env.db")})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "env.db").exists()


def test_a_missing_database_named_by_the_config_says_so(tmp_path: Path) -> None:
    (tmp_path / "jobd.toml").write_text('[database]\npath = "gone.db"\n')
    message = one_line_error(jobd(tmp_path, "jobs", "list"), 1)
    assert f"database {tmp_path / 'gone.db'} (database.path in" in message
    assert "jobd.toml" in message and "jobd serve" in message


# which file: `jobd config show` ------------------------------------------------------


def test_config_show_without_a_file_says_where_it_looked(tmp_path: Path) -> None:
    proc = jobd(tmp_path, "config", "show")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first == (f"# no config file (looked for {tmp_path / 'jobd.toml'} and "
                     "/etc/jobd/jobd.toml): defaults and JOBD_* variables")
    assert f"# database: {tmp_path / 'jobd.db'} (does not exist)" in proc.stdout


def test_config_show_names_the_file_found_and_prints_the_settings_it_gives(tmp_path: Path) -> None:
    (tmp_path / "jobd.toml").write_text('[server]\nport = 9099\n[smtp]\npassword = "s3cret"\n'
                                        '[handlers]\n"my.type" = "app.jobs:run"\n')
    proc = jobd(tmp_path, "config", "show", env={"JOBD_WORKERS_CONCURRENCY": "3"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"# config file {tmp_path / 'jobd.toml'} (found by search)")
    assert "s3cret" not in proc.stdout
    shown = tomllib.loads(proc.stdout)
    assert shown["server"]["port"] == 9099 and shown["workers"]["concurrency"] == 3
    assert shown["handlers"] == {"my.type": "app.jobs:run"}
    # the output is a config file that gives the same settings (but the hidden secret)
    (tmp_path / "shown.toml").write_text(proc.stdout)
    again = load_config(tmp_path / "shown.toml", environ={})
    original = load_config(tmp_path / "jobd.toml", environ={"JOBD_WORKERS_CONCURRENCY": "3"})
    assert again.model_copy(update={"smtp": original.smtp}) == original


def test_config_show_json_and_the_order_of_sources(tmp_path: Path) -> None:
    (tmp_path / "jobd.toml").write_text("[server]\nport = 1003\n")
    (tmp_path / "env.toml").write_text("[server]\nport = 1002\n")
    (tmp_path / "given.toml").write_text("[server]\nport = 1001\n")

    def shown(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        doc = json.loads(jobd(tmp_path, "config", "show", "--json", *args, env=env).stdout)
        return doc["settings"]["server"]["port"], doc["foundBy"], doc["configFile"]

    assert shown() == (1003, "search", str(tmp_path / "jobd.toml"))
    env = {"JOBD_CONFIG": str(tmp_path / "env.toml")}
    assert shown(env=env) == (1002, "JOBD_CONFIG", str(tmp_path / "env.toml"))
    assert shown("--config", str(tmp_path / "given.toml"), env=env) == (
        1001, "--config", str(tmp_path / "given.toml"))
