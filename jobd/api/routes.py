"""Job endpoints: parse, call one store method, serialise."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from jobd.api.auth import Caller, authenticate, authorized, bearer_key
from jobd.api.context import API, ApiContext
from jobd.api.problems import RATE_HEADERS
from jobd.api.schemas import JobCreateRequest
from jobd.api.views import created_body, job_view
from jobd.errors import (
    MalformedRequest,
    MissingIdempotencyKey,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    Unauthorized,
    ValidationFailed,
)
from jobd.handlers.base import AnyPayload
from jobd.models import Delivery, IdempotentResult, Job, NewJob
from jobd.netguard import BlockedAddress, check_url
from jobd.ratelimit import Decision

JSON = "application/json"
# Arrays and objects nested deeper than this in a body are refused: orjson reads up to
# 1,024 levels but writes 254, and pydantic's JSON parser (which reads a payload again
# when its job runs) stops at 200.
MAX_NESTING = 100


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Submission:
    """A ``POST /jobs`` that passed every check and waits for the store."""

    job: NewJob
    body_hash: bytes
    now: float
    api_key_hash: str
    capped: bool  # the tenant has a max_concurrency


def take_token(ctx: ApiContext, caller: Caller,
               now: float) -> Decision | asyncio.Future[Decision]:
    """The caller's request against its tenant's rate limit (see :func:`admit`)."""
    tenant = caller.tenant
    return ctx.rate_limit(tenant.id, tenant.rate, tenant.burst, now)


def admit(ctx: ApiContext, caller: Caller, decision: Decision, *, idempotency_key: str | None,
          content_length: int | None, rate_headers: dict[str, str]) -> str:
    """The checks before the body is read, once the API key's caller is known (see
    :func:`~jobd.api.auth.authorized`) and its rate limit decided (:func:`take_token`):
    the decision (its headers go into ``rate_headers`` at once, for an error answer to
    carry them too), the Idempotency-Key and the declared size. Returns the key."""
    rate_headers.update(decision.headers())
    if not decision.allowed:
        tenant = caller.tenant
        ctx.on_rate_limited(tenant.id)
        raise RateLimited(f"rate limit of {tenant.rate:g}/s (burst {tenant.burst}) exceeded",
                          retry_after_s=decision.retry_after_s)
    key = _idempotency_key(idempotency_key)
    max_bytes = ctx.config.server.max_body_bytes
    if content_length is not None and content_length > max_bytes:
        raise PayloadTooLarge(f"the body is over {max_bytes} bytes")
    return key


def prepare(ctx: ApiContext, caller: Caller, now: float, key: str, raw: bytes) -> Submission:
    """The body's checks; what the store is then given."""
    data = _json_object(raw)
    claimed_tenant = data.get("tenantId")
    if isinstance(claimed_tenant, str) and claimed_tenant != caller.tenant.id:
        raise Unauthorized("tenantId does not match the API key's tenant")
    if raw.count(b"{") + raw.count(b"[") > MAX_NESTING:  # (else it cannot nest that deep)
        _refuse_deep_nesting(data)
    job = _parse_new_job(ctx, data, key, now)
    body_hash = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).digest()
    return Submission(job, body_hash, now, caller.key_hash,
                      caller.tenant.max_concurrency is not None)


def insert(ctx: ApiContext, submission: Submission) -> asyncio.Future[IdempotentResult]:
    """Hand the job to the store; the future is done after its COMMIT. If a worker
    can take it at once, it is created running and starts after that COMMIT."""
    starter, job = ctx.starter, submission.job
    lease = None if starter is None else starter.reserve(job, now=submission.now,
                                                         capped=submission.capped)
    future = ctx.store.insert_job(
        job, body_hash=submission.body_hash, now=submission.now,
        idempotency_ttl_s=ctx.config.idempotency.ttl_hours * 3600,
        api_key_hash=submission.api_key_hash, lease=lease)
    if starter is not None and lease is not None:
        starter.follow(job, submission.now, future)
    return future


def created(ctx: ApiContext, submission: Submission, result: IdempotentResult,
            rate_headers: dict[str, str]) -> Answer:
    """The 201 for a committed (or replayed) job."""
    if not result.replayed:
        ctx.on_job_created(submission.job, result.started)
    headers = dict(rate_headers)
    headers["Content-Type"] = JSON
    headers["Location"] = f"/jobs/{result.job_id}"
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Answer(201, headers, created_body(result.job_id, result.created_at))


async def submit_job(ctx: ApiContext, *, authorization: str, idempotency_key: str | None,
                     content_length: int | None, read: Callable[[], Awaitable[bytes]],
                     rate_headers: dict[str, str]) -> Answer:
    """``POST /jobs`` apart from HTTP itself: the caller (cached, else looked up),
    :func:`take_token`, :func:`admit`, :func:`prepare`, :func:`insert`, :func:`created` in
    turn (the fast lane calls them without a task). Raises a
    :class:`~jobd.errors.JobdError` for a refusal."""
    api_key = bearer_key(authorization)
    caller = authorized(ctx.tenants.cached(api_key) or await ctx.tenants.lookup(api_key))
    now = ctx.clock.now()
    decision = take_token(ctx, caller, now)
    if not isinstance(decision, Decision):
        decision = await decision
    key = admit(ctx, caller, decision, idempotency_key=idempotency_key,
                content_length=content_length, rate_headers=rate_headers)
    submission = prepare(ctx, caller, now, key, await read())
    result = await insert(ctx, submission)
    return created(ctx, submission, result, rate_headers)


async def create_job(request: web.Request) -> web.Response:
    ctx = request.app[API]
    rate_headers: dict[str, str] = {}
    request[RATE_HEADERS] = rate_headers  # errors get them from the middleware
    answer = await submit_job(
        ctx, authorization=request.headers.get("Authorization", ""),
        idempotency_key=request.headers.get("Idempotency-Key"),
        content_length=_content_length(request),
        read=functools.partial(_read_body, request, ctx.config.server.max_body_bytes,
                               ctx.config.server.read_timeout),
        rate_headers=rate_headers)
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


def job_state(job_id: str, state: tuple[Job, list[Delivery]] | None) -> Answer:
    """``GET /jobs/{jobId}``'s answer from the tenant's job and its deliveries (the fast
    lane's too). Raises NotFound when the tenant has no such job."""
    if state is None:
        raise NotFound(f"no job {job_id!r} for this tenant")
    job, deliveries = state
    return Answer(200, {"Content-Type": JSON}, orjson.dumps(job_view(job, deliveries)))


async def get_job(request: web.Request) -> web.Response:
    ctx = request.app[API]
    caller = await authenticate(request, ctx.tenants)
    job_id = request.match_info["job_id"]
    answer = job_state(job_id, await ctx.store.job_state(job_id, caller.tenant.id))
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


async def cancel_job(request: web.Request) -> web.Response:
    ctx = request.app[API]
    tenant = (await authenticate(request, ctx.tenants)).tenant
    job = await _tenant_job(ctx, request.match_info["job_id"], tenant.id)
    job = await ctx.store.cancel_job(job.id, tenant_id=tenant.id, now=ctx.clock.now())
    if job.cancel_requested:
        ctx.on_cancel_requested(job.id)
    elif job.webhook_url is not None:  # cancelled now: its webhook was queued with it
        ctx.on_webhook_queued()
    return _json(200, orjson.dumps(job_view(job)))


async def _tenant_job(ctx: ApiContext, job_id: str, tenant_id: str) -> Job:
    job = await ctx.store.find_job(job_id, tenant_id)
    if job is None:
        raise NotFound(f"no job {job_id!r} for this tenant")
    return job


def _idempotency_key(key: str | None) -> str:
    if key is None or key == "":
        raise MissingIdempotencyKey("send an Idempotency-Key header (1-255 printable ASCII)")
    if len(key) > 255 or not (key.isascii() and key.isprintable()):
        raise MissingIdempotencyKey("Idempotency-Key must be 1-255 printable ASCII characters")
    return key


def _content_length(request: web.Request) -> int | None:
    """The declared body size; llhttp took it as digits, but perhaps with more leading
    zeros than ``int()`` reads (aiohttp's ``content_length`` raised on those: a 500)."""
    value = request.headers.get("Content-Length")
    return None if value is None else int(value.lstrip("0") or "0")


async def _read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, which must arrive whole within ``timeout_s`` (the fast lane's sweep
    holds its own requests to the same time)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the body is over {max_bytes} bytes") from None
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    except (web.RequestPayloadError, ConnectionError):
        raise MalformedRequest("the body's framing is malformed, or it was cut short") from None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(f"the body is not valid JSON: {exc}",
                               errors=[{"field": "body", "message": "malformed JSON"}]) from None
    if not isinstance(data, dict):
        raise ValidationFailed("the body must be a JSON object",
                               errors=[{"field": "body", "message": "must be a JSON object"}])
    return data


def _refuse_deep_nesting(data: dict[str, Any]) -> None:
    """A 400 naming the first field whose value nests arrays and objects deeper than
    :data:`MAX_NESTING` levels, counting the body itself as one."""
    for name, value in data.items():
        if _nested_deeper(value, MAX_NESTING - 1):
            raise ValidationFailed(f"{name}: nested more than {MAX_NESTING} levels deep",
                                   errors=[{"field": name, "message":
                                            f"nested more than {MAX_NESTING} levels deep"}])


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests arrays and objects more than ``limit`` deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if type(item) is dict:
            item = item.values()
        elif type(item) is not list:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in item if type(child) in (dict, list))
    return False


def _parse_new_job(ctx: ApiContext, data: dict[str, Any], key: str, now: float) -> NewJob:
    try:
        req = JobCreateRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_failed(exc) from None
    job_type = ctx.registry.get(req.type)
    if job_type is None:
        raise ValidationFailed(f"unknown job type {req.type!r}", errors=[{
            "field": "type", "message": f"must be one of: {', '.join(ctx.registry.names())}"}])
    # AnyPayload takes every JSON object, which req.payload already is: only a type
    # with its own model (or a submit check, which is given the model) is validated.
    payload = None
    if job_type.payload_model is not AnyPayload or job_type.submit_check is not None:
        try:
            payload = job_type.payload_model.model_validate(req.payload)
        except ValidationError as exc:
            raise _validation_failed(exc, prefix="payload") from None
    if req.webhookUrl is not None:
        allow_private = ctx.config.webhooks.allow_private_networks
        _guard("webhookUrl", check_url, req.webhookUrl, url=req.webhookUrl,
               allow_private=allow_private)
    if job_type.submit_check is not None:
        _guard("payload", job_type.submit_check, payload, ctx.config,
               url=getattr(payload, "url", None))
    jobs_cfg = ctx.config.jobs
    return NewJob(
        tenant_id=req.tenantId, type=req.type,
        payload=orjson.dumps(req.payload).decode(), priority=req.priority,
        max_attempts=req.maxAttempts or jobs_cfg.max_attempts,
        timeout_seconds=req.timeoutSeconds,
        run_at=req.runAt.timestamp() if req.runAt else now,
        webhook_url=req.webhookUrl, idempotency_key=key,
    )


PRIVATE_REMEDY = ("; private, loopback and link-local addresses are refused unless "
                  "webhooks.allow_private_networks = true (JOBD_WEBHOOKS_ALLOW_PRIVATE_NETWORKS"
                  "=true), e.g. for local testing")


def _guard(field: str, check: Callable[..., object], *args: Any, url: object = None,
           **kwargs: Any) -> None:
    """Run a submit-time check; a ValueError (e.g. a refused address) becomes a 400.
    A refusal of ``url`` for its address only also names the setting that allows it."""
    try:
        check(*args, **kwargs)
    except ValueError as exc:
        message = f"{exc}{_remedy(exc, url)}"
        raise ValidationFailed(f"{field}: {message}",
                               errors=[{"field": field, "message": message}]) from None


def _remedy(exc: ValueError, url: object) -> str:
    if not isinstance(exc, BlockedAddress) or not isinstance(url, str):
        return ""
    try:
        check_url(url, allow_private=True)  # refused for its scheme or form, not its address?
    except BlockedAddress:
        return ""
    return PRIVATE_REMEDY


def _validation_failed(exc: ValidationError, prefix: str | None = None) -> ValidationFailed:
    errors = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        errors.append({"field": loc, "message": message})
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ValidationFailed(f"invalid request: {summary}", errors=errors)
