"""server.max_connections, lowered to what the open-file limit leaves beside the daemon's
own files (database, logs, a connection per worker and per webhook in flight)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from jobd.api.connections import FILES_RESERVED, MIN_CONNECTIONS, connection_limit
from tests.conftest import make_config


@pytest.mark.parametrize(("open_files", "wanted", "limit"), [
    (1_048_576, 1000, 1000),                   # plenty of files: as configured
    (1024, 1000, 1024 - FILES_RESERVED - 16 - 32),  # a typical soft limit: lowered
    (1024, 500, 500),
    (256, 1000, 256 - FILES_RESERVED - 16 - 32),
    (100, 1000, MIN_CONNECTIONS),              # (too few files for jobd to be of use)
    (100, 4, 4),
    (resource.RLIM_INFINITY, 5000, 5000),
])
def test_the_limit_fits_the_open_file_limit(tmp_path: Path, open_files: int, wanted: int,
                                            limit: int) -> None:
    config = make_config(tmp_path, server={"max_connections": wanted},
                         workers={"concurrency": 16}, webhooks={"concurrency": 32})
    assert connection_limit(config, open_files) == limit


def test_more_workers_leave_fewer_connections(tmp_path: Path) -> None:
    few = make_config(tmp_path, workers={"concurrency": 16})
    many = make_config(tmp_path, workers={"concurrency": 400})
    assert connection_limit(many, 1024) == connection_limit(few, 1024) - 384
