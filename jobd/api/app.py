"""The aiohttp application factory."""

from __future__ import annotations

import orjson
from aiohttp import web

from jobd.api import routes
from jobd.api.context import API, ApiContext
from jobd.api.openapi import build_openapi
from jobd.api.problems import problem_middleware, problem_response


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[API]
    if not ctx.ready:
        return problem_response(503, "not_ready", "Not ready", "the daemon is starting")
    if ctx.store.sync_failed:
        return problem_response(503, "storage_failed", "Storage failed",
                                "the database could not be synced to disk; restart jobd")
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


OPENAPI: web.AppKey[bytes] = web.AppKey("jobd_openapi", bytes)


def create_app(ctx: ApiContext, *, extra_routes: list[web.RouteDef] | None = None) -> web.Application:
    app = web.Application(middlewares=[problem_middleware],
                          client_max_size=ctx.config.server.max_body_bytes)
    app[API] = ctx
    app[OPENAPI] = orjson.dumps(build_openapi())
    app.add_routes([
        web.post("/jobs", routes.create_job),
        web.get("/jobs/{job_id}", routes.get_job, allow_head=False),
        web.delete("/jobs/{job_id}", routes.cancel_job),
        web.get("/healthz", healthz, allow_head=False),
        web.get("/openapi.json", openapi, allow_head=False),
        *(extra_routes or []),
    ])
    return app
