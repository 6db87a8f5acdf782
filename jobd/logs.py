"""Logging: one line per event that matters, human-readable or JSON.

API keys and webhook secrets are never logged; as a second line of defence every line is
passed through :func:`redact` before it is written, which masks anything shaped like one
(``jobd_sk_…``, ``whsec_…``), in the message and in a traceback alike.
"""

from __future__ import annotations

import logging
import re
import sys

import orjson

from jobd.clock import to_rfc3339

_SECRET = re.compile(r"(jobd_sk_|whsec_)[A-Za-z0-9_\-+/=]+")


def redact(text: str) -> str:
    """``text`` with every API key and webhook secret in it masked (their prefix kept)."""
    if "jobd_sk_" not in text and "whsec_" not in text:
        return text
    return _SECRET.sub(r"\1[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": to_rfc3339(record.created), "level": record.levelname.lower(),
            "logger": record.name, "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class LogThrottle:
    """At most one log line per ``interval_s`` for an event that may recur many times a
    second (a flood must not become a flood of log lines)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next_s = float("-inf")

    def ready(self, now: float) -> bool:
        """Whether a line may be written at ``now`` (monotonic seconds); if so, the next
        one may not until ``interval_s`` later."""
        if now < self._next_s:
            return False
        self._next_s = now + self.interval_s
        return True
