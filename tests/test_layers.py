"""The package's layers import only downward, and no module imports itself round a circle.

Every ``import`` counts, the lazy ones inside functions too: a lazy import still ties two
modules together. The allowed edges are the design (docs/design.md); a new edge is a design
change, made here on purpose."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dahash_index"

CORE = {"__init__", "errors", "registry", "files", "runtime", "arrow_arrays", "lru", "columns"}
# layer -> the layers it may import (besides itself and the core modules).
ALLOWED = {
    "core": set(),
    "indexes": set(),
    "model": set(),
    "scenes": set(),
    "sources": {"scenes"},
    "store": {"indexes", "model"},
    "build": {"model", "scenes", "sources", "store", "indexes"},
    "query": {"model", "scenes", "sources", "store", "indexes"},
    "serve": {"query", "model", "scenes", "sources", "store"},
    "train": {"model", "scenes", "indexes"},
    "cli": {"build", "query", "serve", "store", "model", "scenes", "sources", "indexes",
            "train"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    first = module.split(".")[1] if "." in module else "__init__"
    return "core" if first in CORE else first


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (resolved to the longest known name)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != name and not name.startswith(n + "."):
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p, set(files)) for m, p in files.items()}


def test_every_module_belongs_to_a_layer():
    unknown = sorted(m for m in graph() if layer_of(m) not in ALLOWED)
    assert not unknown, f"modules outside every layer (add them to ALLOWED): {unknown}"


def test_layers_import_only_downward():
    wrong = []
    for module, imported in graph().items():
        layer = layer_of(module)
        for other in imported:
            target = layer_of(other)
            if target not in {layer, "core"} | ALLOWED[layer]:
                wrong.append(f"{module} ({layer}) imports {other} ({target})")
    assert not wrong, "\n".join(sorted(wrong))


def test_core_modules_import_no_layer():
    g = graph()
    wrong = [f"{m} imports {o}" for m in g if layer_of(m) == "core" for o in g[m]
             if layer_of(o) != "core"]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
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
                circles.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)
