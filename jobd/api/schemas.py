"""Request and response models of the HTTP API; the OpenAPI document is built from them."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
)

# runAt must print as RFC 3339 with a four-digit year, to the millisecond, in UTC
_RUN_AT_MS = (-62_167_219_200_000, 253_402_300_799_999)  # 0000-01-01 .. 9999-12-31T23:59:59.999

JobStatusName = Literal["queued", "running", "retry", "succeeded", "fatal", "cancelled"]
# An Idempotency-Key as it arrives: 1-255 printable ASCII characters (HTTP takes the
# spaces around a header's value off, so it neither starts nor ends with one)
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"


class JobCreateRequest(BaseModel):
    """Body of ``POST /jobs``. Unknown fields are rejected so that a typo is not ignored."""

    model_config = ConfigDict(extra="forbid")

    tenantId: StrictStr = Field(min_length=1, max_length=64,
                                description="The tenant of the API key (another one is a 401).")
    type: StrictStr = Field(min_length=1, max_length=64,
                            description="A registered job type: noop, http, email, or one of "
                                        "[handlers] (another one is a 400).")
    payload: dict[str, Any] = Field(description="Handed to the job type, which validates it.")
    webhookUrl: StrictStr | None = Field(
        None, max_length=2048, examples=["https://client.example/webhooks/jobd"],
        description="An absolute http or https URL, POSTed the signed result when the job "
                    "ends; loopback and private addresses are refused unless "
                    "webhooks.allow_private_networks.")
    runAt: AwareDatetime | None = Field(None, description="Run no earlier than this (RFC 3339).")
    maxAttempts: StrictInt | None = Field(None, ge=1, le=100)
    priority: StrictInt = Field(0, ge=-1_000_000, le=1_000_000,
                                description="Higher runs first.")
    timeoutSeconds: float | None = Field(None, gt=0, le=86_400, strict=True,
                                         description="Per-attempt timeout.")

    @field_validator("runAt", mode="before")
    @classmethod
    def _rfc3339_string(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be an RFC 3339 time string, e.g. 2025-08-20T10:00:00Z")
        if isinstance(value, str) and (len(value) < 20 or value[10] not in "Tt "):
            raise ValueError("must be an RFC 3339 time with a timezone, e.g. 2025-08-20T10:00:00Z")
        return value

    @field_validator("runAt")
    @classmethod
    def _four_digit_year(cls, value: datetime | None) -> datetime | None:
        if value is not None and not _RUN_AT_MS[0] <= round(value.timestamp() * 1000) <= _RUN_AT_MS[1]:
            raise ValueError("must be between 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z")
        return value

    @field_validator("webhookUrl")
    @classmethod
    def _absolute_http_url(cls, value: str | None) -> str | None:
        if value is not None and not _is_absolute_http_url(value):
            raise ValueError("must be an absolute http or https URL")
        return value


@functools.lru_cache(maxsize=4096)  # a tenant sends the same webhook URL again and again
def _is_absolute_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class JobCreatedResponse(BaseModel):
    jobId: str
    status: Literal["queued"] = Field(description="Always `queued`: it describes the creation "
                                      "(a GET right after may already say `running`).")
    createdAt: datetime


class WebhookSummary(BaseModel):
    deliveryId: str
    status: Literal["pending", "sending", "succeeded", "dead"]
    attempts: int
    lastError: str | None
    lastStatusCode: int | None
    deliveredAt: datetime | None


class JobResponse(BaseModel):
    jobId: str
    status: JobStatusName
    attempts: int
    nextRunAt: datetime | None
    createdAt: datetime
    updatedAt: datetime
    type: str
    maxAttempts: int
    priority: int
    runAt: datetime
    startedAt: datetime | None
    completedAt: datetime | None
    lastError: str | None
    result: Any = None
    cancelRequested: bool
    webhookUrl: str | None
    webhook: WebhookSummary | None = Field(
        None, description="The latest webhook delivery for this job, once it finished.")


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int = Field(ge=400, le=599, description="The response's status code.")
    detail: str
    code: str
    errors: list[FieldError] | None = None


class Health(BaseModel):
    status: Literal["ok"]
