"""The layers show in the imports: no cycle (not even a type-only one), the media core never
reaches up into HTTP, the services or the stores, and the product never reaches the test kit."""

from __future__ import annotations

import ast
from pathlib import Path

from relay_testkit.process import REPO

PACKAGE = REPO / "relay"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module `name` imports, of the package or outside it, at any depth of the file
    (inside functions and `if TYPE_CHECKING:` too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if base.startswith("relay"):
                    found.add(full if full in known else base)
                else:  # `from aiohttp import web` is aiohttp.web
                    found.update((base, full))
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle_in_the_package():
    edges = {m: {i for i in deps if i.startswith("relay")} for m, deps in graph().items()}
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(edges.get(module, ())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


FORBIDDEN_BELOW_HTTP = ("aiohttp.web", "aiohttp", "relay.http", "relay.app", "relay.cli")
SERVICES_AND_STORES = ("relay.catalog", "relay.live_registry", "relay.show_removal", "relay.show_store",
                       "relay.redis_show_store", "relay.redis_client",
                       "relay.sqlite_thread", "relay.commerce", "relay.replay", "relay.live", "relay.webhooks")
MEDIA_CORE_MAY_NOT = FORBIDDEN_BELOW_HTTP + SERVICES_AND_STORES + ("redis", "sqlite3")


def _offending(module: str, deps: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(d for d in deps if any(d == f or d.startswith(f + ".") for f in forbidden))


def test_the_media_core_imports_nothing_above_it():
    found = {m: _offending(m, deps, MEDIA_CORE_MAY_NOT) for m, deps in graph().items()
             if m.startswith(("relay.fanout", "relay.ingest"))}
    assert found and not any(found.values()), {m: bad for m, bad in found.items() if bad}


def test_restreaming_is_driven_from_above_and_reaches_no_service():
    """relay/restream is given the show's frames by the live registry and its targets by the
    API: it imports no HTTP, no registry or catalog, no store (it declares the store it uses)."""
    forbidden = FORBIDDEN_BELOW_HTTP + SERVICES_AND_STORES
    found = {m: _offending(m, deps, forbidden) for m, deps in graph().items() if m.startswith("relay.restream")}
    assert found and not any(found.values()), {m: bad for m, bad in found.items() if bad}


def test_only_the_http_front_ends_and_the_wiring_speak_http():
    allowed = ("relay.http", "relay.app", "relay.cli")
    found = {m: _offending(m, deps, ("aiohttp.web", "relay.http")) for m, deps in graph().items()
             if not m.startswith(allowed)}
    assert not any(found.values()), {m: bad for m, bad in found.items() if bad}


def test_only_the_http_layer_validates_bodies_with_pydantic():
    found = {m: _offending(m, deps, ("pydantic", "pydantic_core")) for m, deps in graph().items()
             if not m.startswith("relay.http")}
    assert not any(found.values()), {m: bad for m, bad in found.items() if bad}


TEST_AND_BENCH_ONLY = ("relay_testkit", "numpy", "hypothesis", "psutil")


def test_the_product_imports_no_test_or_bench_support():
    """relay/ needs none of the test kit or the test and bench extras (pip install . has none)."""
    found = {m: _offending(m, deps, TEST_AND_BENCH_ONLY) for m, deps in graph().items()}
    assert found and not any(found.values()), {m: bad for m, bad in found.items() if bad}
