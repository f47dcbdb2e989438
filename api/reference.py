"""The API reference (``docs/api-reference.md``), generated from the app's OpenAPI schema.

    python -m api.reference > docs/api-reference.md

The app is built as in production, around a runtime on a throw-away SQLite file and without
MQTT, so nothing touches the network. The output depends only on the schema (paths in the
order the routers declare them, schemas by name), so the same code always gives the same
text; ``tests/test_docs.py`` checks that the committed file is up to date.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["build_schema", "main", "render"]

METHODS = ("get", "post", "put", "patch", "delete")
COMMAND = "python -m api.reference > docs/api-reference.md"

Schema = Mapping[str, Any]


def build_schema() -> dict[str, Any]:
    """The OpenAPI document of the app, built around a runtime on a temporary SQLite store."""
    from api import create_app
    from cargowatch.runtime import Runtime
    from cargowatch.settings import Settings

    with tempfile.TemporaryDirectory(prefix="cw-api-reference-") as tmp:
        settings = Settings(db_url=f"sqlite:///{Path(tmp) / 'reference.sqlite'}", mqtt_url=None)
        runtime = Runtime.open(settings)
        try:
            return create_app(runtime).openapi()
        finally:
            runtime.close()


def render(schema: Schema) -> str:
    """The reference as Markdown: operations grouped by tag, then every named schema."""
    components: Schema = schema.get("components", {}).get("schemas", {})
    out: list[str] = [
        "# API reference",
        "",
        "<!-- Generated from the OpenAPI schema; do not edit. To regenerate:",
        f"     {COMMAND} -->",
        "",
        "Every route of the HTTP API with its parameters, request body and responses, generated "
        "from the application's OpenAPI schema (also served at `GET /openapi.json`, interactive "
        "at `GET /docs`). Roles, tenancy, time formats and the error shape are explained in "
        "[api.md](api.md). Routes under `/v1` need `Authorization: Bearer <api key>`.",
        "",
    ]
    groups = _by_tag(schema.get("paths", {}))
    out.append("## Routes")
    out.append("")
    for tag, ops in groups.items():
        out.append(f"- **{tag}**: " + ", ".join(f"`{m.upper()} {p}`" for p, m, _ in ops))
    out.append("")
    for tag, ops in groups.items():
        out.append(f"## {tag}")
        out.append("")
        for path, method, op in ops:
            out.extend(_operation(path, method, op))
    if components:
        out.append("## Schemas")
        out.append("")
        for name in sorted(components):
            out.extend(_component(name, components[name]))
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _by_tag(paths: Schema) -> dict[str, list[tuple[str, str, Schema]]]:
    groups: dict[str, list[tuple[str, str, Schema]]] = {}
    for path, item in paths.items():
        for method in METHODS:
            op = item.get(method)
            if op is not None:
                tag = (op.get("tags") or ["other"])[0]
                groups.setdefault(tag, []).append((path, method, op))
    return groups


def _operation(path: str, method: str, op: Schema) -> Iterator[str]:
    yield f"### `{method.upper()} {path}`"
    yield ""
    summary = op.get("summary")
    description = (op.get("description") or "").strip()
    if summary:
        yield f"**{summary}**" + (" (deprecated)" if op.get("deprecated") else "")
        yield ""
    if description:
        yield description
        yield ""
    yield "Authentication: " + ("API key" if op.get("security") else "none") + "."
    yield ""
    params = op.get("parameters") or []
    if params:
        yield "| parameter | in | type | required | default | description |"
        yield "|---|---|---|---|---|---|"
        for p in params:
            s = p.get("schema", {})
            yield _row(
                f"`{p['name']}`",
                p.get("in", ""),
                _type(s),
                "yes" if p.get("required") else "no",
                _default(s),
                p.get("description") or s.get("description") or "",
            )
        yield ""
    body = op.get("requestBody")
    if body:
        content = body.get("content", {})
        kinds = ", ".join(f"{_type(c.get('schema', {}))} as `{ct}`" for ct, c in content.items())
        yield f"Request body ({'required' if body.get('required') else 'optional'}): {kinds}."
        yield ""
    yield "| status | meaning | body |"
    yield "|---|---|---|"
    for code, resp in sorted(op.get("responses", {}).items()):
        content = resp.get("content") or {}
        bodies = ", ".join(
            f"{_type(c.get('schema', {}))} (`{ct}`)" if c.get("schema") else f"`{ct}`"
            for ct, c in content.items()
        )
        yield _row(code, resp.get("description", ""), bodies or "—")
    yield ""


def _component(name: str, s: Schema) -> Iterator[str]:
    yield f"### {name}"
    yield ""
    description = (s.get("description") or "").strip()
    if description:
        yield description
        yield ""
    if "enum" in s:
        yield "One of: " + ", ".join(f"`{v}`" for v in s["enum"]) + "."
        yield ""
        return
    props: Schema = s.get("properties") or {}
    if not props:
        yield f"Type: {_type(s)}."
        yield ""
        return
    required = set(s.get("required") or [])
    yield "| field | type | required | default | description |"
    yield "|---|---|---|---|---|"
    for field, fs in props.items():
        yield _row(
            f"`{field}`",
            _type(fs),
            "yes" if field in required else "no",
            _default(fs),
            fs.get("description") or "",
        )
    extra = s.get("additionalProperties")
    if extra is True or isinstance(extra, Mapping):
        yield ""
        yield "Other fields are allowed" + (
            f" ({_type(extra)})." if isinstance(extra, Mapping) and extra else "."
        )
    yield ""


def _type(s: Schema) -> str:
    """A short human spelling of a JSON schema: ``DeviceOut``, ``list of string``, …"""
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "const" in s:
        return f"`{json.dumps(s['const'])}`"
    if "enum" in s:
        return " or ".join(f"`{json.dumps(v)}`" for v in s["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in s:
            parts = [_type(x) for x in s[key]]
            return " or ".join(dict.fromkeys(parts))
    t = s.get("type")
    if isinstance(t, list):
        return " or ".join(t)
    if t == "array":
        items = s.get("items")
        return f"list of {_type(items)}" if items else "list"
    if t == "object":
        extra = s.get("additionalProperties")
        if isinstance(extra, Mapping) and extra:
            return f"object of {_type(extra)}"
        return "object"
    if t is None:
        return "any"
    text = str(t)
    if "format" in s:
        text += f" ({s['format']})"
    limits = _limits(s)
    return f"{text} {limits}" if limits else text


def _limits(s: Schema) -> str:
    parts = []
    for key, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if key in s:
            parts.append(f"{sign} {s[key]}")
    low, high = s.get("minLength"), s.get("maxLength")
    if low is not None and high is not None:
        parts.append(f"{low}–{high} chars")
    elif high is not None:
        parts.append(f"at most {high} chars")
    elif low is not None:
        parts.append(f"at least {low} chars")
    if "pattern" in s:
        parts.append(f"`{s['pattern']}`")
    return ", ".join(parts)


def _default(s: Schema) -> str:
    if "default" not in s or s["default"] is None:
        return ""
    value = s["default"]
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def _row(*cells: object) -> str:
    # Table cells are one line each; a pipe inside a cell would end it.
    clean = (" ".join(str(c).split()).replace("|", "\\|") for c in cells)
    return "| " + " | ".join(clean) + " |"


def main() -> int:
    sys.stdout.write(render(build_schema()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
