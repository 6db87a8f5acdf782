"""A scriptable HTTP server on 127.0.0.1 for ``http`` job targets, in a thread."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Target:
    """Each path answers from its script (a list of statuses, the last one repeats);
    ``hang`` makes a path wait until released."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[int]] = {}
        self.hits: dict[str, list[float]] = {}
        self.hanging: set[str] = set()
        self.release = threading.Event()
        self.lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status = target._next(self.path)
                if self.path in target.hanging:
                    target.release.wait(60)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, statuses: list[int]) -> str:
        with self.lock:
            self.scripts[path] = list(statuses)
        return self.url(path)

    def count(self, path: str) -> int:
        with self.lock:
            return len(self.hits.get(path, []))

    def _next(self, path: str) -> int:
        with self.lock:
            self.hits.setdefault(path, []).append(time.monotonic())
            script = self.scripts.get(path, [200])
            return script.pop(0) if len(script) > 1 else script[0]

    def __enter__(self) -> Target:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
