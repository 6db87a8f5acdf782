"""The PostgreSQL backend's named statements, read once from ``queries.sql``."""

from __future__ import annotations

import re

from jobd.store.named_sql import load_named

Q = load_named("jobd.store.postgres", "queries.sql")
_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str | None) -> str | None:
    """``text`` with U+FFFD for each lone surrogate: a str that is not Unicode (an error
    message made from undecodable bytes) can be neither sent nor stored, and would fail
    the whole batch it is in."""
    if text is None or text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def changed(status: str) -> int:
    """The row count of a command status (``"UPDATE 3"`` -> 3)."""
    return int(status.rsplit(" ", 1)[-1])
