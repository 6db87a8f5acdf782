"""``http``: makes one HTTP request; a 2xx response succeeds.

Redirects are not followed (a 3xx is a failure) and every outbound address
is subject to :mod:`jobd.netguard`: the URL is checked when the job is
submitted (:func:`validate_submit`), again before the request, and the
session's connector re-checks resolved addresses at connect time. The session
(:func:`jobd.outbound.client_session`) bounds what an answer may cost; one past a
bound fails the attempt (retryable) at once. Of the body, :data:`MAX_READ_BYTES`
are read and :data:`MAX_RESULT_CHARS` kept in the result.

Error messages never contain request header values, URL credentials or
query strings: they end up in job records, logs and webhooks.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from pydantic import ConfigDict, Field, field_validator, model_validator
from yarl import URL

from jobd import netguard
from jobd.handlers.base import JobContext, JobType, PermanentError, StrictPayload
from jobd.outbound import client_session

if TYPE_CHECKING:
    from jobd.config import Config

DEFAULT_TIMEOUT = 30.0
MAX_READ_BYTES = 2048
MAX_RESULT_CHARS = 512
MAX_ERROR_BODY_CHARS = 200
MAX_ERROR_CHARS = 300

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

# RFC 9110 token characters for header names.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE_CHARS = ("\r", "\n", "\0")


class HttpStatusError(Exception):
    """The server answered with a non-2xx status (retryable)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class HttpRequestError(Exception):
    """The request failed before a response arrived (retryable)."""


class HttpTimeoutError(HttpRequestError, TimeoutError):
    """The request took longer than its timeout (retryable)."""


class HttpPayload(StrictPayload):
    # extra="forbid" is inherited (pydantic merges model_config with the parent's).
    # Inputs are hidden from error messages: headers may carry credentials.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True,
                              hide_input_in_errors=True)

    url: str
    method: Method = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json")
    body: str | None = None
    timeoutSeconds: float | None = Field(None, gt=0, le=3600)

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # Scheme and host only; the private-address policy needs the config.
        netguard.check_url(value, allow_private=True)
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name[:64]!r}")
            if any(c in header_value for c in _BAD_VALUE_CHARS):
                # Name the header, never echo its value.
                raise ValueError(f"header {name!r} contains CR, LF or NUL")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpPayload:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give either 'json' or 'body', not both")
        url = URL(self.url)
        if (url.raw_user or url.raw_password) and any(
                name.lower() == "authorization" for name in self.headers):
            raise ValueError("give credentials in the 'url' or an Authorization header, not both")
        return self


def check_http_payload(payload: HttpPayload, allow_private: bool) -> None:
    """Raise :class:`netguard.BlockedAddress` if the payload's URL is refused."""
    netguard.check_url(payload.url, allow_private=allow_private)


def validate_submit(payload: HttpPayload, config: Config) -> None:
    """Submit-time check used by the API (``(payload, config)`` signature)."""
    check_http_payload(payload, config.webhooks.allow_private_networks)


def safe_url(url: str) -> str:
    """The URL without credentials, query string or fragment, for messages."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid URL>"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def run_http(payload: HttpPayload, ctx: JobContext) -> dict[str, Any]:
    config = ctx.services.config
    allow_private = config.webhooks.allow_private_networks
    try:
        netguard.check_url(payload.url, allow_private=allow_private)
    except netguard.BlockedAddress as exc:
        raise PermanentError(f"refused URL: {exc}") from None

    timeout = payload.timeoutSeconds or DEFAULT_TIMEOUT
    shown_url = safe_url(payload.url)
    kwargs: dict[str, Any] = {
        "headers": payload.headers,
        "allow_redirects": False,
        "raise_for_status": False,
        "timeout": aiohttp.ClientTimeout(total=timeout),
    }
    if payload.json_body is not None:
        kwargs["json"] = payload.json_body
    elif payload.body is not None:
        kwargs["data"] = payload.body.encode()

    session = ctx.services.http
    own_session = session is None
    if session is None:
        session = client_session(allow_private)
    try:
        async with session.request(payload.method, payload.url, **kwargs) as resp:
            status = resp.status
            raw = await netguard.read_capped(resp, MAX_READ_BYTES)
    except netguard.BlockedAddress as exc:
        raise PermanentError(f"refused URL: {exc}") from None
    except TimeoutError as exc:  # asyncio.TimeoutError is TimeoutError on 3.11
        if isinstance(exc.__cause__, netguard.BlockedAddress):
            raise PermanentError(f"refused URL: {exc.__cause__}") from None
        raise HttpTimeoutError(
            f"timed out after {timeout:g}s: {payload.method} {shown_url}") from exc
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, netguard.BlockedAddress):
            raise PermanentError(f"refused URL: {cause}") from None
        text = str(exc).replace(payload.url, shown_url)
        text = _shorten(f"{type(exc).__name__}: {text}", MAX_ERROR_CHARS)
        if isinstance(exc, ValueError) and not isinstance(exc, aiohttp.ClientConnectionError):
            # aiohttp refused to build the request: retrying cannot help.
            raise PermanentError(text) from None
        raise HttpRequestError(text) from exc
    finally:
        if own_session:
            await session.close()

    excerpt = raw.decode("utf-8", errors="replace")
    if 200 <= status < 300:
        return {"status": status, "body": excerpt[:MAX_RESULT_CHARS]}
    note = " (redirects are not followed)" if 300 <= status < 400 else ""
    detail = _shorten(excerpt[:MAX_ERROR_BODY_CHARS], MAX_ERROR_BODY_CHARS)
    message = f"HTTP {status} from {shown_url}{note}"
    if detail:
        message += f": {detail}"
    raise HttpStatusError(message, status)


HTTP = JobType("http", run_http, HttpPayload, "Makes an HTTP request; 2xx succeeds.",
               submit_check=validate_submit)
