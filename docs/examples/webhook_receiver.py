"""A webhook receiver for jobd: verify, de-duplicate, answer at once, work later.

    JOBD_WEBHOOK_SECRET=whsec_... python3 webhook_receiver.py [PORT]

Standard library only. It verifies both signatures jobd sends (either one is enough;
checking both costs little), refuses a timestamp more than five minutes away, stores
each event under its ``webhook-id`` in a SQLite file (so a redelivery is acknowledged but
not handled twice), answers 204 as soon as the event is stored, and does the work on a
background thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 5 * 60
MAX_BODY_BYTES = 1 << 20


def verify_x_signature(secret: str, body: bytes, header: str) -> bool:
    """``X-Signature: sha256=<hex HMAC-SHA256 of the raw body>``, keyed with the secret's text."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.strip())


def verify_standard_webhook(secret: str, body: bytes, msg_id: str, timestamp: str,
                            signature: str, *, now: float | None = None,
                            tolerance_s: float = TOLERANCE_S) -> bool:
    """``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with
    the base64-decoded part of the secret after ``whsec_`` (Standard Webhooks)."""
    if not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance_s:
        return False  # too old, or from the future: refuse a replay
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    expected = "v1," + base64.b64encode(mac.digest()).decode()
    # The header may carry several space-separated signatures (during a key rotation).
    return any(hmac.compare_digest(expected, candidate) for candidate in signature.split())


def is_authentic(secret: str, headers: dict[str, str], body: bytes, *,
                 now: float | None = None) -> bool:
    """Both signatures of one delivery; ``headers`` with lower-case names."""
    return (verify_x_signature(secret, body, headers.get("x-signature", ""))
            and verify_standard_webhook(secret, body, headers.get("webhook-id", ""),
                                        headers.get("webhook-timestamp", ""),
                                        headers.get("webhook-signature", ""), now=now))


class Inbox:
    """Webhooks accepted, kept in SQLite: the ``webhook-id`` is the key, so a redelivery is
    recorded once, and an event is on disk before jobd gets its 204, so a crash of the
    receiver loses nothing (it is handled after the restart)."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("CREATE TABLE IF NOT EXISTS inbox (id TEXT PRIMARY KEY, "
                           "body BLOB NOT NULL, received_at REAL NOT NULL, handled_at REAL)")
        self._lock = threading.Lock()
        self.arrived = threading.Event()

    def add(self, msg_id: str, body: bytes) -> bool:
        """Store one event; False when this ``webhook-id`` was stored before."""
        with self._lock:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO inbox (id, body, received_at) VALUES (?, ?, ?)",
                (msg_id, body, time.time()))
        self.arrived.set()
        return cursor.rowcount == 1

    def next_unhandled(self) -> tuple[str, bytes] | None:
        with self._lock:
            row = self._conn.execute("SELECT id, body FROM inbox WHERE handled_at IS NULL "
                                     "ORDER BY received_at LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def mark_handled(self, msg_id: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE inbox SET handled_at = ? WHERE id = ?",
                               (time.time(), msg_id))


def handle(event: dict[str, object]) -> None:
    """Your work: runs on a background thread, after jobd got its answer."""
    print(f"job {event['jobId']} {event['status']}: {event.get('result', event.get('error'))}",
          flush=True)


def work_forever(inbox: Inbox) -> None:
    """Handle stored events one by one, oldest first; leftovers of a crash come first."""
    while True:
        item = inbox.next_unhandled()
        if item is None:
            inbox.arrived.wait(1.0)
            inbox.arrived.clear()
            continue
        msg_id, body = item
        handle(json.loads(body))
        inbox.mark_handled(msg_id)


def make_handler(secret: str, inbox: Inbox) -> type[BaseHTTPRequestHandler]:
    class WebhookHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._answer(413)
                return
            body = self.rfile.read(length)  # the raw bytes: verify before parsing
            headers = {name.lower(): value for name, value in self.headers.items()}
            if not is_authentic(secret, headers, body):
                self._answer(401)
                return
            inbox.add(headers["webhook-id"], body)  # a redelivery changes nothing
            self._answer(204)  # and is acknowledged too, so jobd stops sending it

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return WebhookHandler


def main() -> None:
    secret = os.environ["JOBD_WEBHOOK_SECRET"]
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    inbox = Inbox(os.environ.get("INBOX_DB", "webhook-inbox.db"))
    threading.Thread(target=work_forever, args=(inbox,), daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(secret, inbox))
    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
