"""RFC 3339 formatting of stored times: UTC, milliseconds, a Z."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobd.clock import to_rfc3339


@pytest.mark.parametrize(("ts", "text"), [
    (0.0, "1970-01-01T00:00:00.000Z"),
    (1_755_684_000.0, "2025-08-20T10:00:00.000Z"),
    (1_755_684_000.1234, "2025-08-20T10:00:00.123Z"),
    (1_755_684_000.9996, "2025-08-20T10:00:01.000Z"),  # rounds into the next second
    (-1.5, "1969-12-31T23:59:58.500Z"),
    (4_102_444_799.999, "2099-12-31T23:59:59.999Z"),
    (-62_135_596_800.0, "0001-01-01T00:00:00.000Z"),   # four digits before the year 1000 too
    (-30_641_760_000.0, "0999-01-01T00:00:00.000Z"),
    (253_402_300_799.999, "9999-12-31T23:59:59.999Z"),
])
def test_known_times(ts: float, text: str) -> None:
    assert to_rfc3339(ts) == text


def test_none_is_none() -> None:
    assert to_rfc3339(None) is None


def test_agrees_with_datetime_across_seconds_in_any_order() -> None:
    # The formatter keeps the last second's text: alternate between seconds to check it
    # is never reused for another one.
    for ts in (1_700_000_000.25, 1_600_000_000.5, 1_700_000_000.75, 1_700_000_001.0):
        expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
        assert to_rfc3339(ts) == expected.replace("+00:00", "Z")
