"""``jobd tenants``: what ``disable`` does and does not do; limits the database holds."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from jobd.cli.main import app


def test_disable_says_the_key_is_refused_and_the_jobs_still_run(jobd: Any, seed: Any) -> None:
    proc = jobd("tenants", "disable", "acme")
    note = " ".join(proc.stderr.split())
    assert "tenant acme disabled" in note
    assert "API key is now refused (401)" in note
    assert "does not pause the tenant" in note
    assert "jobs already queued or retrying still run" in note
    assert "webhooks are still sent" in note
    assert "jobd jobs cancel" in note
    assert "True" in proc.stdout  # the tenant, now disabled
    doc = jobd.json("tenants", "disable", "acme")  # --json: the tenant on stdout, as before
    assert doc["disabled"] is True
    again = " ".join(jobd("tenants", "enable", "acme").stderr.split())
    assert "its API key is accepted again" in again


def test_disable_help_says_it_does_not_pause_the_tenant() -> None:
    shown = CliRunner().invoke(app, ["tenants", "disable", "--help"], prog_name="jobd",
                               env={"COLUMNS": "200"})
    text = " ".join(shown.output.split())
    assert "Refuse the tenant's API key (401)" in text
    assert "It does not pause the tenant" in text and "still run" in text


@pytest.mark.parametrize("args", [("tenants", "create", "big", "--burst", "2147483648"),
                                  ("tenants", "update", "acme", "--burst", "1" + "0" * 20),
                                  ("tenants", "update", "acme", "--max-concurrency",
                                   "2147483648"),
                                  ("tenants", "create", "big", "--rate", "inf"),
                                  ("tenants", "update", "acme", "--rate", "1000001")])
def test_limits_past_what_is_stored_are_bad_input(jobd: Any, seed: Any,
                                                 args: tuple[str, ...]) -> None:
    """The same refusal on both backends (PostgreSQL's columns are 32-bit integers; a
    rate must be finite), as bad input (exit 2) naming the option, before anything is
    written."""
    before = jobd.json("tenants", "list")
    proc = jobd(*args, "--json", check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert args[3] in proc.stderr
    assert ("1000000" if args[3] == "--rate" else "2147483647") in proc.stderr
    assert jobd.json("tenants", "list") == before
    jobd("tenants", "create", "top", "--burst", "2147483647", "--max-concurrency", "2147483647")
    top = jobd.json("tenants", "show", "top")
    assert (top["burst"], top["maxConcurrency"]) == (2147483647, 2147483647)
