"""Log lines never carry an API key or a webhook secret (masked however they got into a
message or a traceback), and a recurring event writes one line per interval."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from jobd.credentials import new_api_key, new_webhook_secret
from jobd.logs import JsonFormatter, LogThrottle, TextFormatter, redact


def test_keys_and_secrets_are_masked_wherever_they_are() -> None:
    key, secret = new_api_key(), new_webhook_secret()
    text = f"Authorization: Bearer {key}\\x00' and {secret}, again {key}."
    masked = redact(text)
    assert key not in masked and secret not in masked
    assert masked == ("Authorization: Bearer jobd_sk_[redacted]\\x00' and whsec_[redacted], "
                      "again jobd_sk_[redacted].")


@pytest.mark.parametrize("text", ["job jobd_x finished", "no secret here", "whsec", ""])
def test_other_text_is_left_as_it_is(text: str) -> None:
    assert redact(text) == text


def record_with_secret(key: str) -> logging.LogRecord:
    try:
        raise ValueError(f"bad header {key!r}")
    except ValueError:
        exc_info = sys.exc_info()
    return logging.LogRecord("jobd.api", logging.ERROR, __file__, 1, "request from %s failed",
                             (f"Bearer {key}",), exc_info)


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_both_formats_mask_the_message_and_the_traceback(formatter: logging.Formatter) -> None:
    key = new_api_key()
    line = formatter.format(record_with_secret(key))
    assert key not in line and line.count("jobd_sk_[redacted]") == 2
    if isinstance(formatter, JsonFormatter):
        assert "Traceback" in orjson.loads(line)["exc"]


def test_a_throttle_lets_one_line_through_per_interval() -> None:
    throttle = LogThrottle(10.0)
    assert [throttle.ready(t) for t in (100.0, 100.1, 105.0, 109.9, 110.0, 110.5, 130.0)] == [
        True, False, False, False, True, False, True]
