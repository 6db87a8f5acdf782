"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path

import pytest

from jobd.sdnotify import notify


def test_without_notify_socket_nothing_is_sent() -> None:
    assert notify("READY=1", environ={}) is False


def test_a_path_socket_gets_the_message(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert notify("READY=1\nSTATUS=serving", environ={"NOTIFY_SOCKET": path}) is True
        assert server.recv(1024) == b"READY=1\nSTATUS=serving"


def test_an_abstract_socket_is_written_with_a_leading_at() -> None:
    name = f"jobd-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert server.recv(1024) == b"STOPPING=1"


def test_a_socket_that_is_gone_is_logged_not_raised(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="jobd.sdnotify"):
        assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "could not notify systemd" in caplog.text
