"""The wheel, as a user gets it: built from the source, installed into a fresh virtualenv
(its dependencies from the package index), and run from there: ``jobd version``, then
``jobd serve`` with a job through it, which needs the SQL files inside the package."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from jobd import __version__
from tests.support import Client, free_port, reap, request, wait_for, write_config

REPO = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.db*")

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]


def run(*args: str | Path, cwd: Path, timeout_s: float = 600) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s, env=clean_env())
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def clean_env() -> dict[str, str]:
    """No variable that would let the repository's code or settings leak in."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("JOBD_", "PYTHON", "VIRTUAL_ENV")) and k != "NOTIFY_SOCKET"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the source tree (the build leaves nothing in it)."""
    work = tmp_path_factory.mktemp("build")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", work / "dist", source,
        cwd=work)
    [built] = (work / "dist").glob("jobd-*.whl")
    return built


def test_the_wheel_holds_the_package_and_its_sql_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.name.startswith(f"jobd-{__version__}-py3-none-any")
    for needed in ("jobd/cli/main.py", "jobd/store/sqlite/queries.sql",
                   "jobd/store/sqlite/migrations/0001_initial.sql"):
        assert needed in names, needed
    migrations = sorted(p.name for p in (REPO / "jobd/store/sqlite/migrations").glob("*.sql"))
    assert sorted(n.rsplit("/", 1)[1] for n in names
                  if n.startswith("jobd/store/sqlite/migrations/") and n.endswith(".sql")) == migrations
    assert not [n for n in names if n.startswith(("tests/", "bench/", "contrib/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "jobd = jobd.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_in_a_fresh_virtualenv_it_runs_and_serves(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin/python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)
    home = tmp_path / "home"  # nowhere near the repository
    home.mkdir()
    jobd = venv / "bin/jobd"
    assert run(jobd, "version", cwd=home).strip() == __version__
    where = run(venv / "bin/python", "-c", "import jobd; print(jobd.__file__)", cwd=home)
    assert where.startswith(str(venv)), where  # the installed copy, not the source

    port = free_port()
    config = write_config(home / "jobd.toml", home, port)
    log = (home / "serve.log").open("wb")
    server = subprocess.Popen([jobd, "serve"], cwd=home, env=clean_env(), stdout=log, stderr=log)
    try:
        def healthy() -> bool:
            assert server.poll() is None, (home / "serve.log").read_text()
            try:
                return request("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200
            except OSError:
                return False
        wait_for(healthy, timeout_s=30, what="jobd serve from the wheel")
        assert f"config file {config} (found by search)" in (home / "serve.log").read_text()
        creds = json.loads(run(jobd, "tenants", "create", "acme", "--json", cwd=home))
        client = Client(f"http://127.0.0.1:{port}", "acme", creds["apiKey"])
        status, _, body = client.submit("noop", {"hello": "wheel"}, key="from-the-wheel")
        assert status == 201, body
        assert client.wait_status(body["jobId"], "succeeded", timeout_s=20)["attempts"] == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        reap(server)
        log.close()
