"""The proxy package's architecture, checked: layers, no import cycles, no aiohttp in routing.

Every import counts, including those under `if TYPE_CHECKING:` and inside
functions: a cycle through annotations is still a cycle a reader must untangle.
docs/architecture.md describes the layers this test enforces.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

PACKAGE: Final = Path(__file__).resolve().parents[2] / "proxy"

# Each part may import only the parts of a lower rank (and itself); webpath and
# fastlane share a rank: the two request paths never import each other.
LAYERS: Final = {
    "errors": 0,
    "routing": 1,
    "upstream": 2,
    "telemetry": 3,
    "shadow": 4,
    "core": 5,
    "webpath": 6,
    "fastlane": 6,
    "serving": 7,
    "__main__": 8,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Final = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every module of `proxy` and every top-level package `path` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            # `from proxy.routing import model` imports the module proxy.routing.model.
            found.update(
                f"{node.module}.{a.name}"
                for a in node.names
                if f"{node.module}.{a.name}" in MODULES
            )
    return found


GRAPH: Final = {
    name: {m for m in _imports(path) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycle_from(start: str) -> list[str] | None:
    """A shortest import path from `start` back to itself, or None."""
    paths = {nxt: [start, nxt] for nxt in GRAPH[start]}
    frontier = list(paths)
    while frontier:
        following = []
        for module in frontier:
            if module == start:
                return paths[module]
            for nxt in GRAPH[module]:
                if nxt not in paths:
                    paths[nxt] = [*paths[module], nxt]
                    following.append(nxt)
        frontier = following
    return None


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_part(m) for m in MODULES} - {""}
    assert parts == set(LAYERS), "a new subpackage needs its place in LAYERS and in the docs"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_cycle(module: str) -> None:
    cycle = _cycle_from(module)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _part(m)))
def test_imports_respect_the_layers(module: str) -> None:
    rank = LAYERS[_part(module)]
    upward = sorted(
        imported
        for imported in GRAPH[module]
        if _part(imported) != _part(module) and _part(imported) and LAYERS[_part(imported)] >= rank
    )
    assert upward == [], f"{module} imports a part at its own level or above: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _part(m) == "routing"))
def test_routing_does_not_import_aiohttp(module: str) -> None:
    imported = {name.split(".")[0] for name in _imports(MODULES[module])}
    assert "aiohttp" not in imported


def test_every_module_imports_on_its_own() -> None:
    # Each module first in a fresh interpreter state: a cycle hidden by import
    # order (a partially initialised module) fails here.
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'proxy' or m.startswith('proxy.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *sorted(MODULES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
