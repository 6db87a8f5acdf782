"""Every error the API answers is rendered here, as application/problem+json."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from jobd.errors import JobdError, RateLimited, TooManyConnections, Unauthorized

log = logging.getLogger("jobd.api")

PROBLEM_TYPE_BASE = "https://jobd.dev/problems/"
# RateLimit-* headers of this request, for an error response raised after the bucket was
# taken (a successful POST /jobs puts them in its own response)
RATE_HEADERS: web.RequestKey[dict[str, str]] = web.RequestKey("rate_headers", dict)

PROBLEM_JSON = "application/problem+json"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
INTERNAL_ERROR = JobdError("the server failed to handle this request; see its log")


def problem_body(status: int, code: str, title: str, detail: str,
                 errors: list[dict[str, object]] | None = None) -> bytes:
    body: dict[str, object] = {"type": PROBLEM_TYPE_BASE + code, "title": title,
                               "status": status, "detail": detail, "code": code}
    if errors is not None:
        body["errors"] = errors
    return orjson.dumps(body)


def problem_response(status: int, code: str, title: str, detail: str,
                     errors: list[dict[str, object]] | None = None,
                     headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=problem_body(status, code, title, detail, errors),
                        headers=headers, content_type=PROBLEM_JSON)


def error_headers(exc: JobdError) -> dict[str, str]:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, TooManyConnections):
        return {"Retry-After": "1"}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="jobd"'}
    return {}


def error_body(exc: JobdError) -> bytes:
    return problem_body(exc.status, exc.code, exc.title, exc.detail, exc.errors)


def from_error(exc: JobdError) -> web.Response:
    return web.Response(status=exc.status, body=error_body(exc),
                        headers=error_headers(exc) or None, content_type=PROBLEM_JSON)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except JobdError as exc:
        response = from_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        response = problem_response(exc.status, code, exc.reason, exc.text or exc.reason,
                                    headers=kept or None)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = from_error(INTERNAL_ERROR)
    else:
        return response  # a handler's own answer carries its own headers
    rate_headers = request.get(RATE_HEADERS)
    if rate_headers:
        response.headers.update(rate_headers)
    return response
