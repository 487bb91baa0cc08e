"""The layers of docs/architecture.md, enforced: who may import whom, which libraries each layer
may use, and no import cycle anywhere (imports inside functions count too).

    server ──► scheduler ──► engines ──► common        telemetry ──► scheduler, engines, common
       └──► proto, telemetry                          loadtest ──► proto (a client, nothing else)
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

FERRY = Path(__file__).resolve().parents[2] / "ferry"

MAY_IMPORT: dict[str, set[str]] = {
    "common": set(),
    "engines": {"common"},
    "scheduler": {"engines", "common"},
    "telemetry": {"scheduler", "engines", "common"},
    "builder": {"common", "proto"},
    "server": {"scheduler", "engines", "common", "proto", "telemetry", "builder"},
    "proto": set(),
    "loadtest": {"proto"},
    "__main__": {"server"},
}
"""Ferry packages each layer may import (besides itself)."""

MAY_NOT_USE: dict[str, set[str]] = {
    "common": {"grpc", "google", "onnxruntime", "cuda", "opentelemetry", "prometheus_client",
               "aiohttp"},
    "engines": {"grpc", "google", "opentelemetry", "prometheus_client", "aiohttp"},
    "scheduler": {"grpc", "google", "onnxruntime", "cuda", "opentelemetry", "prometheus_client",
                  "aiohttp"},
    "telemetry": {"grpc", "google", "aiohttp"},
    "builder": {"grpc", "opentelemetry", "prometheus_client", "aiohttp", "uvloop"},
}
"""Libraries a layer must not touch: the scheduler knows no gRPC, protobuf or backend library;
engines know no wire protocol; errors and datatypes are plain Python; the build tool serves
nothing."""

SCHEDULER_SEES_OF_ENGINES = {"ferry.engines.base"}
"""The scheduler knows backends only through the contract."""


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, _, files in os.walk(FERRY, followlinks=True):
        for file in files:
            if not file.endswith(".py") or "_pb2" in file:
                continue
            parts = list((Path(folder) / file).relative_to(FERRY.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = Path(folder) / file
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _ferry_module(name: str) -> str | None:
    """The Ferry module an imported name lives in (a name may be a module's attribute)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES and name != "ferry" else None


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_ferry_module(n) for n in _imports(path) if n.startswith("ferry.")}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


GRAPH = _graph()


def test_the_tree_is_found() -> None:
    assert {"ferry.scheduler.batcher", "ferry.server.servicer", "ferry.engines.base"} <= set(
        MODULES
    )
    assert set(map(_layer, MODULES)) - {"ferry"} <= set(MAY_IMPORT)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_the_layers_below_it(module: str) -> None:
    layer = _layer(module)
    if module == "ferry":
        return
    allowed = MAY_IMPORT[layer] | {layer}
    wrong = sorted(t for t in GRAPH[module] if _layer(t) not in allowed)
    assert not wrong, f"{module} ({layer}) may not import {wrong}"
    if layer == "scheduler":
        engines = {t for t in GRAPH[module] if _layer(t) == "engines"}
        beyond = sorted(engines - SCHEDULER_SEES_OF_ENGINES)
        assert not beyond, f"{module}: the scheduler sees only engines.base, not {beyond}"
    banned = MAY_NOT_USE.get(layer, set())
    used = {n.split(".")[0] for n in _imports(MODULES[module]) if not n.startswith("ferry")}
    assert not used & banned, f"{module} ({layer}) may not use {sorted(used & banned)}"


def test_no_import_cycle_anywhere() -> None:
    """Tarjan's strongly connected components over every import, lazy ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_only_the_http_front_end_touches_aiohttp() -> None:
    users = {
        name
        for name, path in MODULES.items()
        if any(i == "aiohttp" or i.startswith("aiohttp.") for i in _imports(path))
    }
    assert users and all(name.startswith("ferry.server.http.") for name in users), users
