"""Named SQL statements read from a ``.sql`` file: each starts at a ``-- name: x`` line and
runs to the next one; other comment lines are left out."""

from __future__ import annotations

from importlib import resources


def load_named(package: str, filename: str) -> dict[str, str]:
    """``{name: statement}`` from ``filename`` shipped in ``package``."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- name:"):
            if name:
                queries[name] = "\n".join(lines).strip()
            name, lines = line.split(":", 1)[1].strip(), []
        elif name and not line.startswith("--"):
            lines.append(line)
    if name:
        queries[name] = "\n".join(lines).strip()
    return queries
