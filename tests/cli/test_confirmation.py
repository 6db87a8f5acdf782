"""Destructive bulk commands (``dlq purge --all``, ``prune``) ask on a terminal and need
``--yes`` anywhere else. The terminal is a real pseudo-terminal: the prompt is answered
the way an operator would answer it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from jobd.models import JobStatus
from tests.stores import BlockingStore
from tests.support import JOBD, _env, cli, reap

DAY = 86_400.0


@pytest.fixture
def old_work(db: BlockingStore, seed: Any) -> dict[str, Any]:
    """Two finished jobs past retention (1 day in ``cfg``) and two dead deliveries."""
    old = time.time() - 3 * DAY
    done = [seed.succeeded("acme", at=old), seed.succeeded("acme", at=old + 1)]
    dead = []
    for n in range(2):
        job_id = seed.fatal("other", at=old + 10 + n, webhook_url="https://example.com/hook")
        dead.append(seed.deliver(job_id, now=old + 20 + n, status_codes=[500]))
    return {"jobs": done, "dead": dead}


def surviving_jobs(db: BlockingStore, job_ids: list[str]) -> list[str]:
    return [j for j in job_ids if db.run(lambda b, j=j: b.find_job(j)) is not None]


def dead_left(db: BlockingStore) -> int:
    return len(db.run(lambda b: b.dead_delivery_ids()))


def on_a_terminal(cfg: Path, *args: str, answer: str) -> tuple[int, str, str]:
    """Run ``jobd ARGS`` with stdin and stderr on a pseudo-terminal, wait for its
    question, type ``answer`` and Enter; return (exit code, stdout, what the terminal showed)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*JOBD, *args, "--config", str(cfg)], stdin=terminal,
                            stdout=subprocess.PIPE, stderr=terminal, env=_env(), text=True)
    os.close(terminal)
    shown = b""
    try:
        deadline = time.monotonic() + 30
        while b"[y/N]" not in shown:
            assert time.monotonic() < deadline, f"no question asked; the terminal showed {shown!r}"
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                shown += os.read(controller, 4096)
            assert proc.poll() is None or b"[y/N]" in shown, shown
        os.write(controller, answer.encode() + b"\r")
        stdout, _ = proc.communicate(timeout=30)
        while select.select([controller], [], [], 0.1)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
    finally:
        reap(proc)
        os.close(controller)
    return proc.returncode, stdout, shown.decode(errors="replace")


# not on a terminal: --yes, or nothing happens -----------------------------------------


@pytest.mark.parametrize("args", [("dlq", "purge", "--all"), ("dlq", "purge", "--all", "--json"),
                                  ("prune",), ("prune", "--json")])
def test_without_a_terminal_and_without_yes_nothing_is_deleted(cfg: Path, db: BlockingStore,
                                                               old_work: dict[str, Any],
                                                               args: tuple[str, ...]) -> None:
    proc = cli(cfg, *args, check=False)
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    message = " ".join(proc.stderr.split())
    assert "--yes" in message and "nothing was done" in message
    assert surviving_jobs(db, old_work["jobs"]) == old_work["jobs"]
    assert dead_left(db) == 2


def test_without_a_terminal_yes_is_needed_even_when_there_is_nothing_to_delete(
        cfg: Path, db: BlockingStore, seed: Any) -> None:
    """A script gets the same answer every day, not only on the days with work."""
    for args in (("prune",), ("dlq", "purge", "--all")):
        assert cli(cfg, *args, check=False).returncode == 2
        assert cli(cfg, *args, "--yes").returncode == 0


def test_yes_deletes_without_asking(cfg: Path, db: BlockingStore, old_work: dict[str, Any]) -> None:
    assert "2 dead delivery(ies) purged" in cli(cfg, "dlq", "purge", "--all", "--yes").stdout
    assert dead_left(db) == 0
    assert "jobs: 4" in cli(cfg, "prune", "-y").stdout  # the two succeeded, the two fatal
    assert surviving_jobs(db, old_work["jobs"]) == []


def test_purging_one_delivery_by_id_does_not_ask(cfg: Path, db: BlockingStore,
                                                 old_work: dict[str, Any]) -> None:
    assert cli(cfg, "dlq", "purge", old_work["dead"][0]).returncode == 0
    assert dead_left(db) == 1


# on a terminal: the question, then the answer ----------------------------------------


def test_dlq_purge_all_asks_and_a_no_keeps_everything(cfg: Path, db: BlockingStore,
                                                      old_work: dict[str, Any]) -> None:
    code, stdout, shown = on_a_terminal(cfg, "dlq", "purge", "--all", answer="n")
    assert "Delete 2 dead delivery(ies) and their attempt history? [y/N]" in shown
    assert code == 1 and "not confirmed: nothing was done" in shown
    assert stdout == ""
    assert dead_left(db) == 2


def test_dlq_purge_all_asks_and_a_yes_purges(cfg: Path, db: BlockingStore,
                                             old_work: dict[str, Any]) -> None:
    code, stdout, shown = on_a_terminal(cfg, "dlq", "purge", "--all", "--tenant", "other",
                                        answer="y")
    assert "of tenant other" in shown
    assert code == 0 and "2 dead delivery(ies) purged" in stdout
    assert dead_left(db) == 0


def test_prune_asks_with_what_it_would_delete(cfg: Path, db: BlockingStore,
                                              old_work: dict[str, Any]) -> None:
    code, _, shown = on_a_terminal(cfg, "prune", answer="")  # Enter alone: the default, no
    assert "Delete 4 finished job(s) and 0 delivered webhook(s) older than" in shown
    assert code == 1
    assert surviving_jobs(db, old_work["jobs"]) == old_work["jobs"]

    code, stdout, _ = on_a_terminal(cfg, "prune", "--json", answer="y")
    assert code == 0 and '"jobs": 4' in stdout
    assert surviving_jobs(db, old_work["jobs"]) == []
    assert db.run(lambda b: b.list_jobs(status=JobStatus.SUCCEEDED.value, limit=10)) == []
