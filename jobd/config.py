"""Configuration: defaults, then a TOML file, then ``JOBD_<SECTION>_<KEY>`` variables.

Settings are declared once, here, as pydantic models. Unknown keys are
rejected with the key named (or the variable, for a value from the
environment); durations are seconds and accept fractions.

The file is the first of: the ``--config`` path, ``JOBD_CONFIG``, ``./jobd.toml``,
``/etc/jobd/jobd.toml``. A path that was given must exist; the last two are
only looked for. With none of them, every key has its default.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobd.errors import ConfigError

ENV_PREFIX = "JOBD_"
CONFIG_ENV = "JOBD_CONFIG"
SEARCH_PATHS: tuple[Path, ...] = (Path("jobd.toml"), Path("/etc/jobd/jobd.toml"))


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


POSTGRES_SCHEMES = ("postgresql", "postgres")
SQLITE_ONLY_KEYS = ("path", "busy_timeout")
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


class DatabaseConfig(_Section):
    """SQLite at ``path`` unless ``url`` names a PostgreSQL database."""

    path: str = "jobd.db"
    synchronous: Literal["off", "normal", "full", "extra"] = "full"
    busy_timeout: float = Field(5.0, gt=0)
    url: str | None = None
    pool_size: int = Field(10, ge=1, le=1000)
    statement_timeout: float = Field(30.0, ge=0)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None  # an empty JOBD_DATABASE_URL leaves the database on SQLite
        url = url.strip()
        parts = urlsplit(url)
        if parts.scheme not in POSTGRES_SCHEMES:
            raise ValueError(f"{mask_password(url)!r} is not a PostgreSQL URL; expected "
                             "postgresql://user:password@host:5432/database (or postgres://)")
        if "," not in parts.netloc:  # libpq's host list (h1:5432,h2:5432) is the driver's
            try:
                parts.port  # noqa: B018 - raises for a port that is not a number in range
            except ValueError:
                raise ValueError(f"{mask_password(url)!r} has an invalid port") from None
        return url

    @property
    def is_postgres(self) -> bool:
        return self.url is not None

    @property
    def location(self) -> str:
        """Where the data lives, fit for logs: the file, or the URL without its password."""
        return mask_password(self.url) if self.url is not None else self.path

    def ignored_keys(self) -> tuple[str, ...]:
        """The SQLite-only keys this config sets although ``url`` selects PostgreSQL."""
        if self.url is None:
            return ()
        return tuple(key for key in SQLITE_ONLY_KEYS if key in self.model_fields_set)

    def ignored_keys_warning(self) -> str | None:
        """The one startup warning about :meth:`ignored_keys`, or None when there are none."""
        keys = self.ignored_keys()
        if not keys:
            return None
        names = ", ".join(f"database.{key}" for key in keys)
        return (f"{names} only apply to SQLite and are ignored: database.url selects "
                f"PostgreSQL ({self.location})")


def mask_password(url: str) -> str:
    """``url`` with any password (in the user part or the query) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The authority ends at the first "/" or "?" after the last "@" (a password may
    # hold either unescaped).
    at = rest.rfind("@")
    end = min((i for i in (rest.find("/", at + 1), rest.find("?", at + 1)) if i >= 0),
              default=len(rest))
    authority, path = rest[:end], rest[end:]
    userinfo, at_sign, hosts = authority.rpartition("@")
    if at_sign and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    path, question, query = path.partition("?")
    if question:
        query = "&".join(_mask_query_item(item) for item in query.split("&"))
    return f"{scheme}://{authority}{path}{question}{query}"


def _mask_query_item(item: str) -> str:
    key, eq, _value = item.partition("=")
    return f"{key}=***" if eq and unquote(key).lower() in _SECRET_QUERY_KEYS else item


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


# What both backends store for a tenant's limits (PostgreSQL's integer columns: 32 bits),
# and the largest rate that means anything (requests a second, finite).
LIMIT_MAX = 2**31 - 1
RATE_MAX = 1_000_000.0


class RateLimitConfig(_Section):
    rate: float = Field(10.0, gt=0, le=RATE_MAX)
    burst: int = Field(20, ge=1, le=LIMIT_MAX)


class IdempotencyConfig(_Section):
    ttl_hours: float = Field(24.0, gt=0)


class WebhooksConfig(_Section):
    timeout: float = Field(10.0, gt=0)
    retry_delays: tuple[float, ...] = (30.0, 60.0, 120.0)
    allow_private_networks: bool = False
    concurrency: int = Field(32, ge=1, le=1000)
    fast_client: bool = True  # the hand-written client; false: aiohttp's, same bounds


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


NODE_NAME_MAX = 64
# A node name goes into lease owners (``<node_name>/<instance>``) and notification
# payloads (words split on spaces): no "/", no whitespace.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def host_node_name() -> str:
    """The default ``cluster.node_name``: this host's name, made a valid node name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")
    return name[:NODE_NAME_MAX] or "jobd"


class ClusterConfig(_Section):
    """Several ``jobd serve`` nodes on one PostgreSQL database. On SQLite there is one
    node (the daemon's lock file keeps it so) and only ``node_name`` is used."""

    node_name: str | None = None  # None: the host name
    node_timeout: float = Field(10.0, ge=0.5, le=3600)
    heartbeat_interval: float | None = Field(None, gt=0)  # None: node_timeout / 5

    @field_validator("node_name")
    @classmethod
    def _valid_node_name(cls, name: str | None) -> str | None:
        if name is None:
            return None
        if len(name) > NODE_NAME_MAX or not _NODE_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a node name: 1 to {NODE_NAME_MAX} letters, "
                             "digits, '.', '_' or '-', starting with a letter or digit")
        return name

    @model_validator(mode="after")
    def _heartbeat_within_timeout(self) -> ClusterConfig:
        if self.heartbeat_interval is not None and self.heartbeat_interval > self.node_timeout / 2:
            raise ValueError(f"heartbeat_interval ({self.heartbeat_interval:g} s) must be at most "
                             f"half of node_timeout ({self.node_timeout:g} s): a node must be "
                             "able to miss a heartbeat without being taken for dead")
        return self

    @property
    def name(self) -> str:
        """This node's name: ``node_name``, or the host name."""
        return self.node_name or host_node_name()

    @property
    def heartbeat_s(self) -> float:
        return self.heartbeat_interval or self.node_timeout / 5


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
    cluster: ClusterConfig = ClusterConfig()
    handlers: dict[str, str] = {}


SECTIONS = tuple(Config.model_fields)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the configuration came from: ``path`` is None when no file was read."""

    path: Path | None
    found_by: str  # "--config", "JOBD_CONFIG", "search" or "defaults"
    searched: tuple[Path, ...] = ()

    def describe(self) -> str:
        if self.path is None:
            looked = " and ".join(str(p.absolute()) for p in self.searched) or "none"
            return f"no config file (looked for {looked}): defaults and JOBD_* variables"
        how = "found by search" if self.found_by == "search" else f"from {self.found_by}"
        return f"config file {self.path.absolute()} ({how})"


def locate_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                  search: Sequence[Path] | None = None) -> ConfigSource:
    """The file to read: ``path``, else ``JOBD_CONFIG``, else the first of ``search``
    (default :data:`SEARCH_PATHS`) that exists, else none."""
    env = os.environ if environ is None else environ
    if path:
        return ConfigSource(Path(path), "--config")
    if env.get(CONFIG_ENV):
        return ConfigSource(Path(env[CONFIG_ENV]), CONFIG_ENV)
    candidates = tuple(SEARCH_PATHS if search is None else search)
    for candidate in candidates:
        if candidate.exists():
            return ConfigSource(candidate, "search", candidates)
    return ConfigSource(None, "defaults", candidates)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                search: Sequence[Path] | None = None) -> Config:
    """Build the configuration; raise :class:`ConfigError` naming any bad key."""
    return read_config(locate_config(path, environ, search), environ)


def read_config(source: ConfigSource, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration from ``source``'s file (if any) and ``JOBD_*`` variables."""
    env = os.environ if environ is None else environ
    path = source.path
    data: dict[str, Any] = {}
    if path is not None:
        named = f"config file {path}" + (f" (from {CONFIG_ENV})" if source.found_by == CONFIG_ENV
                                         else "")
        data = _read_toml(path, named)
    from_env: dict[tuple[str, str], str] = {}
    for section, key, value, name in _env_overrides(env):
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config key {section!r} must be a table ({name} sets a key in it)")
        target[key] = value
        from_env[(section, key)] = name
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, from_env, env)) from None


def database_path_is_explicit(config: Config) -> bool:
    """Whether ``database.path`` was set (in the file or by ``JOBD_DATABASE_PATH``)."""
    return "path" in config.database.model_fields_set


def _read_toml(path: Path, named: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{named} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{named} is not readable") from None
    except OSError as exc:  # a directory, an I/O error
        raise ConfigError(f"{named} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{named} is not valid TOML: it is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{named} is not valid TOML: {exc}") from None


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str, Any, str]]:
    """``(section, key, value, variable name)`` of every ``JOBD_<SECTION>_<KEY>``."""
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
        value = raw if _expects_text(section, key) else _parse_env_value(raw)
        found.append((section, key, value, name))
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


def _describe(exc: ValidationError, path: str | Path | None,
              from_env: Mapping[tuple[str, str], str], env_values: Mapping[str, str]) -> str:
    """One clause per problem, naming the key, and the variable when its value came
    from the environment (``JOBD_SERVER_PORT='abc': ...``)."""
    where = f" in {path}" if path else ""
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        variable = from_env.get((loc[0], loc[1])) if len(loc) >= 2 else None
        if variable is not None and err["type"] == "extra_forbidden":
            problems.append(f"environment variable {variable} sets unknown config key {key!r}")
        elif variable is not None:
            problems.append(f"environment variable {variable}={_shown(env_values[variable])} "
                            f"is not a valid {key}: {err['msg']}")
        elif err["type"] == "extra_forbidden":
            problems.append(f"unknown config key {key!r}{where}")
        else:
            problems.append(f"config key {key!r}{where}: {err['msg']}")
    return "; ".join(problems)


def _shown(raw: str, limit: int = 40) -> str:
    """A variable's value for an error message: shortened, and with any password in a
    URL masked (``JOBD_DATABASE_URL``)."""
    raw = mask_password(raw)
    return repr(raw if len(raw) <= limit else raw[:limit] + "...")
