"""The OpenAPI 3.1 document, generated from the models that validate requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from jobd import __version__
from jobd.api.schemas import (
    FieldError,
    Health,
    JobCreatedResponse,
    JobCreateRequest,
    JobResponse,
    Problem,
)

REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": _ref(Problem)}}}


RATE_HEADERS = {name: {"schema": {"type": "integer"}} for name in
                ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")}


def build_openapi() -> dict[str, Any]:
    models: list[type[BaseModel]] = [JobCreateRequest, JobCreatedResponse, JobResponse, Problem,
                                     FieldError, Health]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    job_id_param = {"name": "jobId", "in": "path", "required": True, "schema": {"type": "string"}}
    created = _json_body(JobCreatedResponse, "Created, after the job was committed.")
    created["headers"] = RATE_HEADERS
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobd", "version": __version__,
                 "description": "Background jobs with retries and signed webhooks."},
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/jobs": {"post": {
                "operationId": "createJob", "summary": "Create a job to run in the background",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": True,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(JobCreateRequest)}}},
                "responses": {
                    "201": created,
                    "400": _problem("Invalid body, field or Idempotency-Key."),
                    "401": _problem("Missing or unknown API key, or another tenant's id."),
                    "409": _problem("Idempotency-Key reused with a different body."),
                    "413": _problem("Body over server.max_body_bytes."),
                    "429": _problem("Rate limit exceeded; see Retry-After."),
                },
            }},
            "/jobs/{jobId}": {
                "get": {"operationId": "getJob", "summary": "A job's state",
                        "parameters": [job_id_param],
                        "responses": {"200": _json_body(JobResponse, "The job."),
                                      "401": _problem("Unauthorized."),
                                      "404": _problem("No such job for this tenant.")}},
                "delete": {"operationId": "cancelJob",
                           "summary": "Cancel a job (a running one cooperatively)",
                           "parameters": [job_id_param],
                           "responses": {"200": _json_body(JobResponse, "The job after the request."),
                                         "401": _problem("Unauthorized."),
                                         "404": _problem("No such job for this tenant."),
                                         "409": _problem("The job already finished.")}},
            },
            "/healthz": {"get": {"operationId": "health", "security": [],
                                 "responses": {"200": _json_body(Health, "Ready.")}}},
            "/metrics": {"get": {"operationId": "metrics", "security": [],
                                 "responses": {"200": {"description": "Prometheus text format.",
                                                       "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "security": [],
                                      "responses": {"200": {"description": "This document."}}}},
        },
    }
