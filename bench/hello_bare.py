"""What HTTP itself costs without aiohttp: hello.py's work (parse the body, answer 201
JSON) on a bare asyncio protocol with httptools, the parser jobd's fast lane uses.

Not the ceiling the issue compares with (that is hello.py); it shows how much of
hello.py's time is aiohttp's own. Run: python bench/hello_bare.py PORT, then load it
with wrk and bench/post_jobs.lua like hello.py.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import orjson
import uvloop


class Hello(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        raw, self.body = b"".join(self.body), []
        data = orjson.loads(raw) if raw else {}
        body = orjson.dumps({"jobId": "job_hello", "status": "queued",
                             "tenant": data.get("tenantId")})
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        if not self.parser.should_keep_alive():
            self.transport.close()


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Hello, "127.0.0.1", port,
                                                            backlog=2048)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
