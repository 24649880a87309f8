"""The package's import graph: no cycles, and every import points down the declared layer order.

The graph is read from the sources with :mod:`ast`, not by importing anything: every ``import`` and
``from ... import`` anywhere in a module counts, at module level, inside functions (the lazy imports
that keep start-up fast) and under ``if TYPE_CHECKING:``, relative imports resolved.
``from package import name`` is an edge to the submodule ``package.name`` when there is one, else to
the package itself. Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__`` in Python; those
implicit edges are not counted (an ``__init__`` that re-exports its submodules would otherwise put
every package into a cycle with itself), so a package's ``__init__`` is just one more module.

Layers, from the top (a module may import from its own layer's package and from any lower layer;
packages that share a layer are independent of each other):

=====  ==============================  ==============================================================
layer  packages                        what
=====  ==============================  ==============================================================
1      ``cli``                         the command line (thin: parses, calls, prints)
2      ``serve`` ``train`` ``bench``   the applications: web server, training/distillation, benchmarks
3      ``cddfuse``                     the package's front door (``__init__``: ``__version__``, lazy
                                       re-exports of ``fusion`` and ``models``)
4      ``fusion``                      the fusion pipeline: ``Fuser``, folders, video, sharding
5      ``engine`` ``align``            the CPU inference engine; registration of the two sources
6      ``models`` ``metrics`` ``data`` the networks and weights; the metrics (a pure library); samples
7      ``io``                          image, video and pair reading/writing, colour
8      ``options`` ``_fileutil``       option values; atomic files and paths; glibc malloc tuning
       ``_malloc``
9      ``errors``                      the exception types
=====  ==============================  ==============================================================
"""
from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import cddfuse

#: The layer order, top first (see the module docstring). A top-level package or module of ``cddfuse``
#: that is in no layer fails :func:`test_every_module_has_a_layer`.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("serve", "train", "bench"),
    ("cddfuse",),
    ("fusion",),
    ("engine", "align"),
    ("models", "metrics", "data"),
    ("io",),
    ("options", "_fileutil", "_malloc"),
    ("errors",),
)

#: Cycles tolerated for now: each entry is the exact set of modules of one strongly connected
#: component. None today; the test fails while a listed cycle no longer exists, so that an entry
#: cannot outlive its cycle.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def find_modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is a package __init__)}`` of every ``.py`` file under the package ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _statements(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every statement in ``body`` and the blocks nested in it (functions, classes, if/try/with/for/match);
    an import is always a statement, so expressions need not be visited."""
    for node in body:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, block, None)
            if isinstance(inner, list):
                yield from _statements(inner)


def import_graph(root: Path) -> dict[str, list[Edge]]:
    """Every import between the modules of the package ``root`` (see the module docstring), by source module."""
    modules = find_modules(root)
    top = root.name

    def known(name: str) -> str | None:  # the module itself or its closest package in this tree
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, list[Edge]] = {}
    for name, (path, is_pkg) in modules.items():
        package = name if is_pkg else name.rpartition(".")[0]
        edges = graph.setdefault(name, [])
        for node in _statements(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    if node.level - 1 >= len(base):
                        raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                           for alias in node.names]
            for target in targets:
                if target != top and not target.startswith(top + "."):
                    continue
                resolved = known(target)
                edge = Edge(name, resolved, path, node.lineno) if resolved is not None else None
                if edge is not None and resolved != name and edge not in edges:
                    edges.append(edge)
    return graph


def cycles(graph: dict[str, list[Edge]]) -> list[tuple[list[Edge], frozenset[str]]]:
    """One cycle (as its edges) through each strongly connected component of more than one module,
    with the modules of that component."""
    succ = {m: sorted({e.target for e in es}) for m, es in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package has ~100 modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in components:
        start = min(comp)
        prev: dict[str, Edge] = {}
        queue = [start]
        while queue and start not in prev:  # breadth-first, inside the component, back to start
            v = queue.pop(0)
            for e in sorted(graph[v], key=lambda e: (e.target, e.line)):
                if e.target in comp and e.target not in prev:
                    prev[e.target] = e
                    queue.append(e.target)
        path = [prev[start]]
        while path[0].source != start:
            path.insert(0, prev[path[0].source])
        out.append((path, frozenset(comp)))
    return out


def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> tuple[int, str] | None:
    """``(layer index, top-level part)`` of a module (``cddfuse.fusion.fuser`` -> the layer of ``fusion``)."""
    parts = module.split(".")
    part = parts[1] if len(parts) > 1 else parts[0]
    for i, names in enumerate(layers):
        if part in names:
            return i, part
    return None


def layer_violations(graph: dict[str, list[Edge]], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Imports that point up the layer order, or sideways into another package of the same layer."""
    out = []
    for edges in graph.values():
        for e in edges:
            src, dst = layer_of(e.source, layers), layer_of(e.target, layers)
            if src is None or dst is None or src[1] == dst[1]:
                continue
            if dst[0] < src[0]:
                out.append(f"{e.where()}: {e.source} (layer {src[1]}) imports {e.target} from the higher "
                           f"layer {dst[1]}")
            elif dst[0] == src[0]:
                out.append(f"{e.where()}: {e.source} imports {e.target}, but {src[1]} and {dst[1]} share a "
                           "layer and must stay independent")
    return out


def describe(cycle: list[Edge], component: frozenset[str] = frozenset()) -> str:
    """``a -> b -> a`` with where each import is; ``component``: all the modules of its strongly
    connected component (every one of them is on some cycle with the others)."""
    text = " -> ".join(e.source for e in cycle) + f" -> {cycle[0].source}: " + \
        ", ".join(f"{e.source} imports {e.target} at {e.where()}" for e in cycle)
    more = sorted(component - {e.source for e in cycle})
    return text + (f"; on other cycles with them: {', '.join(more)}" if more else "")


ROOT = Path(cddfuse.__file__).resolve().parent


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Edge]]:
    return import_graph(ROOT)


def test_no_import_cycles(graph: dict[str, list[Edge]]) -> None:
    unknown = [(cycle, comp) for cycle, comp in cycles(graph) if comp not in KNOWN_CYCLES]
    assert not unknown, "import cycles (break them; see the layer order in tests/test_layers.py):\n" + \
        "\n".join(describe(cycle, comp) for cycle, comp in unknown)


def test_known_cycles_still_exist(graph: dict[str, list[Edge]]) -> None:
    found = {comp for _, comp in cycles(graph)}
    gone = [sorted(k) for k in KNOWN_CYCLES if k not in found]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES in tests/test_layers.py: {gone}"


def test_imports_go_down_the_layers(graph: dict[str, list[Edge]]) -> None:
    bad = layer_violations(graph)
    assert not bad, "imports against the layer order (tests/test_layers.py):\n" + "\n".join(bad)


def test_every_module_has_a_layer(graph: dict[str, list[Edge]]) -> None:
    missing = sorted(m for m in graph if layer_of(m) is None)
    assert not missing, f"modules in no layer (add their package to LAYERS in tests/test_layers.py): {missing}"
    declared = [name for names in LAYERS for name in names]
    assert len(declared) == len(set(declared)), "a package is in two layers"


def test_the_graph_sees_every_kind_of_import(graph: dict[str, list[Edge]]) -> None:
    """Known edges of the real package, one per kind of import statement."""
    targets = {m: {e.target for e in es} for m, es in graph.items()}
    assert "cddfuse.fusion.fuser" in targets["cddfuse.fusion"]  # from .fuser import ... (in an __init__)
    assert "cddfuse.models" in targets["cddfuse"]  # under TYPE_CHECKING
    assert "cddfuse.models.weights" in targets["cddfuse.train.checkpoint"]  # inside a function, two dots


# ------------------------------------------------------------------ the checker on a made-up package
def _write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "pkg"


def test_checker_finds_function_level_and_type_checking_cycles(tmp_path: Path) -> None:
    pkg = _write_package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .b import B
        """,
        "low/b.py": """
            def f():
                from pkg.low import a
                import os
        """,
        "low/c.py": "from . import b\n",
    })
    graph = import_graph(pkg)
    found = cycles(graph)
    assert len(found) == 1
    cycle, comp = found[0]
    assert comp == {"pkg.low.a", "pkg.low.b"}
    assert {e.where() for e in cycle} == {f"{pkg / 'low' / 'a.py'}:4", f"{pkg / 'low' / 'b.py'}:3"}
    assert describe(cycle, comp).startswith("pkg.low.a -> pkg.low.b -> pkg.low.a: ")


def test_checker_reports_upward_and_sideways_imports_with_their_line(tmp_path: Path) -> None:
    pkg = _write_package(tmp_path, {
        "__init__.py": "",
        "app/__init__.py": "from ..core import thing\n",
        "core/__init__.py": "thing = 1\n",
        "core/impl.py": "import os\n\ndef f():\n    from ..app import x\n",
        "util.py": "from .core.impl import f\n",
        "other.py": "from .core import thing\n",
    })
    layers = (("app",), ("core", "other"), ("util",))
    bad = layer_violations(import_graph(pkg), layers)
    assert len(bad) == 3, bad
    assert any(b.startswith(f"{pkg / 'core' / 'impl.py'}:4: pkg.core.impl (layer core) imports pkg.app") for b in bad)
    assert any(b.startswith(f"{pkg / 'util.py'}:1: pkg.util (layer util) imports pkg.core.impl") for b in bad)
    assert any(b.startswith(f"{pkg / 'other.py'}:1: pkg.other imports pkg.core, but other and core share")
               for b in bad)
    assert cycles(import_graph(pkg)) == []  # pkg.app -> pkg.core (its __init__) -> nothing
