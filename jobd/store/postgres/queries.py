"""The PostgreSQL backend's named statements, read once from ``queries.sql``."""

from __future__ import annotations

import re

from jobd.store.named_sql import load_named

Q = load_named("jobd.store.postgres", "queries.sql")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str | None) -> str | None:
    """``text`` as a value of a text column, U+FFFD in place of what cannot be one: a NUL
    character (PostgreSQL's text cannot hold it; SQLite keeps it) and a lone surrogate (a
    str that is not Unicode, made from undecodable bytes, cannot even be sent). For the
    texts jobd takes from elsewhere and keeps: errors of handlers and of webhook
    receivers' answers. Either would otherwise fail the whole batch it is in."""
    return text if text is None else _UNSTORABLE.sub("\ufffd", text)


def holds_nul(key: str) -> bool:
    """Whether ``key`` (a job id from a request's path) holds a NUL character: then no row
    has it (text cannot hold one), and asking the database would be an error."""
    return "\x00" in key


def changed(status: str) -> int:
    """The row count of a command status (``"UPDATE 3"`` -> 3)."""
    return int(status.rsplit(" ", 1)[-1])
