"""A fast webhook receiver for benchmarks (its own process, uvloop).

POST /hook records the arrival time of each jobId, POST /start/{key} (what an ``http``
job calls) that of "start:{key}"; GET /arrivals returns them.
Run: python bench/receiver.py PORT
"""

from __future__ import annotations

import sys
import time

import orjson
import uvloop
from aiohttp import web

arrivals: dict[str, float] = {}


async def hook(request: web.Request) -> web.Response:
    now = time.time()
    job_id = orjson.loads(await request.read())["jobId"]
    arrivals.setdefault(job_id, now)
    return web.Response(status=204)


async def start(request: web.Request) -> web.Response:
    arrivals.setdefault("start:" + request.match_info["key"], time.time())
    await request.read()
    return web.Response(status=204)


async def get_arrivals(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(arrivals), content_type="application/json")


def main() -> None:
    app = web.Application()
    app.add_routes([web.post("/hook", hook), web.post("/start/{key}", start),
                    web.get("/arrivals", get_arrivals)])
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
