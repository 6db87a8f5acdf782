"""Identifiers: unguessable, URL-safe, and ordered by creation time (for the indexes)."""

from __future__ import annotations

import itertools
import re

import pytest

from jobd import credentials
from jobd.credentials import new_delivery_id, new_job_id

ID = re.compile(r"^(job|msg)_[-0-9A-Za-z_]{22}$")


def test_ids_are_url_safe_and_distinct() -> None:
    ids = [new_job_id() for _ in range(2000)] + [new_delivery_id() for _ in range(2000)]
    assert all(ID.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_ids_made_later_sort_later(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    for ms in (1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_500, 1_800_000_000_000):
        monkeypatch.setattr(credentials.time, "time_ns", lambda ms=ms: ms * 10**6 + 999_999)
        made.append([new_job_id() for _ in range(50)])
    for earlier, later in itertools.pairwise(made):
        assert max(earlier) < min(later)


def test_ids_of_one_millisecond_differ_in_80_random_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(credentials.time, "time_ns", lambda: 1_700_000_000 * 10**9)
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert len({i[:11] for i in ids}) == 1   # same time prefix (7 characters), random rest
