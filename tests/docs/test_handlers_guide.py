"""docs/handlers.md: the invoice example, registered both ways, in a real ``jobd serve``."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from jobd.config import load_config
from jobd.errors import ConfigError
from jobd.handlers.registry import build_registry
from tests.docs.conftest import DOCS, Jobd, code_blocks

pytestmark = pytest.mark.e2e

GUIDE = DOCS / "handlers.md"
EXAMPLE = DOCS / "examples" / "invoice-jobs"


def test_the_guide_shows_the_example_files_as_they_are() -> None:
    assert (EXAMPLE / "invoice_jobs.py").read_text(encoding="utf-8") in code_blocks(GUIDE, "python")
    assert (EXAMPLE / "pyproject.toml").read_text(encoding="utf-8") in code_blocks(GUIDE, "toml")


def test_a_handler_that_cannot_be_imported_is_refused_with_its_name() -> None:
    with pytest.raises(ConfigError, match=r"handlers\.invoice: cannot load 'invoice_jobs"):
        build_registry({"invoice": "invoice_jobs_missing:send_invoice"}, use_entry_points=False)


@pytest.mark.parametrize("target", ["invoice_jobs:send_invoice", "invoice_jobs:INVOICE"])
def test_the_example_runs_when_registered_in_the_config(target: str, jobd: Callable[..., Jobd],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", f"{EXAMPLE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    exercise(jobd(handlers={"invoice": target}))


def test_the_example_registers_itself_through_its_entry_point(
        jobd: Callable[..., Jobd], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``pip install`` of the example leaves, laid out by hand: the module and a
    dist-info with the entry points its pyproject.toml declares. No [handlers] at all."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    site = tmp_path / "site"
    dist = site / "invoice_jobs-1.0.0.dist-info"
    dist.mkdir(parents=True)
    (site / "invoice_jobs.py").write_bytes((EXAMPLE / "invoice_jobs.py").read_bytes())
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    group = project["entry-points"]["jobd.handlers"]
    (dist / "entry_points.txt").write_text(
        "[jobd.handlers]\n" + "".join(f"{name} = {value}\n" for name, value in group.items()))
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env = jobd()
    assert "job types: email, http, invoice, noop" in env.daemon.log()
    exercise(env)


def exercise(env: Jobd) -> None:
    client = env.client
    status, _, created = client.submit("invoice", {"customer_id": "cus_42", "amount_cents": 1999},
                                       key="inv-1")
    assert status == 201, created
    job = client.wait_status(created["jobId"], "succeeded")
    assert job["result"]["total"] == "19.99 EUR" and job["result"]["attempt"] == 1

    status, _, problem = client.submit("invoice", {"customer_id": "cus_42", "amount_cents": -5,
                                                   "curency": "EUR"}, key="inv-2")
    assert status == 400 and problem["code"] == "validation_error"
    assert {e["field"] for e in problem["errors"]} == {"payload.amount_cents", "payload.curency"}

    status, _, created = client.submit("invoice", {"customer_id": "cus_blocked",
                                                   "amount_cents": 100}, key="inv-3")
    assert status == 201
    job = client.wait_status(created["jobId"], "fatal")
    assert job["attempts"] == 1
    assert job["lastError"] == "PermanentError: customer cus_blocked is blocked"


def test_a_handler_may_be_named_in_the_environment() -> None:
    config = load_config(None, environ={"JOBD_HANDLERS_invoice": "invoice_jobs:send_invoice"})
    assert config.handlers == {"invoice": "invoice_jobs:send_invoice"}
