"""Configuration: defaults, then a TOML file, then ``JOBD_<SECTION>_<KEY>`` variables.

Settings are declared once, here, as pydantic models. Unknown keys are
rejected with the key named; durations are seconds and accept fractions.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobd.errors import ConfigError

ENV_PREFIX = "JOBD_"
CONFIG_ENV = "JOBD_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(262_144, ge=1024)
    max_connections: int = Field(1000, ge=1)
    read_timeout: float = Field(10.0, gt=0)
    idle_timeout: float = Field(75.0, gt=0)
    fast_lane: bool = True


class DatabaseConfig(_Section):
    path: str = "jobd.db"
    synchronous: Literal["off", "normal", "full", "extra"] = "full"
    busy_timeout: float = Field(5.0, gt=0)


class WorkersConfig(_Section):
    concurrency: int = Field(16, ge=1, le=10_000)
    poll_interval: float = Field(1.0, gt=0)
    lease_seconds: float = Field(300.0, gt=0)
    shutdown_grace: float = Field(30.0, ge=0)


class JobsConfig(_Section):
    max_attempts: int = Field(5, ge=1, le=100)
    backoff_base: float = Field(10.0, gt=0)
    backoff_max: float = Field(3600.0, gt=0)
    timeout: float = Field(300.0, gt=0)
    retention_days: float = Field(7.0, ge=0)


class RateLimitConfig(_Section):
    rate: float = Field(10.0, gt=0)
    burst: int = Field(20, ge=1)


class IdempotencyConfig(_Section):
    ttl_hours: float = Field(24.0, gt=0)


class WebhooksConfig(_Section):
    timeout: float = Field(10.0, gt=0)
    retry_delays: tuple[float, ...] = (30.0, 60.0, 120.0)
    allow_private_networks: bool = False
    concurrency: int = Field(32, ge=1, le=1000)


class SmtpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    from_address: str = Field("jobd@localhost", alias="from")
    timeout: float = Field(30.0, gt=0)


class LoggingConfig(_Section):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    workers: WorkersConfig = WorkersConfig()
    jobs: JobsConfig = JobsConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    idempotency: IdempotencyConfig = IdempotencyConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    smtp: SmtpConfig = SmtpConfig()
    logging: LoggingConfig = LoggingConfig()
    handlers: dict[str, str] = {}


SECTIONS = tuple(Config.model_fields)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration; raise :class:`ConfigError` naming any bad key."""
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV) or None
    data: dict[str, Any] = _read_toml(Path(path)) if path else {}
    for section, key, value in _env_overrides(env):
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config key {section!r} must be a table")
        target[key] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable") from None
    except OSError as exc:  # a directory, an I/O error
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    found = []
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue
        key = rest[len(section) + 1:]
        if section == "handlers":
            key = name[len(ENV_PREFIX) + len(section) + 1:]
        found.append((section, key, raw if _expects_text(section, key) else _parse_env_value(raw)))
    return found


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _expects_text(section: str, key: str) -> bool:
    """String settings keep the variable as written (a password may look like a number)."""
    if section == "handlers":
        return True
    model = Config.model_fields[section].annotation
    fields = getattr(model, "model_fields", {})
    info = fields.get(key) or next((f for f in fields.values() if f.alias == key), None)
    if info is None:
        return False
    annotation = info.annotation
    return annotation is str or str in get_args(annotation) or get_origin(annotation) is Literal


def _describe(exc: ValidationError, path: str | Path | None) -> str:
    where = f" in {path}" if path else ""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown config key {key!r}{where}")
        else:
            problems.append(f"config key {key!r}{where}: {err['msg']}")
    return "; ".join(problems)
