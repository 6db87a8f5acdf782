"""Job types come from the built-ins, the ``jobd.handlers`` entry points and ``[handlers]``."""

from __future__ import annotations

import sys
import types

import pytest
from pydantic import BaseModel

from jobd.errors import ConfigError
from jobd.handlers.base import AnyPayload, JobType
from jobd.handlers.registry import build_registry


class ResizePayload(BaseModel):
    width: int


async def resize(payload: ResizePayload, ctx: object) -> dict[str, int]:
    return {"width": payload.width}


resize.payload_model = ResizePayload  # type: ignore[attr-defined]


async def plain(payload: AnyPayload, ctx: object) -> None:
    """Does nothing much."""


def not_async(payload: object, ctx: object) -> None:
    return None


@pytest.fixture
def module() -> types.ModuleType:
    mod = types.ModuleType("jobd_test_handlers")
    mod.resize = resize  # type: ignore[attr-defined]
    mod.plain = plain  # type: ignore[attr-defined]
    mod.not_async = not_async  # type: ignore[attr-defined]
    mod.ready = JobType("whatever", plain, AnyPayload, "a prepared type")  # type: ignore[attr-defined]
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def test_builtins_are_registered() -> None:
    registry = build_registry(use_entry_points=False)
    assert {"noop", "http", "email"} <= set(registry.names())


def test_config_handlers_are_loaded_with_their_payload_model(module: types.ModuleType) -> None:
    registry = build_registry({"resize": "jobd_test_handlers:resize",
                               "plain": "jobd_test_handlers:plain",
                               "ready": "jobd_test_handlers:ready"})
    assert registry.get("resize").payload_model is ResizePayload
    assert registry.get("plain").payload_model is AnyPayload
    assert registry.get("plain").description == "Does nothing much."
    ready = registry.get("ready")
    assert ready.name == "ready" and ready.description == "a prepared type"


@pytest.mark.parametrize("target, message", [
    ("jobd_test_handlers", "expected 'module:function'"),
    ("no_such_module_xyz:f", "cannot load"),
    ("jobd_test_handlers:missing", "cannot load"),
    ("jobd_test_handlers:not_async", "must be an async function"),
])
def test_bad_handler_targets_are_config_errors(module: types.ModuleType, target: str,
                                               message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_registry({"bad": target})


def test_entry_points_group_is_read(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> None:
    class FakeEntryPoint:
        name = "from_plugin"
        value = "jobd_test_handlers:resize"

        def load(self) -> object:
            return resize

    import jobd.handlers.registry as registry_module
    monkeypatch.setattr(registry_module, "entry_points",
                        lambda group: [FakeEntryPoint()] if group == "jobd.handlers" else [])
    assert build_registry().get("from_plugin").payload_model is ResizePayload
