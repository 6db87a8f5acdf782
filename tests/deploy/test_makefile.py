"""The Makefile installs what a target needs, once: `make run` only the runtime, `make test`
the dev tools, and nothing again until pyproject.toml changes (checked with `make -n`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def planned(where: Path, target: str) -> list[str]:
    # run as from a shell, also when the suite itself runs under make (`make test`)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=where, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    past = time.time() - 3600
    os.utime(tmp_path / "pyproject.toml", (past, past))
    return tmp_path


def runs_the_suite(steps: list[str]) -> bool:
    """Whether ``steps`` end in the whole suite: the tests on PostgreSQL in a second
    process beside the others, both awaited."""
    tail = " ".join(steps[-6:])
    return (".venv/bin/python -m pytest -q -m postgres" in tail
            and ".venv/bin/python -m pytest -q -m 'not postgres'" in tail
            and "wait $postgres" in tail)


def stamp(project: Path, *names: str) -> None:
    (project / ".venv").mkdir(exist_ok=True)
    for name in names:
        (project / ".venv" / name).touch()


def test_a_fresh_checkout_run_installs_only_the_runtime(project: Path) -> None:
    steps = planned(project, "run")
    assert any("-m venv .venv" in s for s in steps)
    assert ".venv/bin/pip install --quiet -e ." in steps
    assert not any("[dev]" in s for s in steps)
    assert steps[-1] == ".venv/bin/jobd serve"


def test_test_installs_the_dev_tools(project: Path) -> None:
    stamp(project, ".created", ".installed-runtime")
    steps = planned(project, "test")
    assert ".venv/bin/pip install --quiet -e '.[dev]'" in steps
    assert not any("-m venv" in s for s in steps)
    assert runs_the_suite(steps)


def test_nothing_is_installed_again_until_pyproject_changes(project: Path) -> None:
    stamp(project, ".created", ".installed-runtime", ".installed-dev")
    assert planned(project, "run") == [".venv/bin/jobd serve"]
    steps = planned(project, "test")
    assert runs_the_suite(steps) and not any("pip install" in s for s in steps)
    assert not any("pip install" in s for s in planned(project, "install"))
    (project / "pyproject.toml").touch()  # newer than every stamp
    steps = planned(project, "run")
    assert ".venv/bin/pip install --quiet -e ." in steps
    assert not any("-m venv" in s for s in steps)  # the virtualenv stays
