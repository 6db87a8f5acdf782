"""What a job type is: a name, an async handler and a pydantic model for its payload."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import aiohttp

    from jobd.config import Config


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the job goes to ``fatal`` at once."""


class StrictPayload(BaseModel):
    """Base for payload models: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class AnyPayload(BaseModel):
    """Payload model for types that accept any JSON object."""

    model_config = ConfigDict(extra="allow")


@dataclass
class Services:
    """Shared resources handlers may use; built once by the daemon."""

    config: Config
    http: aiohttp.ClientSession | None = None


@dataclass(frozen=True)
class JobContext:
    job_id: str
    tenant_id: str
    attempt: int
    max_attempts: int
    services: Services


Handler = Callable[[Any, JobContext], Awaitable[Any]]
SubmitCheck = Callable[[Any, "Config"], None]


@dataclass(frozen=True)
class JobType:
    name: str
    handler: Handler
    payload_model: type[BaseModel] = AnyPayload
    description: str = ""
    # Extra checks at submit time that need the config (e.g. the outbound-URL guard);
    # raise ValueError with a message naming the problem.
    submit_check: SubmitCheck | None = None
    extra: dict[str, Any] = field(default_factory=dict)
