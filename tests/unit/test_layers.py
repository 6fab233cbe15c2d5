"""The layers of lab/ (docs/lab.md, DESIGN.md): each module imports only from its own layer or
the ones below it, and no modules import each other round in a circle. Imports inside functions
count too (they hold a cycle together just as well). A known violation is listed here with why it
is still there; the test fails on a new one, and on a listed one that is gone (the list stays true).
"""

from __future__ import annotations

import ast
from pathlib import Path

from lab import __file__ as lab_init

LAB = Path(lab_init).parent
# Lower number = lower layer. The package itself (lab/__init__.py, settings, cache) is layer 0.
LAYERS = {"lab.kernel": 1, "lab.vm": 2, "lab.matrix": 2, "lab.bpf": 3, "lab.api": 4, "lab.per_kernel": 4,
          "lab.bench": 5, "lab.conformance": 5, "lab.scenario": 5,
          "lab.pytest_plugin": 6, "lab.pytest_xdist": 6, "lab.pytest_events": 6, "lab.cli": 7}
KNOWN_CYCLES: set[frozenset[str]] = set()  # none left: keep it so


def module_names() -> dict[str, Path]:
    names = {}
    for path in LAB.rglob("*.py"):
        parts = path.relative_to(LAB.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "lab"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "lab":
                continue
            for alias in node.names:  # `from lab.bpf import policy` imports the module lab.bpf.policy
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {imported for imported in found if imported in known and imported != name}


def layer(name: str) -> int:
    best = max((prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")),
               key=len, default=None)
    return LAYERS[best] if best else 0


def graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_no_module_imports_from_a_layer_above_it():
    upward = sorted(f"{name} (layer {layer(name)}) imports {imported} (layer {layer(imported)})"
                    for name, imported_names in graph().items() for imported in imported_names
                    if layer(imported) > layer(name))
    assert not upward, "imports that reach up a layer:\n" + "\n".join(upward)


def test_no_import_cycles_but_the_known_ones():
    found = set(cycles(graph()))
    assert found - KNOWN_CYCLES == set(), f"new import cycles: {found - KNOWN_CYCLES}"
    assert KNOWN_CYCLES - found == set(), f"gone, take them off KNOWN_CYCLES: {KNOWN_CYCLES - found}"


def test_the_walk_sees_imports_inside_functions_and_relative_ones():
    edges = graph()
    assert "lab.bpf.policy" in edges["lab.bpf.redirect"]           # `from lab.bpf import policy` in a function
    assert "lab.vm.staging" in edges["lab.scenario.runner"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert layer("lab.cli.suite") > layer("lab.scenario.suite") > layer("lab.api") > layer("lab.bpf.redirect")
