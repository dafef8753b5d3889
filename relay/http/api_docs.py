"""The API's own description: `GET /api/openapi.json` (OpenAPI 3.1) and `GET /api/docs`, a
reference page rendered on the server from the same document (no script, no other site)."""

from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
from html import escape
import json
from typing import Any

from aiohttp import web

from .. import __version__
from .openapi import SECURITY_SCHEMES, Reply, build_document, operation
from .pages import render_page

REFERENCE = "reference"
_CACHE = "public, max-age=300"  # the document changes only with the server's code


@dataclass(eq=False)
class ApiDocs:
    """Serves the document of the app's routes (built once, on the first request: every route
    is added by then) and the reference page."""

    _built: tuple[bytes, str, str] | None = field(default=None, init=False)  # JSON, ETag, page

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/api/openapi.json", self.openapi),
            web.get("/api/docs", self.reference),
        ]

    def _build(self, app: web.Application) -> tuple[bytes, str, str]:
        if self._built is None:
            document = build_document(app.router, __version__)
            raw = json.dumps(document, indent=1).encode()
            self._built = raw, f'"{hashlib.sha256(raw).hexdigest()[:32]}"', reference_html(document)
        return self._built

    @operation("This API's OpenAPI 3.1 document", tag=REFERENCE, replies={
        200: Reply("every route: operations, bodies, auth and status codes", schema={"type": "object"},
                   headers={"ETag": "changes with the document"}),
        304: Reply("not modified since the ETag sent in If-None-Match", media=())})
    async def openapi(self, request: web.Request) -> web.Response:
        """Public and cacheable; generated from the request and answer models and the routes."""
        raw, etag, _ = self._build(request.app)
        headers = {"ETag": etag, "Cache-Control": _CACHE}
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=raw, content_type="application/json", headers=headers)

    @operation("The API reference page", tag=REFERENCE, replies={200: Reply("the page", media="text/html")})
    async def reference(self, request: web.Request) -> web.Response:
        """Each operation: its auth, parameters, body fields and status codes."""
        return render_page("API reference", self._build(request.app)[2])


def reference_html(document: dict[str, Any]) -> str:
    """The reference page's body: operations by tag, each with who may call it, its parameters,
    body fields and answers."""
    schemas = document["components"]["schemas"]
    by_tag: dict[str, list[str]] = {tag["name"]: [] for tag in document["tags"]}
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            by_tag.setdefault(op["tags"][0], []).append(_operation_html(method, path, op, schemas))
    toc = "".join(f'<li><a href="#{escape(tag)}">{escape(tag)}</a></li>' for tag in by_tag)
    sections = "".join(f'<section class="panel" id="{escape(tag)}"><h2>{escape(tag)}</h2>{"".join(ops)}</section>'
                       for tag, ops in by_tag.items())
    schemes = "".join(f"<dt><code>{escape(name)}</code></dt><dd>{escape(scheme['description'])}</dd>"
                      for name, scheme in SECURITY_SCHEMES.items())
    return (f'<main class="page api-ref"><header><h1>{escape(document["info"]["title"])} API reference</h1>'
            f'<a href="/api/openapi.json">openapi.json</a></header>'
            f'<p class="muted">{escape(document["info"]["description"])}</p>'
            f'<section class="panel"><h2>Keys and tokens</h2><dl>{schemes}</dl></section>'
            f"<nav><ul>{toc}</ul></nav>{sections}</main>")


def _operation_html(method: str, path: str, op: dict[str, Any], schemas: dict[str, Any]) -> str:
    auth = ", or ".join(next(iter(option), "anyone") for option in op.get("security", [])) or "anyone"
    parts = [f'<article class="op"><h3><span class="method">{method.upper()}</span> <code>{escape(path)}</code> '
             f"{escape(op['summary'])}</h3>",
             f'<p class="muted">{escape(op.get("description", ""))}</p>',
             f"<p>Auth: {escape(auth)}</p>"]
    params = op.get("parameters", [])
    if params:
        parts.append(_table(("parameter", "in", "about"),
                            [(p["name"], p["in"] + (", required" if p["required"] else ""), p["description"])
                             for p in params]))
    body = op.get("requestBody")
    if body:
        for media, content in body["content"].items():
            parts.append(f"<p>Body: <code>{escape(media)}</code></p>")
            model = _model(content["schema"], schemas)
            if model is not None:
                required = set(model.get("required", []))
                parts.append(_table(("field", "type", "about"), [
                    (name, _type(prop) + (", required" if name in required else ""), _about(prop))
                    for name, prop in model.get("properties", {}).items()]))
    parts.append(_table(("status", "answer"), [(status, answer["description"])
                                                for status, answer in op["responses"].items()]))
    return "".join(parts) + "</article>"


def _model(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any] | None:
    ref = schema.get("$ref", "")
    return schemas.get(ref.rsplit("/", 1)[-1]) if ref else None


def _about(schema: dict[str, Any]) -> str:
    """A property's description and those of its types (their rules)."""
    said = [schema.get("description", "")] + [s.get("description", "") for s in schema.get("anyOf", [])]
    return "; ".join(dict.fromkeys(text for text in said if text))


def _type(schema: dict[str, Any]) -> str:
    """A property's type in a few words: string, integer, Model, 'a' | 'b', ... | null."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return str(kind)


def _table(heads: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
