"""A real ``jobd serve`` under a connection flood, with a small open-file limit: idle
connections beyond what its files allow make room for new clients instead of locking
them out, and the daemon says so in its log (once, not once per connection)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support import request, wait_for

OPEN_FILES = 256   # (the daemon then takes 256 - 64 - 16 workers - 32 webhooks = 144)


@pytest.mark.parametrize("fast_lane", [True, False])
def test_a_flood_of_idle_connections_does_not_lock_new_clients_out(make_env, fast_lane):
    env = make_env() if fast_lane else make_env(server={"fast_lane": False})
    env.daemon.open_files = OPEN_FILES
    env.daemon.start()
    flood: list[socket.socket] = []
    try:
        for _ in range(2 * OPEN_FILES):
            sock = socket.create_connection(("127.0.0.1", env.port), timeout=5)
            flood.append(sock)
        started = time.monotonic()
        status, _, body = env.client.submit("noop", key="after-the-flood")
        assert status == 201, body
        assert request("GET", env.daemon.base + "/healthz", timeout_s=5)[0] == 200
        assert time.monotonic() - started < 5
        closed = sum(1 for sock in flood if _closed_by_server(sock))
        assert closed >= OPEN_FILES  # the oldest idle ones made room
    finally:
        for sock in flood:
            sock.close()
    lines = wait_for(lambda: [line for line in env.daemon.log().splitlines()
                              if "connection limit reached" in line],
                     what="the warning in the log")
    assert "WARNING" in lines[0] and "limit 144)" in lines[0]
    assert "accepting at most 144 connections" in env.daemon.log()
    assert len(lines) <= 3  # one line per 10 s at most, not one per connection
    assert env.daemon.terminate() == 0


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True
