"""The OpenAPI document: valid 3.1, every route of the router in it (and nothing else), answers
as it says, a client generated from it works, and the reference page renders."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import aiohttp
from aiohttp import web
import httpx  # what the generated client runs on
import jsonschema
from openapi_spec_validator import validate
import pytest

from conftest import ADMIN_KEY
from relay.http.openapi import Reply, described_routes, openapi_path, operation

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


async def fetch_document(relay) -> tuple[dict, aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as http:
        async with http.get(relay.base + "/api/openapi.json") as res:
            assert res.status == 200 and res.content_type == "application/json"
            return await res.json(), res


async def test_the_document_is_valid_openapi_3_1_public_and_cacheable(relay):
    document, res = await fetch_document(relay)  # no key sent
    validate(document)  # OpenAPI 3.1 (the validator picks it from "openapi")
    assert document["openapi"].startswith("3.1")
    assert "max-age" in res.headers["Cache-Control"] and res.headers["ETag"]
    status, _ = await relay.request("GET", "/api/openapi.json", headers={"If-None-Match": res.headers["ETag"]})
    assert status == 304


async def test_every_route_is_in_the_document_and_nothing_else(relay):
    document, _ = await fetch_document(relay)
    routed = {(route.method.lower(), openapi_path(route.resource.canonical))
              for route in relay.app.router.routes() if route.method != "HEAD"}
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops
                  if method in HTTP_METHODS}
    assert routed - documented == set(), "routes without an @operation"
    assert documented - routed == set(), "operations without a route"


def test_a_route_without_an_operation_is_noticed():
    @operation("Described", tag="t", replies={200: Reply("yes", media="text/plain")})
    async def described(request: web.Request) -> web.Response:
        return web.Response(text="yes")

    async def undescribed(request: web.Request) -> web.Response:
        return web.Response(text="no")

    app = web.Application()
    app.router.add_get("/described/{id}", described)
    app.router.add_post("/undescribed/{id:[0-9]+}", undescribed)
    routes, missing = described_routes(app.router)
    assert [(r.method, r.path) for r in routes] == [("GET", "/described/{id}")]
    assert missing == ["POST /undescribed/{id}"]


async def test_each_operation_says_who_may_call_and_how_it_fails(relay):
    document, _ = await fetch_document(relay)
    schemes = set(document["components"]["securitySchemes"])
    assert {"adminKey", "streamKey", "viewerToken", "viewerTokenQuery", "metricsKey"} <= schemes
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            assert op["summary"] and op["responses"], where
            for option in op.get("security", []):
                assert set(option) <= schemes, where
            for status, answer in op["responses"].items():
                if int(status) >= 400:
                    assert answer["content"]["application/json"]["schema"] == error, where
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                assert "422" in op["responses"] and "400" in op["responses"], where
            if "{show}" in path and method in ("get", "post", "delete"):  # a show looked up: 404 if none
                assert "404" in op["responses"], where
    create = document["paths"]["/api/shows"]["post"]
    assert create["security"] == [{"adminKey": []}] and set(create["responses"]) >= {"201", "401", "409", "422"}
    whip = document["paths"]["/whip/{show}"]["post"]
    assert "application/sdp" in whip["requestBody"]["content"]
    assert "Location" in whip["responses"]["201"]["headers"]
    assert "text/event-stream" in document["paths"]["/events/{show}/{room}"]["get"]["responses"]["200"]["content"]
    assert "text/html" in document["paths"]["/watch/{show}"]["get"]["responses"]["200"]["content"]
    assert document["paths"]["/metrics"]["get"]["security"] == [{"metricsKey": []}]


def check_answer(document: dict, method: str, path: str, status: int, body) -> None:
    """`body` is what the document says `method path` answers with `status`, and every field of
    it is documented."""
    content = document["paths"][path][method.lower()]["responses"][str(status)]["content"]
    schema = content["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(body)
    model = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    assert set(body) <= set(model["properties"]), (path, set(body) - set(model["properties"]))


async def test_answers_are_what_the_document_says(relay):
    document, _ = await fetch_document(relay)

    async def call(method: str, path: str, template: str, expect: int, body=None, headers=None):
        status, answer = await relay.request(method, path, json=body,
                                             headers=relay.admin if headers is None else headers)
        assert status == expect, answer
        check_answer(document, method, template, status, answer)
        return answer

    show = "/api/shows/{show}"
    await call("POST", "/api/shows", "/api/shows", 201, {"title": "Doc", "id": "doc"})
    await call("POST", "/api/shows/doc/mirrors", show + "/mirrors", 201, {"distributor": "d1", "name": "D1"})
    await call("GET", "/api/shows/doc", show, 200)
    await call("GET", "/api/shows", "/api/shows", 200)
    await call("GET", "/api/shows/doc/mirrors", show + "/mirrors", 200)
    await call("GET", "/api/shows/doc/stats", show + "/stats", 200)
    await call("GET", "/api/shows/doc/status", show + "/status", 200)
    await call("POST", "/api/shows/doc/stream-key", show + "/stream-key", 200, {"ttl_s": 600})
    await call("POST", "/api/shows/doc/products", show + "/products", 201,
               {"id": "bag", "title": "Bag", "price": "9.90", "rooms": {"d1": {"price": 8}}})
    await call("GET", "/api/shows/doc/products", show + "/products", 200)
    await call("GET", "/api/shows/doc/products?room=d1", show + "/products", 200, headers={})
    await call("POST", "/api/shows/doc/products/bag/pin", show + "/products/{product}/pin", 200)
    await call("POST", "/api/shows/doc/coupons", show + "/coupons", 201,
               {"id": "c", "title": "C", "quantity": 5, "duration_s": 60, "room_caps": {"d1": 2}})
    await call("POST", "/api/shows/doc/coupons/c/launch", show + "/coupons/{coupon}/launch", 200)
    viewer = await call("POST", "/api/shows/doc/viewers", show + "/viewers", 201, {"room": "d1"}, headers={})
    await call("POST", "/api/shows/doc/coupons/c/claim", show + "/coupons/{coupon}/claim", 200,
               headers={"Authorization": f"Bearer {viewer['token']}", "Idempotency-Key": "k1"})
    await call("GET", "/api/shows/doc/coupons", show + "/coupons", 200)
    await call("GET", "/healthz", "/healthz", 200, headers={})
    await call("POST", "/api/shows", "/api/shows", 422, {"title": ""})
    await call("POST", "/api/shows", "/api/shows", 401, {"title": "x"}, headers={})


async def test_a_bad_field_is_a_422_naming_it_and_strict_types_hold(relay):
    await relay.create_show("strict")
    for path, body, field in (
            ("/api/shows", {"title": "t", "replay_public": 1}, "replay_public"),
            ("/api/shows", {"title": "t", "stream_key_ttl_s": True}, "stream_key_ttl_s"),
            ("/api/shows", {"title": "t", "currency": "usd"}, "currency"),
            ("/api/shows/strict/coupons", {"title": "C", "quantity": True, "duration_s": 5}, "quantity"),
            ("/api/shows/strict/coupons", {"title": "C", "quantity": "5", "duration_s": 5}, "quantity"),
            ("/api/shows/strict/products", {"title": "P", "price": 1, "position": 1.5}, "position"),
            ("/api/shows/strict/products", {"title": "P", "price": 1, "rooms": {"hq": {"hidden": "yes"}}}, "hidden")):
        status, body = await relay.api("POST", path, body)
        assert status == 422 and body["error"] == "invalid_field" and field in body["message"], (path, body)
    status, body = await relay.api("PATCH", "/api/shows/strict/products/none", {"title": None})
    assert status == 422 and "'title'" in body["message"]


@pytest.fixture(scope="module")
def client_config(tmp_path_factory):
    """The generator's settings: a fixed package name; no formatter run (nothing to format for a test)."""
    path = tmp_path_factory.mktemp("client") / "config.json"
    path.write_text(json.dumps({"post_hooks": [], "package_name_override": "relay_api_client",
                                "project_name_override": "relay-api-client"}))
    return path


def test_a_client_generated_from_the_document_creates_a_show(server_process, tmp_path, client_config):
    server = server_process(tmp_path / "data")
    document = httpx.get(server.base + "/api/openapi.json").json()
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(document))
    out = tmp_path / "client"
    run = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec),
                          "--output-path", str(out), "--config", str(client_config)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    sys.path.insert(0, str(out))
    try:
        api = importlib.import_module("relay_api_client")
        create_show = importlib.import_module("relay_api_client.api.shows.create_show")
        get_show = importlib.import_module("relay_api_client.api.shows.get_show")
        models = importlib.import_module("relay_api_client.models")
        with api.AuthenticatedClient(base_url=server.base, token=ADMIN_KEY) as client:
            created = create_show.sync(client=client, body=models.NewShow(title="Made by a client", id="generated"))
            assert isinstance(created, models.ShowCreated), created
            assert created.id == "generated" and created.stream_key
            detail = get_show.sync(show="generated", client=client)
            assert isinstance(detail, models.ShowDetail) and detail.title == "Made by a client"
            refused = create_show.sync_detailed(client=api.Client(base_url=server.base), body=models.NewShow(title="x"))
            assert refused.status_code == 401 and refused.parsed.error == "unauthorized"
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "relay_api_client" or m.startswith("relay_api_client.")]:
            del sys.modules[name]
    listed = httpx.get(server.base + "/api/shows", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert [s["id"] for s in listed["shows"]] == ["generated"]


async def test_the_reference_page_lists_operations_without_scripts(relay):
    async with aiohttp.ClientSession() as http:
        async with http.get(relay.base + "/api/docs") as res:
            assert res.status == 200 and res.content_type == "text/html"
            page = await res.text()
            policy = res.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert "<script" not in page and " style=" not in page and "<style" not in page
    assert '<link rel="stylesheet" href="/static/style.css">' in page
    for text in ("/api/shows/{show}/coupons/{coupon}/claim", "Create a show", "/whip/{show}", "adminKey",
                 "Idempotency-Key", "invalid_field"):
        assert text in page, text
    # A body's fields and their rules' shape.
    assert re.search(r"<td>title</td><td>string, required</td>", page)
