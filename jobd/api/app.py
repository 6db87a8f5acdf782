"""The aiohttp application factory."""

from __future__ import annotations

import orjson
from aiohttp import web

from jobd.api import routes
from jobd.api.context import API, ApiContext
from jobd.api.openapi import build_openapi
from jobd.api.problems import problem_middleware, problem_response


async def healthz(request: web.Request) -> web.Response:
    problem = unhealthy(request.app[API])
    if problem is not None:
        return problem_response(503, *problem)
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def unhealthy(ctx: ApiContext) -> tuple[str, str, str] | None:
    """Why the daemon should get no traffic: ``(code, title, detail)``, or None."""
    if (problem := ctx.store.health()) is not None:
        return (problem.code, problem.title, problem.detail)
    if ctx.node_health is not None and (problem := ctx.node_health()) is not None:
        return (problem.code, problem.title, problem.detail)
    if ctx.supervisor is not None and ctx.supervisor.gave_up is not None:
        return ("task_failed", "A task of the daemon failed",
                f"{ctx.supervisor.gave_up}; jobd is stopping")
    if not ctx.ready:
        return ("not_ready", "Not ready", "the daemon is starting or stopping")
    return None


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
