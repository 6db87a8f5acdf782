"""Every command that draws a table, on an 80x24 terminal: no line wider than 80, and the
columns that matter are all there, with ids, keys and URLs whole (wrapped, never cut)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from jobd.cli.ops import TOP_FIXED_LINES, render_stats
from tests.cli.conftest import make_tenant
from tests.stores import BlockingStore
from tests.support import cli, cli_json

WIDTH, HEIGHT = 80, 24
LONG_TENANT = "tenant-with-a-rather-long-name-for-a-narrow-terminal"
LONG_URL = "https://hooks.example.com/" + "/".join(["a-long-path-segment"] * 5) + "?q=1"


@pytest.fixture
def world(cfg: Path, seed: Any, db: BlockingStore) -> dict[str, str]:
    """Jobs, deliveries and tenants with long ids, URLs and errors."""
    make_tenant(db, LONG_TENANT)
    now = time.time()
    ok = seed.succeeded("acme", at=now - 60, webhook_url=LONG_URL)
    seed.deliver(ok, now=now - 59, status_codes=[200])
    failed = seed.fatal(LONG_TENANT, at=now - 30, errors=3, webhook_url=LONG_URL, type="http",
                        payload={"url": LONG_URL, "json": {"text": "x" * 200}})
    dead = seed.deliver(failed, now=now - 20, status_codes=[500, 502, 503, 504])
    seed.submit("acme", now=now, run_at=now + 3600)
    return {"job": failed, "delivery": dead}


def at_80_columns(cfg: Path, *args: str) -> str:
    proc = cli(cfg, *args, env={"COLUMNS": str(WIDTH), "LINES": str(HEIGHT)})
    lines = proc.stdout.splitlines()
    too_wide = [line for line in lines if len(line) > WIDTH]
    assert not too_wide, f"jobd {' '.join(args)}: lines over {WIDTH} columns:\n" + "\n".join(too_wide)
    return proc.stdout


def unwrapped(text: str) -> str:
    """The output with table borders and line breaks gone, so a value folded in the last
    column of a table reads whole."""
    return re.sub(r"[\s│┃|]+", "", text)


def column(text: str, name: str) -> str:
    """Everything under the header ``name`` of a borderless table, lines joined: a value
    folded over several lines of that column reads whole."""
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if re.search(rf"(^|  ){re.escape(name)}(  |$)", line))
    header = lines[index]
    start = header.index(name)
    after = re.search(r"  +\S", header[start + len(name):])
    end = None if after is None else start + len(name) + after.end() - 1
    return "".join(line[start:end].strip() for line in lines[index + 1:])


def headers(text: str, *names: str) -> None:
    missing = [name for name in names if name not in text]
    assert not missing, f"columns missing: {missing}\n{text}"


def test_tenants(cfg: Path, world: dict[str, str]) -> None:
    listed = at_80_columns(cfg, "tenants", "list")
    headers(listed, "tenant", "key", "rate/s", "burst", "max conc.", "state", "created")
    assert LONG_TENANT in column(listed, "tenant")
    shown = at_80_columns(cfg, "tenants", "show", LONG_TENANT)
    secret = cli_json(cfg, "tenants", "show", LONG_TENANT)["webhookSecret"]
    assert secret in shown  # on one line, to copy
    created = at_80_columns(cfg, "tenants", "create", "newcomer")
    key = re.search(r"jobd_sk_\S+", created)
    assert key and len(key.group(0)) > 40  # the whole key on one line
    for command in ("update", "disable", "enable", "rotate-key"):
        extra = ["--rate", "5"] if command == "update" else []
        assert "newcomer" in at_80_columns(cfg, "tenants", command, "newcomer", *extra)


def test_jobs(cfg: Path, world: dict[str, str]) -> None:
    listed = at_80_columns(cfg, "jobs", "list")
    headers(listed, "id", "tenant", "type", "status", "tries", "due/updated")
    assert world["job"] in listed  # ids are never folded
    assert LONG_TENANT in column(listed, "tenant")
    shown = at_80_columns(cfg, "jobs", "show", world["job"])
    headers(shown, "attempts (runs of the job)", "webhook deliveries", "tries", "url / last error")
    flat = unwrapped(shown)
    assert LONG_TENANT in flat
    assert world["delivery"] in shown and LONG_URL in column(shown, "url / last error")
    assert "HTTP 504" in shown


def test_dlq(cfg: Path, world: dict[str, str]) -> None:
    listed = at_80_columns(cfg, "dlq", "list")
    headers(listed, "delivery / tenant", "tries", "dead since", "url / last error")
    assert world["delivery"] in listed
    assert LONG_TENANT in column(listed, "delivery / tenant")
    assert LONG_URL in column(listed, "url / last error")
    shown = at_80_columns(cfg, "dlq", "show", world["delivery"])
    headers(shown, "attempts to send it", "status", "error")
    assert world["job"] in shown and LONG_URL in unwrapped(shown)


def test_stats(cfg: Path, world: dict[str, str]) -> None:
    text = at_80_columns(cfg, "stats")
    headers(text, "queued", "running", "retry", "succeeded", "fatal", "cancelled", "jobs/s",
            "DLQ size: 1", "oldest queued job waiting")
    assert LONG_TENANT in column(text, "tenant")


def test_top_frame_fits_80_by_24_with_many_tenants() -> None:
    huge = 12_345_678
    doc = {"byStatus": {"queued": huge, "running": 16, "retry": 3, "succeeded": huge,
                        "fatal": 12, "cancelled": 7},
           "byTenant": {f"{LONG_TENANT}-{i:02d}": {"queued": i, "succeeded": 1000 * i}
                        for i in range(40)},
           "finishedLastMinute": {"succeeded": 123_456}, "finishedLastHour": {"fatal": 3},
           "dlqSize": 12_345, "oldestQueuedAgeSeconds": 12_345.6,
           "at": "2026-08-20T10:00:00.000Z"}
    console = Console(width=WIDTH, height=HEIGHT, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    with console.file:
        console.print(render_stats(doc, max_tenants=HEIGHT - TOP_FIXED_LINES))
    lines = console.export_text().splitlines()
    assert len(lines) < HEIGHT and max(map(len, lines)) <= WIDTH, "\n".join(lines)
    text = "\n".join(lines)
    headers(text, "queued", "running", "retry", "succeeded", "fatal", "cancelled", "jobs/s",
            "DLQ size: 12,345", "12,345,678")
    assert f"{LONG_TENANT[:20]}" in text  # the busiest tenants, one line each
    assert "more tenant(s)" in text
