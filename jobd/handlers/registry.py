"""Job types by name: built-ins, the ``jobd.handlers`` entry points, then ``[handlers]``."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from jobd.errors import ConfigError
from jobd.handlers.base import AnyPayload, JobType

ENTRY_POINT_GROUP = "jobd.handlers"


class Registry:
    def __init__(self, types: Iterable[JobType] = ()) -> None:
        self._types: dict[str, JobType] = {}
        for job_type in types:
            self.add(job_type)

    def add(self, job_type: JobType) -> None:
        self._types[job_type.name] = job_type

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types


def builtin_types() -> list[JobType]:
    from jobd.handlers.email import EMAIL
    from jobd.handlers.http import HTTP
    from jobd.handlers.noop import NOOP

    return [NOOP, HTTP, EMAIL]


def build_registry(extra: Mapping[str, str] | None = None, *,
                   use_entry_points: bool = True) -> Registry:
    registry = Registry(builtin_types())
    if use_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry.add(_as_job_type(ep.name, _load_entry_point(ep)))
    for name, target in (extra or {}).items():
        registry.add(_as_job_type(name, load_target(name, target)))
    return registry


def _load_entry_point(ep: Any) -> object:
    try:
        return ep.load()
    except Exception as exc:
        raise ConfigError(f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from None


def load_target(name: str, target: str) -> object:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handlers.{name}: expected 'module:function', got {target!r}")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"handlers.{name}: cannot load {target!r}: {exc}") from None
    return obj


def _as_job_type(name: str, obj: object) -> JobType:
    if isinstance(obj, JobType):
        return JobType(name, obj.handler, obj.payload_model, obj.description)
    if callable(obj) and inspect.iscoroutinefunction(obj):
        model = getattr(obj, "payload_model", AnyPayload)
        return JobType(name, obj, model, (obj.__doc__ or "").strip())
    raise ConfigError(f"handler {name!r} must be an async function or a JobType, got {obj!r}")
