"""Named queries, read once from ``queries.sql`` (``-- name: x`` headers)."""

from __future__ import annotations

from importlib import resources


def _load() -> dict[str, str]:
    text = resources.files("jobd.store").joinpath("queries.sql").read_text(encoding="utf-8")
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


Q = _load()
