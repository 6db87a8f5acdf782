"""Render jobd's OpenAPI document as Markdown: docs/api.md.

    .venv/bin/python docs/gen_api.py > docs/api.md                 # the document this jobd builds
    .venv/bin/python docs/gen_api.py --url http://127.0.0.1:8080   # the one a running daemon serves

tests/docs/test_api_reference.py fails when docs/api.md differs from what this prints for
the document a real ``jobd serve`` answers at ``GET /openapi.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any

METHODS = ("get", "post", "put", "patch", "delete")
SCHEMA_REF = "#/components/schemas/"


def render(doc: dict[str, Any]) -> str:
    """The whole reference page for one OpenAPI document."""
    info = doc["info"]
    lines = [
        "# HTTP API reference",
        "",
        f"jobd {info['version']}, OpenAPI {doc['openapi']}. This page is generated from the "
        "document that `GET /openapi.json` serves, by `docs/gen_api.py`; do not edit it by "
        "hand. The [README](../README.md#http-api) explains idempotency, rate limits and "
        "errors.",
        "",
        _text(info.get("description", "")),
        "",
        "Authentication: every operation needs `Authorization: Bearer <apiKey>` unless it "
        "says *no authentication*.",
        "",
        "| method | path | operation |",
        "|---|---|---|",
    ]
    operations = [(path, method, op) for path, item in doc["paths"].items()
                  for method, op in item.items() if method in METHODS]
    for path, method, op in operations:
        lines.append(f"| `{method.upper()}` | [`{path}`](#{_anchor(method, path)}) | "
                     f"{_text(op.get('summary', op['operationId']))} |")
    lines.append("")
    for path, method, op in operations:
        lines.extend(_operation(path, method, op, doc))
    lines.extend(["## Schemas", ""])
    for name, schema in doc["components"]["schemas"].items():
        lines.extend(_schema(name, schema))
    return "\n".join(lines).rstrip() + "\n"


def _operation(path: str, method: str, op: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    out = [f'<a id="{_anchor(method, path)}"></a>', f"## `{method.upper()} {path}`", ""]
    if op.get("summary"):
        out.extend([_text(op["summary"]) + ".", ""])
    security = op.get("security", doc.get("security", []))
    out.append(f"Operation `{op['operationId']}`; "
               + ("bearer API key." if security else "*no authentication*."))
    out.append("")
    if op.get("parameters"):
        out.extend(["| parameter | in | required | type |", "|---|---|---|---|"])
        for param in op["parameters"]:
            out.append(f"| `{param['name']}` | {param['in']} | "
                       f"{'yes' if param.get('required') else 'no'} | {_type(param['schema'])} |")
        out.append("")
    body = op.get("requestBody")
    if body:
        for media, content in body["content"].items():
            out.append(f"Request body ({media}{', required' if body.get('required') else ''}): "
                       f"{_type(content['schema'])}.")
        out.append("")
    out.extend(["| status | meaning | body |", "|---|---|---|"])
    for status, response in op["responses"].items():
        content = response.get("content", {})
        shown = ", ".join(f"{media}: {_type(c['schema'])}" if "schema" in c else media
                          for media, c in content.items()) or "-"
        headers = response.get("headers")
        meaning = _text(response.get("description", ""))
        if headers:
            meaning += " Headers: " + ", ".join(f"`{h}`" for h in headers) + "."
        out.append(f"| {status} | {meaning} | {shown} |")
    out.append("")
    return out


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f"### {name}", ""]
    if schema.get("description"):
        out.extend([_text(schema["description"]), ""])
    if schema.get("additionalProperties") is False:
        out.extend(["Any other field is refused.", ""])
    required = set(schema.get("required", []))
    out.extend(["| field | type | required | notes |", "|---|---|---|---|"])
    for field, prop in schema.get("properties", {}).items():
        out.append(f"| `{field}` | {_type(prop)} | {'yes' if field in required else 'no'} | "
                   f"{_notes(prop)} |")
    out.append("")
    return out


def _type(schema: dict[str, Any]) -> str:
    """A short human reading of a JSON schema: ``string (date-time) or null``."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(SCHEMA_REF)
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind is None:
        return "any JSON value"
    limits = _limits(schema)
    text = f"{kind} ({schema['format']})" if "format" in schema else str(kind)
    return f"{text}, {limits}" if limits else text


def _limits(schema: dict[str, Any]) -> str:
    words = {"minLength": "length ≥ {}", "maxLength": "length ≤ {}", "minimum": "≥ {}",
             "maximum": "≤ {}", "exclusiveMinimum": "> {}", "exclusiveMaximum": "< {}"}
    return ", ".join(words[key].format(schema[key]) for key in words if key in schema)


def _notes(prop: dict[str, Any]) -> str:
    notes = [_text(prop["description"])] if prop.get("description") else []
    if "default" in prop:
        notes.append(f"default `{json.dumps(prop['default'])}`")
    return "; ".join(notes)


def _text(text: str) -> str:
    """Docstring text for Markdown: ``code`` becomes `code`, on one line."""
    return " ".join(re.sub(r"``([^`]+)``", r"`\1`", text).split())


def _anchor(method: str, path: str) -> str:
    return f"{method}-{re.sub(r'[^a-z0-9]+', '-', path.lower()).strip('-')}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render jobd's OpenAPI document as Markdown.")
    parser.add_argument("--url", help="a running daemon's base URL (default: build the "
                        "document in this process, as the daemon does)")
    args = parser.parse_args(argv)
    if args.url:
        with urllib.request.urlopen(args.url.rstrip("/") + "/openapi.json", timeout=10) as resp:
            doc = json.load(resp)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from jobd.api.openapi import build_openapi

        doc = json.loads(json.dumps(build_openapi(), default=str))
    sys.stdout.write(render(doc))


if __name__ == "__main__":
    main()
