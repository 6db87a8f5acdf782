"""Telling systemd how ``jobd serve`` is doing (``Type=notify`` units).

The protocol is one datagram per message to the AF_UNIX socket named by
``NOTIFY_SOCKET`` (a leading ``@`` means Linux's abstract namespace): ``READY=1``
once the API answers, ``STOPPING=1`` when shutdown starts. Outside systemd the
variable is unset and nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("jobd.sdnotify")
NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``"READY=1"``, ``"STOPPING=1"``, ...) to systemd; return whether
    it was sent. A failure is logged, never raised: the daemon runs on without it."""
    address = (os.environ if environ is None else environ).get(NOTIFY_SOCKET)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s=%s): %s", NOTIFY_SOCKET, address.lstrip("\0"),
                    exc)
        return False
    return True
