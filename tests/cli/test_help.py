"""Every command's ``--help`` has an example, and the README's CLI block matches the CLI."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from jobd.cli.main import app

README = Path(__file__).resolve().parents[2] / "README.md"
IMPLIED_OPTIONS = {"--config", "--help"}  # every command has them; the README says so once


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every group and command under ``command``, with its path of names."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


ROOT = typer.main.get_command(app)
TREE = dict(walk(ROOT))
LEAVES = {path for path, command in TREE.items() if not hasattr(command, "commands")}


def long_options(command: Any) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])
            if opt.startswith("--")} - IMPLIED_OPTIONS


@pytest.mark.parametrize("path", sorted(TREE), ids=lambda p: " ".join(p) or "jobd")
def test_every_command_and_group_has_help_with_an_example(path: tuple[str, ...]) -> None:
    assert re.search(r"\bExamples?:", TREE[path].help or ""), f"jobd {' '.join(path)}: no example"
    shown = CliRunner().invoke(app, [*path, "--help"], prog_name="jobd", env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "Example" in shown.output
    if path in LEAVES:
        assert "--config" in shown.output


# the README's CLI block -------------------------------------------------------------


def readme_cli_block() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "no code block in the README's CLI section"
    return [line for line in block.group(1).splitlines() if line.startswith("jobd ")]


def readme_commands() -> dict[tuple[str, ...], set[str]]:
    """``{command path: options shown}`` from lines such as
    ``jobd dlq retry ID | --all [--tenant T]   what it does``: a ``|`` separates either
    sibling commands (``tenants list | show ID``) or alternative forms of one command."""
    found: dict[tuple[str, ...], set[str]] = {}
    for line in readme_cli_block():
        syntax = re.split(r"\s{2,}", line.strip())[0]  # two spaces start the description
        segments = [s.split() for s in syntax.split(" | ")]
        first = segments[0][1:]  # drop "jobd"
        path, rest = _command_path((), first, line)
        found.setdefault(path, set()).update(_options(rest))
        for words in segments[1:]:
            group = path[:-1]
            if words and (*group, words[0]) in TREE:  # a sibling command
                path, rest = _command_path(group, words, line)
            else:  # another form of the same command
                rest = words
            found.setdefault(path, set()).update(_options(rest))
    return found


def _command_path(start: tuple[str, ...], words: list[str],
                  line: str) -> tuple[tuple[str, ...], list[str]]:
    path = start
    while hasattr(TREE[path], "commands"):
        assert words, f"README names the group `jobd {' '.join(path)}` without a command: {line!r}"
        assert (*path, words[0]) in TREE, f"README: `jobd {' '.join((*path, words[0]))}` is not a command"
        path, words = (*path, words[0]), words[1:]
    return path, words


def _options(words: list[str]) -> set[str]:
    return {m for word in words for m in re.findall(r"--[a-z][a-z0-9-]*", word)}


def test_the_readme_cli_block_is_parsed() -> None:
    commands = readme_commands()
    assert ("dlq", "retry") in commands and "--all" in commands[("dlq", "retry")]
    assert ("tenants", "show") in commands  # "tenants list [--json] | show ID"


def test_every_command_in_the_readme_exists_with_the_options_shown() -> None:
    for path, options in readme_commands().items():
        missing = options - long_options(TREE[path])
        assert not missing, f"README shows {sorted(missing)} for `jobd {' '.join(path)}`"


def test_every_command_and_option_is_in_the_readme() -> None:
    commands = readme_commands()
    assert not LEAVES - set(commands), (
        f"not in the README's CLI block: {sorted(' '.join(p) for p in LEAVES - set(commands))}")
    for path in LEAVES:
        unshown = long_options(TREE[path]) - commands[path]
        assert not unshown, f"README omits {sorted(unshown)} of `jobd {' '.join(path)}`"
