"""The import graph, read with ``ast``: no cycles, and no arrow from a lower layer to a higher one.

The layer table is ``docs/ARCHITECTURE.md``'s (between its ``layers`` markers); every ``import``
counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# folder -> import name (pyproject's package-dir)
ROOTS = {
    "edge_runtime": "edge_runtime",
    "export": "edge_runtime.export",
    "bench": "edge_runtime.bench",
    "firmware_bridge": "firmware_bridge",
}
DEVICE_FORBIDDEN = ("torch", "edge_runtime.bench", "edge_runtime.export", "matplotlib", "sklearn")


def layer_table() -> dict[str, int]:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("<!-- layers: begin -->")[1].split("<!-- layers: end -->")[0]
    table: dict[str, int] = {}
    for row in block.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            for name in re.findall(r"`([\w.]+)`", cells[2]):
                table[name] = int(cells[0])
    return table


def modules() -> dict[str, Path]:
    found = {}
    for folder, name in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([name, *parts])] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every module (of ``known``, or a foreign top-level name) that ``path`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # ``from package import submodule`` imports the submodule
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            out.add(target)
    out.discard(name)
    return out


def layer_of(module: str, table: dict[str, int]) -> int:
    best = max((n for n in table if module == n or module.startswith(n + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer of docs/ARCHITECTURE.md's table: add it")
    return table[best]


GRAPH_KNOWN = modules()
GRAPH = {name: imports(path, name, GRAPH_KNOWN) for name, path in GRAPH_KNOWN.items()}


def test_every_module_has_a_layer() -> None:
    table = layer_table()
    assert table, "docs/ARCHITECTURE.md lost its layer table"
    for module in GRAPH:
        layer_of(module, table)


def test_no_import_points_up() -> None:
    table = layer_table()
    upward = [
        f"{a} (layer {layer_of(a, table)}) imports {b} (layer {layer_of(b, table)})"
        for a, targets in GRAPH.items()
        for b in sorted(targets)
        if b in GRAPH and layer_of(b, table) > layer_of(a, table)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over our modules
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in GRAPH:
                continue
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
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "module",
    sorted(m for m in GRAPH if not m.startswith(("edge_runtime.bench", "edge_runtime.export"))),
)
def test_device_side_never_imports_host_code(module: str) -> None:
    bad = sorted(
        t
        for t in GRAPH[module]
        if t.startswith(DEVICE_FORBIDDEN)
        and (t in DEVICE_FORBIDDEN or t.startswith(tuple(f + "." for f in DEVICE_FORBIDDEN)))
    )
    assert not bad, f"{module} imports {bad}: the device side needs none of it"
