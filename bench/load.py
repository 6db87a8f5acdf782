"""Submit exactly N noop jobs over HTTP with C concurrent keep-alive connections.

Run: python bench/load.py URL API_KEY TENANT COUNT [CONCURRENCY] [WEBHOOK_URL]
Prints one JSON line: {"ok": n, "failed": n, "seconds": s}.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import aiohttp
import orjson
import uvloop


async def main(url: str, api_key: str, tenant: str, count: int, concurrency: int,
               webhook_url: str | None) -> None:
    prefix = uuid.uuid4().hex
    body: dict[str, object] = {"tenantId": tenant, "type": "noop", "payload": {"n": 1}}
    if webhook_url:
        body["webhookUrl"] = webhook_url
    data = orjson.dumps(body)
    counter = iter(range(count))
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            nonlocal ok, failed
            for i in counter:
                headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                           "Idempotency-Key": f"{prefix}-{i}"}
                async with session.post(url, data=data, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 201:
                        ok += 1
                    else:
                        failed += 1
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    print(orjson.dumps({"ok": ok, "failed": failed, "seconds": elapsed}).decode())


if __name__ == "__main__":
    args = sys.argv[1:]
    uvloop.install()
    asyncio.run(main(args[0], args[1], args[2], int(args[3]),
                     int(args[4]) if len(args) > 4 else 64, args[5] if len(args) > 5 else None))
