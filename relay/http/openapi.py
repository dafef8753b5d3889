"""The OpenAPI 3.1 document of the server, built from the app's router and what each handler
says of itself with `@operation` (beside the handler, so a route without one is noticed: it is
left out of the document and logged, and tests/test_openapi.py fails)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
import logging
import re
from typing import Any, Callable, Iterable, Literal, Mapping, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .schemas.common import ErrorBody

log = logging.getLogger(__name__)

REF = "#/components/schemas/{model}"
OPERATION = "api_operation"  # the attribute of a handler that carries its Operation

# Who may call: the security schemes, by the names operations use.
ADMIN = "adminKey"
STREAM_KEY = "streamKey"
VIEWER = "viewerToken"
VIEWER_QUERY = "viewerTokenQuery"
METRICS = "metricsKey"
SHOP = "shopKey"
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    ADMIN: {"type": "http", "scheme": "bearer",
            "description": "The admin key: [auth] admin_key / RELAY_ADMIN_KEY, else the one generated in "
                           "the data dir (admin_key)."},
    STREAM_KEY: {"type": "http", "scheme": "bearer",
                 "description": "A show's stream key (shown when the show is made or the key rotated): WHIP."},
    VIEWER: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
             "description": "A signed viewer token of one show and room, from POST /api/shows/{show}/viewers."},
    VIEWER_QUERY: {"type": "apiKey", "in": "query", "name": "token",
                   "description": "The viewer token as ?token= (EventSource cannot set headers)."},
    METRICS: {"type": "http", "scheme": "bearer",
              "description": "[auth] metrics_key, else the admin key."},
    SHOP: {"type": "http", "scheme": "bearer",
           "description": "[auth] shop_key: the brand's shop posts orders and refunds with it, and nothing else."},
}

# The reference's order: from making a show to running it, then what serves it.
TAGS = ("shows", "reminders", "mirror rooms", "restreams", "media", "viewers", "shelf", "coupons", "orders", "comments", "events",
        "replays",
        "pages", "operations", "cluster", "reference")

PATH_PARAMS = {
    "show": "the show's id (a slug)",
    "room": "'hq' or a distributor id",
    "distributor": "a distributor id (a mirror room)",
    "restream": "a restream target's id (from its POST's answer or the list)",
    "session": "the session id from the Location of the POST's answer",
    "product": "a product id",
    "coupon": "a coupon id",
    "order_id": "the shop's order id",
    "comment": "a comment's id (from its POST's answer or the list)",
    "viewer_id": "a viewer's id (the admin's comment list shows each comment's)",
    "token": "the token of a signed replay link (signed_links of GET /api/shows/{show}/replay)",
    "name": "a file name",
    "subscription": "a reminder subscription's id (from its POST's answer)",
}

# What a 4xx/5xx means, by the situations operations share; their body is always ErrorBody.
ADMIN_ONLY = {401: "unauthorized: the admin key is missing or wrong"}
JSON_BODY = {400: "bad_json: not JSON, not an object, nested too deeply, or Infinity/NaN/a huge number",
             413: "body_too_large", 415: "unsupported_media_type: send application/json",
             422: "invalid_field: the message names the field and its rule"}
NO_SHOW = {404: "show_not_found"}
STORE = {503: "store_unavailable: the commerce store is away; nothing changed (Retry-After)"}
RATE = {429: "rate_limited: too many from this address (Retry-After)"}

Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True)
class Reply:
    """One success answer of an operation."""

    description: str
    body: type[BaseModel] | None = None  # a JSON body of this model
    media: str | tuple[str, ...] = "application/json"  # when not a model: the body's media types; () none
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})  # of a body not a model
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> what it carries


@dataclass(frozen=True)
class Param:
    """A query or header parameter."""

    name: str
    where: Literal["query", "header"]
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """What the API reference says of a route: its handler's docstring is the description."""

    summary: str
    tag: str
    replies: Mapping[int, Reply]
    errors: Mapping[int, str] = field(default_factory=dict)  # status -> when
    auth: tuple[str, ...] = ()  # security schemes, any one of which opens it
    public_too: bool = False  # with `auth`: anyone may call; a key or token gives more
    body: type[BaseModel] | str | None = None  # a JSON model, or the media type of a text body
    body_required: bool = True
    params: tuple[Param, ...] = ()


def operation(summary: str, *, tag: str, replies: Mapping[int, Reply],
              errors: Iterable[Mapping[int, str]] = (), **more: Any) -> Callable[[Handler], Handler]:
    """Describe a handler for the document; `errors` are merged (one status's meanings joined)."""
    described = Operation(summary, tag, replies, merge_errors(*errors), **more)

    def mark(handler: Handler) -> Handler:
        setattr(handler, OPERATION, described)
        return handler

    return mark


def admin_operation(summary: str, tag: str, replies: Mapping[int, Reply], *errors: Mapping[int, str],
                    **more: Any) -> Callable[[Handler], Handler]:
    """An operation that needs the admin key (401 without it)."""
    return operation(summary, tag=tag, replies=replies, errors=(ADMIN_ONLY, *errors), auth=(ADMIN,), **more)


def merge_errors(*groups: Mapping[int, str]) -> dict[int, str]:
    merged: dict[int, str] = {}
    for group in groups:
        for status, when in group.items():
            merged[status] = f"{merged[status]}; {when}" if status in merged else when
    return dict(sorted(merged.items()))


def openapi_path(path: str) -> str:
    """aiohttp's /x/{name} or /x/{name:regex} as OpenAPI's /x/{name}."""
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", r"{\1}", path)


@dataclass(frozen=True, eq=False)
class DescribedRoute:
    method: str
    path: str
    handler_name: str
    operation: Operation
    description: str


def described_routes(router: web.UrlDispatcher) -> tuple[list[DescribedRoute], list[str]]:
    """The routes with an Operation, and "METHOD path" of those without (HEAD ones aside:
    aiohttp adds them to each GET)."""
    found: list[DescribedRoute] = []
    missing: list[str] = []
    for route in router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD" or not path:
            continue
        path = openapi_path(path)
        op = getattr(route.handler, OPERATION, None)
        if op is None:
            missing.append(f"{route.method} {path}")
            continue
        name = getattr(route.handler, "__name__", "handler").strip("_")
        found.append(DescribedRoute(route.method, path, name, op, _doc(route.handler)))
    return found, missing


def _doc(handler: Callable[..., Any]) -> str:
    lines = (handler.__doc__ or "").strip().splitlines()
    return " ".join(line.strip() for line in lines if line.strip())


def build_document(router: web.UrlDispatcher, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every described route of `router`."""
    routes, missing = described_routes(router)
    if missing:
        log.error("routes without an @operation, left out of the API document: %s", ", ".join(missing))
    models = _models(routes)
    refs, defs = models_json_schema(models, ref_template=REF)
    ids = _operation_ids(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ids[route], refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "livecast relay", "version": version,
                 "description": "Live-commerce stream relay: WHIP in, WHEP out to an HQ room and distributor "
                                "mirror rooms; shows, shelf, coupons and replays. Errors are JSON "
                                "{\"error\": code, \"message\": text}."},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}), "securitySchemes": SECURITY_SCHEMES},
        "tags": [{"name": tag} for tag in sorted({r.operation.tag for r in routes}, key=_tag_order)],
    }


def _tag_order(tag: str) -> tuple[int, str]:
    return (TAGS.index(tag) if tag in TAGS else len(TAGS), tag)


def _models(routes: list[DescribedRoute]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorBody, "serialization"): None}
    for route in routes:
        if isinstance(route.operation.body, type):
            wanted[(route.operation.body, "validation")] = None
        for reply in route.operation.replies.values():
            if reply.body is not None:
                wanted[(reply.body, "serialization")] = None
    return list(wanted)


def _operation_ids(routes: list[DescribedRoute]) -> dict[DescribedRoute, str]:
    """The handler's name; where handlers share one (a route in two shapes, CORS preflights),
    the path tells them apart."""
    counts = Counter(r.handler_name for r in routes)
    ids = {}
    for route in routes:
        name = route.handler_name
        if counts[name] > 1:
            name += "_" + "_".join(re.findall(r"\w+", route.path.replace("{", "by_")))
        ids[route] = name
    return ids


def _operation(route: DescribedRoute, operation_id: str, refs: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    op = route.operation
    out: dict[str, Any] = {"operationId": operation_id, "summary": op.summary, "tags": [op.tag]}
    if route.description:
        out["description"] = route.description
    params = [{"name": name, "in": "path", "required": True, "description": PATH_PARAMS.get(name, ""),
               "schema": {"type": "string"}} for name in re.findall(r"\{(\w+)\}", route.path)]
    params += [{"name": p.name, "in": p.where, "required": p.required, "description": p.description,
                "schema": dict(p.schema)} for p in op.params]
    if params:
        out["parameters"] = params
    if op.body is not None:
        body = op.body if isinstance(op.body, type) else Reply("", media=op.body)
        out["requestBody"] = {"required": op.body_required, "content": _content(body, refs, "validation")}
    if op.auth:
        out["security"] = ([{}] if op.public_too else []) + [{scheme: []} for scheme in op.auth]
    responses: dict[str, Any] = {}
    for status, reply in op.replies.items():
        answer: dict[str, Any] = {"description": reply.description}
        content = _content(reply.body or reply, refs, "serialization")
        if content:
            answer["content"] = content
        if reply.headers:
            answer["headers"] = {name: {"description": what, "schema": {"type": "string"}}
                                 for name, what in reply.headers.items()}
        responses[str(status)] = answer
    for status, when in op.errors.items():
        responses[str(status)] = {"description": when, "content": _content(ErrorBody, refs, "serialization")}
    out["responses"] = responses
    return out


def _content(body: type[BaseModel] | Reply, refs: Mapping[Any, dict[str, Any]],
             mode: JsonSchemaMode) -> dict[str, Any]:
    """A JSON body of a model, or a body of the reply's media types (none for ())."""
    if isinstance(body, type):
        return {"application/json": {"schema": refs[(body, mode)]}}
    media = (body.media,) if isinstance(body.media, str) else body.media
    return {m: {"schema": dict(body.schema)} for m in media}
