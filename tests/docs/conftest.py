"""Fixtures for the guides' tests: a real ``jobd serve`` on a config the test writes (on
each backend: see tests/conftest.py's ``database``)."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import Databases
from tests.support import Client, Daemon, cli_json, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(encoding="utf-8"),
                      re.S | re.M)


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Jobd:
    """A running daemon, its config file and one tenant made with the real CLI."""

    def __init__(self, tmp_path: Path, database: dict[str, Any],
                 sections: dict[str, dict[str, Any]]) -> None:
        self.port = free_port()
        data: dict[str, dict[str, Any]] = {
            "server": {"port": self.port},
            "database": database,
            "webhooks": {"allow_private_networks": True},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        self.config = tmp_path / "jobd.toml"
        self.config.write_text("".join(
            f"[{section}]\n" + "".join(f"{key} = {json.dumps(value)}\n"
                                       for key, value in values.items())
            for section, values in data.items()))
        creds = cli_json(self.config, "tenants", "create", "acme")
        self.secret: str = creds["webhookSecret"]
        self.daemon = Daemon(self.config, self.port, tmp_path / "jobd.log").start()
        self.client = Client(self.daemon.base, "acme", creds["apiKey"])


@pytest.fixture
def jobd(tmp_path: Path, database: Databases) -> Iterator[Callable[..., Jobd]]:
    """``jobd(**sections)`` starts one, on the test's backend."""
    started: list[Jobd] = []

    def start(**sections: dict[str, Any]) -> Jobd:
        where = tmp_path / f"jobd{len(started)}"
        where.mkdir()
        started.append(Jobd(where, database(where), sections))
        return started[-1]

    yield start
    for one in started:
        one.daemon.stop()
