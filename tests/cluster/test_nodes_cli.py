"""``jobd nodes`` on SQLite: one daemon per file, no nodes to list (the PostgreSQL side is
in test_cluster.py, with three real nodes)."""

from __future__ import annotations

from pathlib import Path

from jobd.cli.nodes import duration
from tests.support import cli, cli_json, write_config


def test_on_sqlite_it_says_there_is_no_cluster(tmp_path: Path) -> None:
    config = write_config(tmp_path / "jobd.toml", tmp_path, 0)
    cli(config, "tenants", "create", "acme")  # the database exists from here on
    said = cli(config, "nodes")
    assert "SQLite" in said.stdout and "no nodes to list" in said.stdout
    assert cli_json(config, "nodes") == []


def test_on_sqlite_a_missing_database_is_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "jobd.toml", tmp_path, 0)
    done = cli(config, "nodes", check=False)
    assert done.returncode != 0 and "does not exist" in done.stderr


def test_uptimes_read_at_a_glance() -> None:
    assert [duration(s) for s in (0, 59.9, 60, 3599, 3600, 86_399, 86_400 * 3 + 7200)] == \
        ["0s", "59s", "1m00s", "59m59s", "1h00m", "23h59m", "3d02h"]
