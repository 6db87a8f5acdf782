"""The store is a boundary: outside ``jobd/store/`` no module imports a database driver,
names a backend, or holds SQL; what the rest of jobd may call is the ``Backend``
protocol's named transitions, none of which takes a function or SQL to run. Read from
the source (its syntax tree), so a new module is checked as soon as it exists."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobd.store.backend import Backend

PACKAGE = Path(__file__).resolve().parents[2] / "jobd"
STORE = PACKAGE / "store"
DRIVERS = ("sqlite3", "asyncpg", "psycopg", "psycopg2", "aiosqlite")
# what the rest of jobd may import of the store: open_backend, the Backend protocol's
# module, and the nodes' Coordination protocol with its factory (open_coordination)
ALLOWED_FROM_STORE = ("jobd.store", "jobd.store.backend", "jobd.store.cluster")
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                 r"CREATE\s+(TABLE|(UNIQUE\s+)?INDEX)|ALTER\s+TABLE|PRAGMA\s|BEGIN\s+IMMEDIATE)\b",
                 re.S)


def outside_the_store() -> list[Path]:
    found = [p for p in PACKAGE.rglob("*.py") if STORE not in p.parents]
    assert len(found) > 20  # the walk found the package
    return sorted(found)


def imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import, ``from X import Y`` also as ``X.Y``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                  "import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant)):
            yield node.lineno, str(node.args[0].value)


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{line}"


def test_no_module_outside_the_store_imports_a_database_driver() -> None:
    found = [(where(path, line), name) for path in outside_the_store()
             for line, name in imported(ast.parse(path.read_text(), str(path)))
             if name.split(".")[0] in DRIVERS]
    assert found == []


def test_outside_the_store_only_the_factories_and_the_protocols_are_imported() -> None:
    """Nothing names a backend (``jobd.store.sqlite``, ``jobd.store.postgres``) or the
    store's own helpers: the backend is whatever ``open_backend`` returned (and the
    coordination whatever ``open_coordination`` did)."""
    def allowed(name: str) -> bool:
        if not (name == "jobd.store" or name.startswith("jobd.store.")):
            return True
        return name in ALLOWED_FROM_STORE or name.rpartition(".")[0] in ALLOWED_FROM_STORE
    found = [(where(path, line), name) for path in outside_the_store()
             for line, name in imported(ast.parse(path.read_text(), str(path)))
             if not allowed(name)]
    assert found == []


def test_no_sql_outside_the_store() -> None:
    found = [(where(path, node.lineno), node.value[:60]) for path in outside_the_store()
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and SQL.search(node.value)]
    assert found == []


@pytest.mark.parametrize("text", ["SELECT id FROM jobs", "INSERT INTO jobs (id) VALUES (?)",
                                  "UPDATE jobs SET status = 'x'", "DELETE FROM tenants",
                                  "CREATE UNIQUE INDEX i ON t (c)", "PRAGMA journal_mode",
                                  "BEGIN IMMEDIATE"])
def test_the_sql_pattern_sees_sql(text: str) -> None:
    assert SQL.search(text)


def protocol_methods() -> dict[str, Callable[..., object]]:
    methods = {name: member for name, member in inspect.getmembers(Backend, inspect.isfunction)
               if not name.startswith("_")}
    assert {"insert_job", "claim_jobs", "finish_job", "stats"} <= set(methods)
    return methods


@pytest.mark.parametrize("name", sorted(protocol_methods()))
def test_no_transition_of_the_protocol_takes_a_function_or_sql(name: str) -> None:
    """Only named transitions: no ``write(fn)``, ``read(fn)`` or ``execute(sql)`` for the
    rest of jobd to run its own queries through."""
    method = protocol_methods()[name]
    hints = typing.get_type_hints(method)
    for parameter in list(inspect.signature(method).parameters)[1:]:
        assert parameter not in ("fn", "func", "sql", "query", "statement"), parameter
        hint = hints.get(parameter)
        assert "Callable" not in repr(hint) and not callable_type(hint), (parameter, hint)


def callable_type(hint: object) -> bool:
    origin = typing.get_origin(hint)
    if origin is not None and "Callable" in repr(origin):
        return True
    return any(callable_type(arg) for arg in typing.get_args(hint))
