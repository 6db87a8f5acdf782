"""One error tree with stable codes.

The API renders every :class:`JobdError` as RFC 9457 problem+json; the CLI
prints its message on stderr and exits with :attr:`JobdError.exit_code`.
"""

from __future__ import annotations

from typing import Any


class JobdError(Exception):
    status = 500
    code = "internal_error"
    title = "Internal error"
    exit_code = 1

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class ValidationFailed(JobdError):
    status = 400
    code = "validation_error"
    title = "Invalid request"
    exit_code = 2


class MissingIdempotencyKey(JobdError):
    status = 400
    code = "missing_idempotency_key"
    title = "Missing or invalid Idempotency-Key"
    exit_code = 2


class Unauthorized(JobdError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class NotFound(JobdError):
    status = 404
    code = "not_found"
    title = "Not found"


class AlreadyExists(JobdError):
    status = 409
    code = "already_exists"
    title = "Already exists"


class IdempotencyConflict(JobdError):
    status = 409
    code = "idempotency_conflict"
    title = "Idempotency-Key reused with a different body"


class InvalidState(JobdError):
    status = 409
    code = "invalid_state"
    title = "The object is not in a state that allows this"


class PayloadTooLarge(JobdError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


# Refusals of the HTTP layer itself (the connection or its framing), before any route
class MalformedRequest(JobdError):
    status = 400
    code = "malformed_request"
    title = "Malformed request"


class RequestTimeout(JobdError):
    status = 408
    code = "request_timeout"
    title = "Request not received in time"


class TooManyConnections(JobdError):
    status = 503
    code = "too_many_connections"
    title = "Too many connections"


class RateLimited(JobdError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ConfigError(JobdError):
    code = "config_error"
    title = "Invalid configuration"
    exit_code = 2


class StoreUnavailable(JobdError):
    status = 503
    code = "store_unavailable"
    title = "Database unavailable"


def field_errors(loc: str, message: str) -> list[dict[str, Any]]:
    return [{"field": loc, "message": message}]


class StartupError(JobdError):
    code = "startup_error"
    title = "The daemon could not start"


class TaskFailed(JobdError):
    """A long-lived task of the daemon gave up (see :mod:`jobd.supervisor`)."""

    status = 503
    code = "task_failed"
    title = "A task of the daemon failed"
