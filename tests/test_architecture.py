"""The shape of the code: no module of src/ imports another that imports it back (issue 10).

The graph is read from the source with `ast`, without importing anything: an edge A -> B for
every `import B` / `from B import x` in A, at module level or inside a function (both run
sooner or later), except under `if TYPE_CHECKING:` (never run). `from pkg import name` where
`name` is a submodule is an edge to that submodule; importing a package is an edge to its
`__init__`. Only edges between modules under src/gdlab and src/hydra_plugins are kept.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOTS = ("gdlab", "hydra_plugins")


def find_modules() -> dict[str, Path]:
    """Every module under the roots, by dotted name (a package by its own name)."""
    modules: dict[str, Path] = {}
    for root in ROOTS:
        for path in sorted((SRC / root).rglob("*.py")):
            parts = path.relative_to(SRC).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them but those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))


def known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` or its longest prefix that is one of our modules (`gdlab.x.attr` -> `gdlab.x`)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(name: str, modules: dict[str, Path]) -> dict[str, int]:
    """The modules `name` imports, each with the line of its first import."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: dict[str, int] = {}
    for node in import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in modules else base)
        for target in targets:
            resolved = known(target, modules)
            if resolved is not None and resolved != name:
                edges.setdefault(resolved, node.lineno)
    return edges


def import_graph() -> dict[str, dict[str, int]]:
    modules = find_modules()
    return {name: imports_of(name, modules) for name in modules}


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (`[a, b, ..., a]`) for each group of modules that import each other
    (each strongly connected component of more than one module, Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [cycle_in(graph, set(c), c[0]) for c in sorted(components)]


def cycle_in(graph: dict[str, dict[str, int]], members: set[str], start: str) -> list[str]:
    """A shortest path from `start` back to itself inside one component (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt not in members:
                    continue
                if nxt == start:  # back home: walk the parents from `node` to `start`
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in no cycle")  # pragma: no cover


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "gdlab.sweeps" in graph and "gdlab.sweeps.summary" in graph
    assert any(name.startswith("hydra_plugins.") for name in graph)
    # function-level imports count; `from pkg import submodule` is an edge to the submodule
    assert "gdlab.sweeps.naming" in graph["gdlab.config"]
    assert "gdlab.sweeps.summary" in graph["gdlab.sweeps.callback"]
    assert "gdlab.sweeps" not in graph["gdlab.sweeps.callback"]
    # under TYPE_CHECKING only: not an edge
    assert "gdlab.events" not in graph["gdlab.sweeps.failures"]


def test_each_kind_of_import_is_an_edge(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "from pkg.sub import thing\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/a.py": (
            "from typing import TYPE_CHECKING\n"
            "import pkg.b\n"
            "from . import c\n"  # a sibling module: an edge to it
            "from .. import d\n"  # relative, two levels
            "from pkg import sub\n"  # a subpackage: its __init__
            "if TYPE_CHECKING:\n"
            "    from pkg import e\n"  # never runs: no edge
            "else:\n"
            "    from pkg.e import x\n"
            "def f():\n"
            "    from pkg import name_in_init\n"  # a name, not a module: the package
        ),
        "pkg/b.py": "",
        "pkg/sub/c.py": "",
        "pkg/d.py": "",
        "pkg/e.py": "import os\n",
    }
    modules = {}
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        parts = Path(relative).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    assert imports_of("pkg.sub.a", modules) == {
        "pkg.b": 2,
        "pkg.sub.c": 3,
        "pkg.d": 4,
        "pkg.sub": 5,
        "pkg.e": 9,
        "pkg": 11,
    }
    assert imports_of("pkg", modules) == {"pkg.sub": 1}
    assert imports_of("pkg.e", modules) == {}


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(graph, ["a", "b", "c", "a"]) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(graph, c) for c in cycles)


def test_importing_the_sweep_package_stays_light() -> None:
    """Every run imports gdlab.sweeps (Hydra instantiates its callback): no torch, no matplotlib."""
    code = (
        "import sys\n"
        "import gdlab.sweeps\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'tensorboard') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "[]"
