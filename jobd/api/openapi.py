"""The OpenAPI 3.1 document, generated from the models that validate requests.

It describes what the API answers, not only what it accepts: every status code an
operation can answer, each with its body (``application/problem+json`` for every error)
and its headers (``Location``, ``Idempotent-Replayed``, ``RateLimit-*``, ``Retry-After``,
``WWW-Authenticate``), and links from a created job to reading and cancelling it.
``tests/api/test_fuzz_openapi.py`` holds the API to it with generated requests.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from jobd import __version__
from jobd.api.problems import PROBLEM_JSON
from jobd.api.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    FieldError,
    Health,
    JobCreatedResponse,
    JobCreateRequest,
    JobResponse,
    Problem,
)

REF = "#/components/schemas/{model}"
JSON = "application/json"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _header(description: str, schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


def _rate_headers(*, required: bool) -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    return {
        "RateLimit-Limit": _header("The tenant's burst: requests allowed at once.", count,
                                   required=required),
        "RateLimit-Remaining": _header("Requests left in the bucket.", count, required=required),
        "RateLimit-Reset": _header("Seconds until the bucket is full again.", count,
                                   required=required),
    }


RATE_HEADERS = _rate_headers(required=True)
WWW_AUTHENTICATE = {"WWW-Authenticate": _header("Always `Bearer realm=\"jobd\"`.",
                                                {"type": "string"})}


def _json_body(model: type[BaseModel], description: str,
               headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {JSON: {"schema": _ref(model)}}}
    if headers:
        response["headers"] = headers
    return response


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {PROBLEM_JSON: {"schema": _ref(Problem)}}}
    if headers:
        response["headers"] = headers
    return response


def _links(*operation_ids: str) -> dict[str, Any]:
    """Links from a response whose body has the job's ``jobId`` to these operations."""
    names = {"getJob": "GetJob", "cancelJob": "CancelJob"}
    return {names[op]: {"operationId": op, "parameters": {"jobId": "$response.body#/jobId"}}
            for op in operation_ids}


UNAUTHORIZED = _problem("`unauthorized`: the API key is missing, unknown or revoked, or its "
                        "tenant is disabled.", WWW_AUTHENTICATE)
NOT_FOUND = _problem("`not_found`: no job with this id for this tenant (another tenant's job "
                     "too).")
INTERNAL = _problem("`internal_error`: the request failed inside jobd; its log has the cause.")
STORE_UNAVAILABLE = _problem("`store_unavailable`: the database could not be written or "
                             "synced; nothing was changed.")


def _create_job() -> dict[str, Any]:
    created = _json_body(JobCreatedResponse, "Created, after the job was committed; or the "
                         "original answer replayed, with `Idempotent-Replayed: true`.", {
                             "Location": _header("The job's URL: `/jobs/{jobId}`.",
                                                 {"type": "string"}),
                             "Idempotent-Replayed": _header(
                                 "`true` when this answers a replay of the same key and body.",
                                 {"type": "string", "enum": ["true"]}, required=False),
                             **RATE_HEADERS})
    created["links"] = _links("getJob", "cancelJob")
    optional_rate = _rate_headers(required=False)
    return {
        "operationId": "createJob", "summary": "Create a job to run in the background",
        "description": "Checked in this order: API key (401), rate limit (429), "
                       "Idempotency-Key (400), body size (413), JSON (400), tenantId (401), "
                       "fields, payload and outbound URLs (400), then the key is claimed "
                       "(201, a replay, or 409) in the transaction that inserts the job.",
        "parameters": [{
            "name": "Idempotency-Key", "in": "header", "required": True,
            "description": "1-255 printable ASCII characters; the same key and body (as "
                           "parsed JSON) replay the original 201 for idempotency.ttl_hours.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                       "pattern": IDEMPOTENCY_KEY_PATTERN},
        }],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(JobCreateRequest)}}},
        "responses": {
            "201": created,
            "400": _problem("`validation_error` (malformed JSON, an unknown or invalid field, "
                            "an unknown type, a payload its type refuses, a refused outbound "
                            "URL; `errors` names each field), `missing_idempotency_key`, or "
                            "`malformed_request` (the body's framing is broken or cut short). "
                            "RateLimit-* are sent once the API key was accepted.", optional_rate),
            "401": _problem("`unauthorized`: the API key is missing, unknown or revoked, its "
                            "tenant is disabled, or `tenantId` is another tenant's.",
                            {**WWW_AUTHENTICATE, **optional_rate}),
            "409": _problem("`idempotency_conflict`: the Idempotency-Key was used with "
                            "another body.", RATE_HEADERS),
            "408": _problem("`request_timeout`: the body did not arrive within "
                            "server.read_timeout."),
            "413": _problem("`payload_too_large`: the body is over server.max_body_bytes.",
                            RATE_HEADERS),
            "429": _problem("`rate_limited`: the tenant's bucket is empty.", {
                "Retry-After": _header("Whole seconds until a request is allowed again.",
                                       {"type": "integer", "minimum": 1}),
                **RATE_HEADERS}),
            "500": INTERNAL,
            "503": STORE_UNAVAILABLE,
        },
    }


def _paths() -> dict[str, Any]:
    job_id = {"name": "jobId", "in": "path", "required": True,
              "description": "A job id as `POST /jobs` returned it (`job_` and 22 URL-safe "
                             "characters); any other text is a 404.",
              "schema": {"type": "string", "minLength": 1}}
    return {
        "/jobs": {"post": _create_job()},
        "/jobs/{jobId}": {
            "get": {"operationId": "getJob", "summary": "A job's state (not rate limited)",
                    "parameters": [job_id],
                    "responses": {"200": {**_json_body(JobResponse, "The job."),
                                          "links": _links("cancelJob")},
                                  "401": UNAUTHORIZED, "404": NOT_FOUND, "500": INTERNAL}},
            "delete": {"operationId": "cancelJob",
                       "summary": "Cancel a job (a running one cooperatively)",
                       "description": "A queued or retry job is cancelled at once; a running "
                                      "one gets `cancelRequested: true` and is cancelled by "
                                      "its handler.",
                       "parameters": [job_id],
                       "responses": {"200": {**_json_body(JobResponse, "The job after the "
                                                          "request."), "links": _links("getJob")},
                                     "401": UNAUTHORIZED, "404": NOT_FOUND,
                                     "409": _problem("`invalid_state`: the job already "
                                                     "finished."),
                                     "500": INTERNAL, "503": STORE_UNAVAILABLE}},
        },
        "/healthz": {"get": {
            "operationId": "health", "summary": "Readiness, for a load balancer", "security": [],
            "responses": {"200": _json_body(Health, "Ready."),
                          "503": _problem("`not_ready` while starting or stopping; "
                                          "`writes_failing` while database writes fail (reads "
                                          "still work); `storage_failed` after the database "
                                          "could not be synced to disk; `task_failed` when a "
                                          "task of the daemon gave up and it is stopping; on "
                                          "PostgreSQL `database_unreachable`, "
                                          "`database_read_only`, `database_overloaded`, "
                                          "`heartbeat_failing` or `node_taken_for_dead`.")}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics", "security": [],
            "responses": {"200": {"description": "Prometheus text format 0.0.4.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          "500": INTERNAL}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "This document.",
                                  "content": {JSON: {"schema": {"type": "object"}}}}}}},
    }


def build_openapi() -> dict[str, Any]:
    models: list[type[BaseModel]] = [JobCreateRequest, JobCreatedResponse, JobResponse, Problem,
                                     FieldError, Health]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobd", "version": __version__,
                 "description": "Background jobs with retries and signed webhooks. Every "
                                "error is application/problem+json (RFC 9457) with a stable "
                                "`code`. On any path, before a route is chosen: 400 "
                                "`malformed_request` (a request head that HTTP cannot parse "
                                "or that is over its limits) and 503 `too_many_connections` "
                                "(with Retry-After: server.max_connections are open and none "
                                "is idle). A request whose head does not arrive within "
                                "server.read_timeout has its connection closed."},
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A tenant's API key (`jobd_sk_...`), "
                                                          "from `jobd tenants create`."}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }
