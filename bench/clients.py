"""CPU per webhook-like POST: aiohttp's client against jobd's Poster, to receiver.py.

Run: python bench/clients.py [N]   (N POSTs each, 64 in flight; prints us of this
process's CPU per request and the rate). This is the measurement
behind the dispatcher's own client (``webhooks.fast_client``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop
from run import background

from jobd.runtime.poster import Poster

BODY = b'{"jobId":"job_x","status":"succeeded","payload":{"a":1},"result":null}' + b" " * 200
HEADERS = {"Content-Type": "application/json", "webhook-id": "msg_x"}


async def measure(name: str, post: Callable[[], Awaitable[int]], n: int) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            assert await post() == 204
    await asyncio.gather(*[worker(10) for _ in range(64)])  # warm up: open the connections
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*[worker(n // 64) for _ in range(64)])
    done = n // 64 * 64
    print(f"{name:<16} {(time.process_time() - cpu) / done * 1e6:7.1f} us CPU/request"
          f" {done / (time.perf_counter() - wall):9,.0f} requests/s")


async def main(n: int) -> None:
    proc, port = background("receiver.py")
    url = f"http://127.0.0.1:{port}/hook"
    try:
        async with aiohttp.ClientSession() as session:
            async def with_aiohttp() -> int:
                async with session.post(url, data=BODY, headers=HEADERS) as resp:
                    await resp.read()
                    return resp.status
            await measure("aiohttp client", with_aiohttp, n)
        poster = Poster(allow_private=True)

        async def with_poster() -> int:
            status, _ = await poster.post(url, BODY, HEADERS.items(), timeout_s=10, read_limit=1024)
            return status
        await measure("jobd Poster", with_poster, n)
        await poster.close()
    finally:
        proc.terminate()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
