"""Config: defaults → TOML → environment, validated, unknown keys named."""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

import jobd.config
from jobd.config import (
    CONFIG_ENV,
    Config,
    DatabaseConfig,
    database_path_is_explicit,
    load_config,
    locate_config,
    mask_password,
)
from jobd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "jobd.toml.example"


def write(tmp_path: Path, text: str, name: str = "jobd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# defaults and sources ---------------------------------------------------------------


def test_defaults_load_without_a_file() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert config.server.port == 8080
    assert config.database.path == "jobd.db"
    assert config.database.synchronous == "full"
    assert config.webhooks.retry_delays == (30.0, 60.0, 120.0)
    assert config.webhooks.allow_private_networks is False
    assert config.handlers == {}


def test_toml_file_by_path(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9001\n[database]\npath = "/var/lib/jobd.db"\n')
    config = load_config(path, environ={})
    assert config.server.port == 9001
    assert config.database.path == "/var/lib/jobd.db"
    assert config.server.host == "127.0.0.1"  # untouched keys keep their defaults


def test_toml_file_by_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\nconcurrency = 3\n")
    assert load_config(str(path), environ={}).workers.concurrency == 3


def test_toml_file_via_jobd_config_env(tmp_path: Path) -> None:
    path = write(tmp_path, "[jobs]\nmax_attempts = 7\n")
    config = load_config(environ={CONFIG_ENV: str(path)})
    assert config.jobs.max_attempts == 7


def test_explicit_path_wins_over_jobd_config(tmp_path: Path) -> None:
    explicit = write(tmp_path, "[jobs]\nmax_attempts = 2\n", "a.toml")
    from_env = write(tmp_path, "[jobs]\nmax_attempts = 9\n", "b.toml")
    config = load_config(explicit, environ={CONFIG_ENV: str(from_env)})
    assert config.jobs.max_attempts == 2


def test_handlers_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[handlers]\nresize_image = "myapp.jobs:resize_image"\n')
    assert load_config(path, environ={}).handlers == {"resize_image": "myapp.jobs:resize_image"}


def test_smtp_from_is_spelled_from_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[smtp]\nfrom = "ops@example.com"\n')
    assert load_config(path, environ={}).smtp.from_address == "ops@example.com"


# environment overrides --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "get", "expected"),
    [
        ("JOBD_SERVER_PORT", "9000", lambda c: c.server.port, 9000),
        ("JOBD_WEBHOOKS_RETRY_DELAYS", "[0.1, 0.2]", lambda c: c.webhooks.retry_delays, (0.1, 0.2)),
        ("JOBD_DATABASE_PATH", "/tmp/x.db", lambda c: c.database.path, "/tmp/x.db"),
        ("JOBD_WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "true",
         lambda c: c.webhooks.allow_private_networks, True),
        ("JOBD_RATE_LIMIT_BURST", "5", lambda c: c.rate_limit.burst, 5),
        ("JOBD_WORKERS_POLL_INTERVAL", "0.05", lambda c: c.workers.poll_interval, 0.05),
        ("JOBD_SERVER_HOST", "0.0.0.0", lambda c: c.server.host, "0.0.0.0"),
        ("JOBD_DATABASE_SYNCHRONOUS", "normal", lambda c: c.database.synchronous, "normal"),
        ("JOBD_SMTP_FROM", "ops@example.com", lambda c: c.smtp.from_address, "ops@example.com"),
    ],
)
def test_env_override(name: str, raw: str, get: typing.Any, expected: object) -> None:
    value = get(load_config(environ={name: raw}))
    assert value == expected
    assert type(value) is type(expected)


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\nhost = \"10.0.0.1\"\n")
    config = load_config(path, environ={"JOBD_SERVER_PORT": "9002"})
    assert config.server.port == 9002
    assert config.server.host == "10.0.0.1"


def test_env_variables_of_other_programs_are_ignored() -> None:
    assert load_config(environ={"PATH": "/usr/bin", "HOME": "/root"}) == Config()


@pytest.mark.parametrize(("name", "raw", "get"), [
    ("JOBD_SMTP_PASSWORD", "123456", lambda c: c.smtp.password),
    ("JOBD_SMTP_USERNAME", "true", lambda c: c.smtp.username),
    ("JOBD_DATABASE_PATH", "2024", lambda c: c.database.path),
])
def test_env_string_keys_keep_numeric_looking_values(name: str, raw: str, get: typing.Any) -> None:
    assert get(load_config(environ={name: raw})) == raw


# PostgreSQL: database.url and its keys ---------------------------------------------

PG_URL = "postgresql://jobd:s3cret-pw@db.example.com:5432/jobd"


def test_without_url_the_database_is_sqlite() -> None:
    database = load_config(environ={}).database
    assert database.url is None
    assert not database.is_postgres
    assert database.location == "jobd.db"
    assert (database.pool_size, database.statement_timeout) == (10, 30.0)


@pytest.mark.parametrize("url", [PG_URL, "postgres://jobd:s3cret-pw@db.example.com/jobd",
                                 "postgresql:///jobd?host=/var/run/postgresql",
                                 "postgresql://jobd@h1:5432,h2:5432/jobd"])
def test_a_postgresql_url_selects_postgresql(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f'[database]\nurl = "{url}"\n')
    database = load_config(path, environ={}).database
    assert database.url == url
    assert database.is_postgres


def test_url_pool_size_and_statement_timeout_from_the_environment() -> None:
    database = load_config(environ={"JOBD_DATABASE_URL": PG_URL, "JOBD_DATABASE_POOL_SIZE": "4",
                                    "JOBD_DATABASE_STATEMENT_TIMEOUT": "2.5"}).database
    assert (database.url, database.pool_size, database.statement_timeout) == (PG_URL, 4, 2.5)


def test_an_empty_url_leaves_the_database_on_sqlite() -> None:
    assert load_config(environ={"JOBD_DATABASE_URL": ""}).database.url is None


def test_statement_timeout_zero_means_no_limit() -> None:
    assert load_config(environ={"JOBD_DATABASE_STATEMENT_TIMEOUT": "0"}
                       ).database.statement_timeout == 0


@pytest.mark.parametrize(("variable", "raw"), [
    ("JOBD_DATABASE_URL", "mysql://jobd:s3cret-pw@db/jobd"),
    ("JOBD_DATABASE_URL", "/var/lib/jobd.db"),
    ("JOBD_DATABASE_URL", "postgresql://jobd:s3cret-pw@db:port/jobd"),
    ("JOBD_DATABASE_URL", "postgresql://jobd:s3cret-pw@db:70000/jobd"),
    ("JOBD_DATABASE_POOL_SIZE", "0"),
    ("JOBD_DATABASE_STATEMENT_TIMEOUT", "-1"),
])
def test_invalid_postgresql_settings_name_the_key(variable: str, raw: str) -> None:
    key = "database." + variable.removeprefix("JOBD_DATABASE_").lower()
    with pytest.raises(ConfigError, match=re.escape(key)) as caught:
        load_config(environ={variable: raw})
    assert "s3cret-pw" not in str(caught.value)


def test_a_wrong_url_in_the_file_names_the_key_and_hides_the_password(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "mysql://jobd:s3cret-pw@db/jobd"\n')
    with pytest.raises(ConfigError, match=r"database\.url.*not a PostgreSQL URL") as caught:
        load_config(path, environ={})
    assert "mysql://jobd:***@db/jobd" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


def test_sqlite_only_keys_set_beside_a_url_are_named_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\npath = "/var/lib/jobd.db"\nbusy_timeout = 2\n'
                           'synchronous = "normal"\n')
    database = load_config(path, environ={"JOBD_DATABASE_URL": PG_URL}).database
    assert database.ignored_keys() == ("path", "busy_timeout")
    warning = database.ignored_keys_warning()
    assert warning is not None
    assert "database.path, database.busy_timeout" in warning
    assert "synchronous" not in warning  # it has a meaning on PostgreSQL
    assert "postgresql://jobd:***@db.example.com:5432/jobd" in warning
    assert "s3cret-pw" not in warning


def test_the_example_file_switches_backends_by_its_url_alone() -> None:
    database = load_config(EXAMPLE, environ={"JOBD_DATABASE_URL": PG_URL}).database
    assert database.is_postgres
    assert database.ignored_keys() == ("path", "busy_timeout")


@pytest.mark.parametrize("environ", [
    {},                                   # SQLite: path and busy_timeout mean something
    {"JOBD_DATABASE_PATH": "x.db"},
    {"JOBD_DATABASE_URL": PG_URL},        # PostgreSQL with no SQLite key set
    {"JOBD_DATABASE_URL": PG_URL, "JOBD_DATABASE_SYNCHRONOUS": "off"},
])
def test_no_warning_without_ignored_keys(environ: dict[str, str]) -> None:
    database = load_config(environ=environ).database
    assert database.ignored_keys() == ()
    assert database.ignored_keys_warning() is None


@pytest.mark.parametrize(("url", "masked"), [
    (PG_URL, "postgresql://jobd:***@db.example.com:5432/jobd"),
    ("postgres://jobd:p%40ss@db/jobd", "postgres://jobd:***@db/jobd"),
    ("postgresql://jobd:p@ss/w?rd@db:5432/jobd", "postgresql://jobd:***@db:5432/jobd"),
    ("postgresql://jobd:@db/jobd", "postgresql://jobd:***@db/jobd"),
    ("postgresql://jobd@db/jobd?sslmode=require", "postgresql://jobd@db/jobd?sslmode=require"),
    ("postgresql://db/jobd?user=jobd&password=s3cret-pw&sslpassword=k",
     "postgresql://db/jobd?user=jobd&password=***&sslpassword=***"),
    ("postgresql://jobd:pw@db?password=pw", "postgresql://jobd:***@db?password=***"),
    ("postgresql:///jobd?host=/run/postgresql", "postgresql:///jobd?host=/run/postgresql"),
])
def test_mask_password(url: str, masked: str) -> None:
    assert mask_password(url) == masked
    assert DatabaseConfig(url=url).location == masked


# where the file is found ------------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A working directory and an /etc stand-in, searched in that order."""
    cwd, etc = tmp_path / "cwd", tmp_path / "etc" / "jobd"
    cwd.mkdir()
    etc.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(jobd.config, "SEARCH_PATHS", (Path("jobd.toml"), etc / "jobd.toml"))
    return {"local": cwd / "jobd.toml", "etc": etc / "jobd.toml", "given": tmp_path / "given.toml",
            "env": tmp_path / "env.toml"}


def test_the_search_order(places: dict[str, Path]) -> None:
    def port_and_source(path: Path | None = None, env: dict[str, str] | None = None) -> tuple[
            int, str]:
        source = locate_config(path, environ=env or {})
        return load_config(path, environ=env or {}).server.port, source.found_by

    assert port_and_source() == (8080, "defaults")
    places["etc"].write_text("[server]\nport = 1004\n")
    assert port_and_source() == (1004, "search")
    places["local"].write_text("[server]\nport = 1003\n")
    assert port_and_source() == (1003, "search")
    places["env"].write_text("[server]\nport = 1002\n")
    assert port_and_source(env={CONFIG_ENV: str(places["env"])}) == (1002, CONFIG_ENV)
    places["given"].write_text("[server]\nport = 1001\n")
    assert port_and_source(places["given"], env={CONFIG_ENV: str(places["env"])}) == (
        1001, "--config")


def test_the_source_says_which_file_or_where_it_looked(places: dict[str, Path]) -> None:
    nothing = locate_config(environ={}).describe()
    assert str(places["local"]) in nothing and str(places["etc"]) in nothing
    assert "defaults" in nothing
    places["etc"].write_text("")
    assert locate_config(environ={}).describe() == f"config file {places['etc']} (found by search)"
    given = locate_config(places["given"], environ={}).describe()
    assert given == f"config file {places['given']} (from --config)"


def test_a_searched_file_that_is_broken_is_an_error_not_skipped(places: dict[str, Path]) -> None:
    places["local"].write_text("[server\n")
    places["etc"].write_text("[server]\nport = 1004\n")
    with pytest.raises(ConfigError, match=re.escape("config file jobd.toml is not valid TOML")):
        load_config(environ={})


def test_whether_database_path_was_set(tmp_path: Path) -> None:
    assert not database_path_is_explicit(load_config(environ={}))
    assert not database_path_is_explicit(load_config(write(tmp_path, "[database]\n"), environ={}))
    in_file = write(tmp_path, '[database]\npath = "jobd.db"\n', "a.toml")
    assert database_path_is_explicit(load_config(in_file, environ={}))
    assert database_path_is_explicit(load_config(environ={"JOBD_DATABASE_PATH": "x.db"}))


# durations --------------------------------------------------------------------------


def test_fractions_of_seconds_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\npoll_interval = 0.05\nlease_seconds = 0.5\n"
                           "[webhooks]\nretry_delays = [0.01, 0.02]\ntimeout = 0.25\n")
    config = load_config(path, environ={})
    assert config.workers.poll_interval == 0.05
    assert config.workers.lease_seconds == 0.5
    assert config.webhooks.retry_delays == (0.01, 0.02)
    assert config.webhooks.timeout == 0.25


# rejections -------------------------------------------------------------------------


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_config(path, environ={})


def test_unknown_section_in_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[sevrer]\nport = 1\n")
    with pytest.raises(ConfigError, match="sevrer"):
        load_config(path, environ={})


def test_unknown_env_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_config(environ={"JOBD_SERVER_PROT": "1"})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nport = "abc"\n', "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[database]\nsynchronous = "sometimes"\n', "database.synchronous"),
        ("[workers]\npoll_interval = 0\n", "workers.poll_interval"),
        ("[jobs]\nmax_attempts = 0\n", "jobs.max_attempts"),
        ('[logging]\nlevel = "loud"\n', "logging.level"),
        ("[rate_limit]\nburst = 2147483648\n", "rate_limit.burst"),  # past what is stored
        ("[rate_limit]\nrate = inf\n", "rate_limit.rate"),
        ("[rate_limit]\nrate = nan\n", "rate_limit.rate"),
    ],
)
def test_invalid_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(path, environ={})


def test_invalid_env_value_names_the_variable_and_the_key() -> None:
    with pytest.raises(ConfigError) as bad_port:
        load_config(environ={"JOBD_SERVER_PORT": "abc"})
    assert "JOBD_SERVER_PORT='abc'" in str(bad_port.value)
    assert "server.port" in str(bad_port.value)
    with pytest.raises(ConfigError) as bad_mode:
        load_config(environ={"JOBD_DATABASE_SYNCHRONOUS": "sometimes"})
    assert "JOBD_DATABASE_SYNCHRONOUS='sometimes'" in str(bad_mode.value)
    assert "database.synchronous" in str(bad_mode.value)


def test_unknown_env_key_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment variable JOBD_SERVER_PROT"):
        load_config(environ={"JOBD_SERVER_PROT": "1"})


def test_a_bad_value_in_the_file_does_not_blame_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = "abc"\n')
    with pytest.raises(ConfigError) as bad:
        load_config(path, environ={"JOBD_SERVER_HOST": "0.0.0.0"})
    assert "JOBD_" not in str(bad.value)
    assert str(path) in str(bad.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path, environ={})


def test_missing_file_via_env_names_the_path_and_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{path} (from JOBD_CONFIG) does not exist")):
        load_config(environ={CONFIG_ENV: str(path)})


def test_invalid_toml_names_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = = 1\n")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path, environ={})


def test_config_is_frozen() -> None:
    config = load_config(environ={})
    with pytest.raises(ValueError, match="frozen"):
        config.server.port = 1  # type: ignore[misc]


# jobd.toml.example against the model --------------------------------------------------

_SECTION = re.compile(r"^\[([A-Za-z0-9_.]+)\]")
_COMMENTED_KEY = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _model_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> tuple[
        set[tuple[str, ...]], set[tuple[str, ...]]]:
    """(leaf keys, free-form tables) of a config model, by TOML name (alias)."""
    leaves: set[tuple[str, ...]] = set()
    tables: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        key = (*prefix, field.alias or name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sub_leaves, sub_tables = _model_keys(annotation, key)
            leaves |= sub_leaves
            tables |= sub_tables | {key}
        elif typing.get_origin(annotation) is dict:
            tables.add(key)
        else:
            leaves.add(key)
    return leaves, tables


def _live_keys(data: dict[str, typing.Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    keys: set[tuple[str, ...]] = set()
    for name, value in data.items():
        if isinstance(value, dict):
            keys |= {(*prefix, name)} | _live_keys(value, (*prefix, name))
        else:
            keys.add((*prefix, name))
    return keys


def _commented_keys(text: str) -> set[tuple[str, ...]]:
    """``# key = ...`` lines, as keys of the section they appear in."""
    keys: set[tuple[str, ...]] = set()
    section: tuple[str, ...] | None = None
    for line in text.splitlines():
        if match := _SECTION.match(line):
            section = tuple(match.group(1).split("."))
        elif section is not None and (match := _COMMENTED_KEY.match(line)):
            keys.add((*section, match.group(1)))
    return keys


def _inside_free_table(key: tuple[str, ...], tables: set[tuple[str, ...]],
                       leaves: set[tuple[str, ...]]) -> bool:
    free = tables - {leaf[:i] for leaf in leaves for i in range(1, len(leaf))}
    return any(key[:len(t)] == t and len(key) > len(t) for t in free)


def test_example_documents_every_model_key_and_nothing_else() -> None:
    text = EXAMPLE.read_text()
    live = _live_keys(tomllib.loads(text))
    commented = _commented_keys(text)
    leaves, tables = _model_keys(Config)

    documented = live | commented
    missing = sorted(".".join(k) for k in leaves if k not in documented)
    assert not missing, f"jobd.toml.example does not document {missing}"
    missing_sections = sorted(".".join(t) for t in tables if t not in live)
    assert not missing_sections, f"jobd.toml.example has no section for {missing_sections}"

    known = leaves | tables
    unknown = sorted(".".join(k) for k in documented
                     if k not in known and not _inside_free_table(k, tables, leaves))
    assert not unknown, f"jobd.toml.example has keys the config model lacks: {unknown}"


def test_example_comments_out_only_optional_keys() -> None:
    """Keys without a default value (the SMTP login, the PostgreSQL URL) or whose default
    is worked out (the node name, the heartbeat interval) are commented out."""
    commented = _commented_keys(EXAMPLE.read_text())
    leaves, _ = _model_keys(Config)
    assert {k for k in commented if k in leaves} == {
        ("smtp", "username"), ("smtp", "password"), ("database", "url"),
        ("cluster", "node_name"), ("cluster", "heartbeat_interval")}


def test_example_loads_and_equals_the_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == Config()


def test_key_walk_sees_nested_and_aliased_keys() -> None:
    leaves, tables = _model_keys(Config)
    assert ("smtp", "from") in leaves
    assert ("smtp", "from_address") not in leaves
    assert ("handlers",) in tables
    assert ("server", "port") in leaves
