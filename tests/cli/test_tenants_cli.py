"""``jobd tenants disable`` says what it does and what it does not do."""

from __future__ import annotations

from typing import Any

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
