"""HTTP peers on 127.0.0.1 for the outbound clients (the webhook clients, ``http`` jobs).

* :class:`Server` (:func:`scripted_server`): reads requests and answers each from a script.
* :data:`BOUNDARIES`: answers at each bound of :mod:`jobd.outbound` and one past it.
* :class:`Hostile` (:func:`hostile_server`): the request's path picks one of
  :data:`PLAYS`, answers that never end. In the test's own loop, or in a process of its
  own so that its work is not charged to the process under test: ``python -m tests.peers``
  prints its port and serves until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from jobd.outbound import (
    HEAD_TOO_LARGE,
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    MAX_INTERIM_ANSWERS,
    TOO_MANY_INTERIM,
    TOO_MANY_LINES,
)

Play = Callable[[asyncio.StreamWriter], Awaitable[None]]
Answer = Callable[[int], bytes | None]  # n-th request on a connection -> answer (None: hang up)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHUNK = 16 * 1024


# A scripted receiver --------------------------------------------------------------------

def ok(body: bytes = b"ok", extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: its head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


@dataclass
class Server:
    """Reads requests (head + Content-Length body) and answers each from ``answer``."""

    answer: Answer = lambda n: ok()
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    close_after: bool = False  # close the connection after each answer
    port: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        n = 0
        try:
            while True:
                self.requests.append(await read_request(reader))
                answer = self.answer(n)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                n += 1
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def url(self, path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def drop_idle_connections(self) -> None:
        for writer in self.writers:
            writer.close()


@contextlib.asynccontextmanager
async def scripted_server() -> AsyncIterator[Server]:
    server = Server()
    async with _listening(server.handle, server.writers) as server.port:
        yield server


@contextlib.asynccontextmanager
async def _listening(handle: Handler,
                     writers: list[asyncio.StreamWriter]) -> AsyncIterator[int]:
    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        for writer in writers:
            writer.close()


async def _endless(writer: asyncio.StreamWriter, first: bytes, then: bytes) -> None:
    writer.write(first)
    while True:
        writer.write(then)
        await writer.drain()


def _lines(prefix: bytes) -> bytes:
    return b"".join(prefix + b"-%d: y\r\n" % i for i in range(CHUNK // 16))


async def _drip(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    while True:
        writer.write(b"X")
        await writer.drain()
        await asyncio.sleep(0.01)


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

PLAYS: dict[str, Play] = {
    # a header value that never ends
    "/head-bytes": lambda w: _endless(w, b"HTTP/1.1 200 OK\r\nX: ", b"a" * CHUNK),
    # header lines that never end
    "/header-lines": lambda w: _endless(w, b"HTTP/1.1 200 OK\r\n", _lines(b"X")),
    # interim answers that never end
    "/continue": lambda w: _endless(w, b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 512),
    # a head that comes a byte at a time
    "/drip": _drip,
    # a chunk extension that never ends: no body byte ever comes
    "/chunk-ext": lambda w: _endless(w, CHUNKED + b"5;", b"a" * CHUNK),
    # a trailer value that never ends
    "/trailer": lambda w: _endless(w, CHUNKED + b"2\r\nok\r\n0\r\nT: ", b"a" * CHUNK),
    # a body that never ends
    "/big-body": lambda w: _endless(
        w, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", b"a" * CHUNK),
}
REFUSED_HEADS = {"/head-bytes": HEAD_TOO_LARGE, "/header-lines": TOO_MANY_LINES,
                 "/continue": TOO_MANY_INTERIM}


# Answers at each bound and one past it -----------------------------------------------

def head_of(size: int = 0, *, lines: int = 1, status: bytes = b"200 OK") -> bytes:
    """A head of exactly ``size`` bytes (if given) with ``lines`` header lines, the first
    of which is Content-Length: 2."""
    head = b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n"
    head += b"".join(b"X-%03d: y\r\n" % i for i in range(lines - 1))
    if size:
        pad = size - len(head) - len(b"X-Pad: \r\n\r\n")
        assert pad >= 0
        head += b"X-Pad: " + b"p" * pad + b"\r\n"
    return head + b"\r\n"


INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n"
LINES = b"".join(b"X-%03d: y\r\n" % i for i in range(MAX_HEADER_LINES))
BIG_INTERIM = b"HTTP/1.1 100 Continue\r\n" + LINES + b"\r\n"
# (answer, the reason it is refused for; None: accepted with (200, b"ok"))
BOUNDARIES = [
    (head_of(MAX_HEAD_BYTES) + b"ok", None),
    (head_of(MAX_HEAD_BYTES + 1) + b"ok", HEAD_TOO_LARGE),
    (INTERIM + head_of(MAX_HEAD_BYTES - len(INTERIM)) + b"ok", None),
    (INTERIM + head_of(MAX_HEAD_BYTES - len(INTERIM) + 1) + b"ok", HEAD_TOO_LARGE),
    (head_of(lines=MAX_HEADER_LINES) + b"ok", None),
    (head_of(lines=MAX_HEADER_LINES + 1) + b"ok", TOO_MANY_LINES),
    (INTERIM * MAX_INTERIM_ANSWERS + head_of() + b"ok", None),
    (INTERIM * (MAX_INTERIM_ANSWERS + 1) + head_of() + b"ok", TOO_MANY_INTERIM),
    (BIG_INTERIM + head_of(lines=MAX_HEADER_LINES) + b"ok", None),  # lines count per head
    (BIG_INTERIM[:-2] + b"X-Z: z\r\n\r\n" + head_of() + b"ok", TOO_MANY_LINES),
]


# A hostile peer -------------------------------------------------------------------------

@dataclass
class Hostile:
    port: int = 0
    requests: list[str] = field(default_factory=list)  # paths, as they came
    hung_up: int = 0  # connections the client closed while being answered
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            path = (await read_request(reader)).split(b" ", 2)[1].decode()
            self.requests.append(path)
            await PLAYS[path](writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up += 1
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def hostile_server() -> AsyncIterator[Hostile]:
    hostile = Hostile()
    async with _listening(hostile.handle, hostile.writers) as hostile.port:
        yield hostile


async def _main() -> None:
    async with hostile_server() as hostile:
        print(hostile.port, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
    sys.exit(0)
