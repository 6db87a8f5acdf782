"""The ceiling: a minimal aiohttp server that parses the same JSON body and answers 201.

Run: python bench/hello.py PORT
"""

from __future__ import annotations

import sys

import orjson
import uvloop
from aiohttp import web


async def create(request: web.Request) -> web.Response:
    data = orjson.loads(await request.read())
    body = orjson.dumps({"jobId": "job_hello", "status": "queued", "tenant": data.get("tenantId")})
    return web.Response(status=201, body=body, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.add_routes([web.post("/jobs", create)])
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
