"""docs/api.md is the OpenAPI document that a real ``jobd serve`` answers, rendered."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.docs.conftest import DOCS, Jobd, load_module
from tests.support import request

pytestmark = pytest.mark.e2e


def test_docs_api_md_renders_the_live_openapi_document(jobd: Callable[..., Jobd]) -> None:
    status, _, document = request("GET", jobd().daemon.base + "/openapi.json")
    assert status == 200
    rendered = load_module(DOCS / "gen_api.py", "gen_api").render(document)
    on_disk = (DOCS / "api.md").read_text(encoding="utf-8")
    assert rendered == on_disk, (
        "docs/api.md is out of date: run .venv/bin/python docs/gen_api.py > docs/api.md")


def test_the_rendering_names_every_path_field_and_error_of_the_document() -> None:
    from jobd.api.openapi import build_openapi

    document = build_openapi()
    page = load_module(DOCS / "gen_api.py", "gen_api").render(document)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert f"## `{method.upper()} {path}`" in page
            for status in operation["responses"]:
                assert f"| {status} |" in page
    for name, schema in document["components"]["schemas"].items():
        assert f"### {name}" in page
        for field in schema.get("properties", {}):
            assert f"| `{field}` |" in page
