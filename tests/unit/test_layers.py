"""One-way layers: every module imports only from its own layer or the layers below, and no import cycles.

Every import statement counts, wherever it is: module level, inside functions, under ``TYPE_CHECKING``.
The layer map here is the one in the README's Layout section; a new module must be placed in it.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("trtq", "calibrators")

# Bottom to top. A pattern ending in ".*" covers a package's submodules (the package itself is listed apart).
LAYERS: dict[str, tuple[str, ...]] = {
    "base": (
        "trtq", "trtq.errors", "trtq.fileio", "trtq.precision", "trtq.tasks", "trtq.onnxgraph", "trtq.ort", "trtq.cpuisa",
        "trtq.headpolicy", "trtq.modelinfo", "trtq.images", "trtq.postprocess", "trtq.device", "trtq.machine",
        "trtq.engine_meta", "trtq.trt", "trtq.trt.compat", "trtq.trt.session",
    ),
    "calibrators": ("calibrators", "calibrators.*"),
    "pipeline": (
        "trtq.export", "trtq.zoo", "trtq.qdq", "trtq.qat", "trtq.qat.*", "trtq.qdqcheck", "trtq.amax", "trtq.quantize_options", "trtq.quantize", "trtq.sensitivity",
        "trtq.agreement", "trtq.fidelity", "trtq.reference", "trtq.verify", "trtq.evaluate", "trtq.cpu_target",
        "trtq.trt.options", "trtq.trt.int8", "trtq.trt.network", "trtq.trt.builder", "trtq.trt.inspect",
        "trtq.deploy", "trtq.deploy.*",
    ),
    "runtime": ("trtq.runtime", "trtq.runtime.*", "trtq.draw"),
    "bench": ("trtq.bench", "trtq.bench.*"),
    "commands": ("trtq.cli", "trtq.__main__", "trtq.demo", "trtq.commands", "trtq.commands.*"),
}


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` for every ``.py`` file under the packages."""
    found: dict[str, tuple[Path, bool]] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts.pop()
            found[".".join(parts)] = (path, is_pkg)
    return found


def _owner(name: str, modules: Mapping[str, object]) -> str | None:
    """The longest known module that ``name`` is or lies in (an attribute import names its module)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(modules: Mapping[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Edges module -> imported project module, from every import statement anywhere in the file."""
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                names = [f"{module}.{alias.name}" for alias in node.names]
            for imported in names:
                owner = _owner(imported, modules)
                if owner is not None and owner != name:
                    targets.add(owner)
        graph[name] = targets
    return graph


def layer_of(module: str, layers: Mapping[str, Iterable[str]]) -> int | None:
    for index, patterns in enumerate(layers.values()):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return index
    return None


def upward_imports(graph: Mapping[str, set[str]], layers: Mapping[str, Iterable[str]]) -> list[str]:
    names = list(layers)
    found = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module, layers)
        for target in sorted(targets):
            there = layer_of(target, layers)
            if here is not None and there is not None and there > here:
                found.append(f"{module} ({names[here]}) imports {target} ({names[there]})")
    return found


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(find_modules(REPO, PACKAGES))


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    missing = sorted(m for m in graph if layer_of(m, LAYERS) is None)
    assert not missing, f"place these modules in a layer (tests/unit/test_layers.py and the README): {missing}"


def test_no_upward_import(graph: dict[str, set[str]]) -> None:
    assert upward_imports(graph, LAYERS) == []


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_calibrators_use_only_base_modules(graph: dict[str, set[str]]) -> None:
    base = layer_of("trtq.errors", LAYERS)
    used = {t for m, ts in graph.items() if m.startswith("calibrators") for t in ts if t.startswith("trtq")}
    assert used and all(layer_of(t, LAYERS) == base for t in used), sorted(used)


def test_layer_map_matches_the_readme() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout"):]
    listed = [p for patterns in LAYERS.values() for p in patterns]
    missing = [p for p in listed if f"`{p}`" not in section]
    assert not missing, f"README's Layout section does not name {missing}"


def test_checker_finds_upward_imports_and_cycles(tmp_path: Path) -> None:
    """The checks themselves: a function-level upward import, a TYPE_CHECKING cycle and a relative import."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from pkg.high import g\n    return g\n")
    (pkg / "high.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .mid import h\n")
    (pkg / "mid.py").write_text("from pkg import high\nimport os\n")
    g = import_graph(find_modules(tmp_path, ["pkg"]))
    assert g["pkg.low"] == {"pkg.high"} and g["pkg.high"] == {"pkg.mid"} and g["pkg.mid"] == {"pkg.high"}
    layers = {"low": ("pkg", "pkg.low"), "high": ("pkg.mid", "pkg.high")}
    assert upward_imports(g, layers) == ["pkg.low (low) imports pkg.high (high)"]
    assert cycles(g) == [["pkg.high", "pkg.mid"]]
