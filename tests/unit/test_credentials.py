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


def test_random_bytes_are_never_handed_out_twice_across_refills() -> None:
    """The ids' random part comes from a pool read 4 KiB at a time: chunks drawn across
    many refills (and a partial one left over) never repeat."""
    chunks = [credentials._random_bytes(10) for _ in range(3 * credentials._RANDOM_REFILL)]
    assert all(len(c) == 10 for c in chunks)
    assert len(set(chunks)) == len(chunks)


def test_a_forked_child_does_not_reuse_the_parents_random_pool() -> None:
    import os

    credentials._random_bytes(10)  # the pool now holds bytes the parent has not used yet
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next bytes and leave at once
        os.write(write_end, credentials._random_bytes(10))
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 10)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == 10
    assert child != credentials._random_bytes(10)  # the parent's next ones differ
