"""contrib/: the systemd unit, its user and its config, checked with systemd's own tools.

Where systemd-analyze is missing the checks that need it are skipped, except under CI
(``CI`` set), where .ci/run installs it and a skip would hide a broken unit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobd.config import load_config

pytestmark = pytest.mark.deploy

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
UNIT = CONTRIB / "jobd.service"
JOBD_BIN = Path(sys.executable).parent / "jobd"


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing under CI: .ci/run installs systemd")
        pytest.skip(f"{name} is not installed")
    return path


def unit() -> dict[str, list[str]]:
    """``{"Section.Key": [values]}``: systemd keys may repeat."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(f"{section}.{key}", []).append(value)
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = systemd_tool("systemd-analyze")
    # verify checks that ExecStart's program exists: point it at this virtualenv's jobd
    text = UNIT.read_text().replace("/opt/jobd/bin/jobd", str(JOBD_BIN))
    assert str(JOBD_BIN) in text
    checked = tmp_path / "jobd.service"
    checked.write_text(text)
    proc = subprocess.run([tool, "verify", str(checked)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # not even a warning


def test_the_unit_is_hardened_by_systemds_own_measure(tmp_path: Path) -> None:
    tool = systemd_tool("systemd-analyze")
    checked = tmp_path / "jobd.service"
    checked.write_text(UNIT.read_text().replace("/opt/jobd/bin/jobd", str(JOBD_BIN)))
    proc = subprocess.run([tool, "security", "--offline=yes", str(checked)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for jobd\.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout  # "OK"; an unhardened unit is 9.x


def test_the_sysusers_file_creates_the_units_user(tmp_path: Path) -> None:
    tool = systemd_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run([tool, f"--root={tmp_path}", str(CONTRIB / "jobd.sysusers")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    [user] = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
              if line.startswith("jobd:")]
    keys = unit()
    assert user[0] == keys["Service.User"][0] and user[5] == "/var/lib/jobd"
    assert "jobd:" in (tmp_path / "etc/group").read_text()


def test_unit_and_config_agree() -> None:
    keys = unit()
    config = load_config(CONTRIB / "jobd.toml", environ={})
    assert keys["Service.Type"] == ["notify"]  # jobd serve sends READY=1 (tests/e2e)
    assert keys["Service.ExecStart"] == ["/opt/jobd/bin/jobd serve --config /etc/jobd/jobd.toml"]
    assert keys["Service.Restart"] == ["on-failure"]
    assert keys["Service.UMask"] == ["0077"]
    # shutdown takes up to workers.shutdown_grace and a little more: systemd must wait longer
    stop_s = seconds(keys["Service.TimeoutStopSec"][0])
    assert stop_s >= config.workers.shutdown_grace + 10
    assert f"({config.workers.shutdown_grace:g} in contrib/jobd.toml)" in UNIT.read_text()
    # the database lives in the state directory, the one place the unit lets jobd write
    state = Path("/var/lib") / keys["Service.StateDirectory"][0]
    assert Path(config.database.path).parent == state
    assert keys["Service.ReadWritePaths"] == [str(state)]
    assert keys["Service.WorkingDirectory"] == [str(state)]
    for setting in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert keys[f"Service.{setting}"] == ["yes"], setting
    assert keys["Service.ProtectSystem"] == ["strict"]
