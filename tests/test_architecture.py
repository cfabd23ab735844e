"""The package's rooms and the doors between them, read from the source with ``ast``
(nothing is imported, so this is fast and sees imports that never run in a test).

Every ``import`` statement counts, wherever it stands: at module level, inside a
function (the lazy imports that keep torch out of napari's start-up) and inside
``if TYPE_CHECKING:`` blocks. A function-level import is a door all the same (it is how a
cycle hides), and a ``TYPE_CHECKING`` import is what a type checker and a reader follow,
so a cycle through one is a tangle too; counting them all keeps the rule simple.

A module that a name moved out of keeps it importable for outside code through a lazy
module ``__getattr__`` that reads the module's ``_MOVED`` dict (name: the module it lives in
now). Such a door is not an ``import`` statement and is not an edge of the graph: no module
of the package may go through one (:func:`test_package_modules_use_no_door`), so the doors
never run in the package's own code, and they close no cycle.

Rules:

* no import cycle between modules of ``napari_unet``;
* the core (every module outside ``napari_unet._widgets``) imports neither Qt, napari,
  magicgui, superqt nor the widgets. napari's entry points (``napari.yaml``) are the
  widget classes, which live in ``_widgets``, and ``_sample_data``, which returns plain
  arrays and is core; so no core module is exempt (:data:`EXEMPT` is empty, and the test
  checks that the manifest still points only at ``_widgets`` or at Qt-free modules).

Run it as a script to print the module graph, one room a line, lowest first::

    python tests/test_architecture.py            # each module and what it imports
    python tests/test_architecture.py --layers   # modules grouped by height above the leaves
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = "napari_unet"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE
GUI_PACKAGES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt")
WIDGETS = f"{PACKAGE}._widgets"
#: core modules allowed to import the GUI, with why (none: see the module docs)
EXEMPT: dict[str, str] = {}
#: numpy-only rooms: labels, targets and weights, post-processing, scores, resizing,
#: synthetic data... No import of theirs, even lazy, may reach torch (so they run, and are
#: tested, without it, and a worker computing weight maps never loads it)
TORCH_FREE = (
    "_files", "_morphology", "_progress", "_sample_data", "_two_nearest", "_version", "annotate", "baseline",
    "data", "image_checks", "metrics", "modes", "normalize", "postprocess", "resize", "synthetic", "synthetic_3d",
    "synthetic_tissue", "targets", "weights",
)


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules an ``from ... import ...`` names (``from . import x`` names ``x`` when it is a module)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    return subs if subs and len(subs) == len(node.names) else [target] + subs


def imports(src: Path = SRC) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` for every module under ``src``,
    with every import (module level, function level, ``TYPE_CHECKING``)."""
    files = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(node, mod, path.name == "__init__.py", known)
            else:
                continue
            for t in targets:
                edges.setdefault(t, node.lineno)
        graph[mod] = edges
    return graph


def doors(src: Path = SRC) -> dict[str, dict[str, str]]:
    """``{module: {moved name: module it lives in now}}`` from the modules' ``_MOVED`` dicts."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(src.rglob("*.py")):
        mod = module_name(path, src)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_MOVED" for t in node.targets):
                base = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
                found[mod] = {k: f"{base}.{v}" for k, v in ast.literal_eval(node.value).items()}
    return found


def defined_names(module: str, src: Path = SRC) -> set[str]:
    """Names a module defines or imports at its top level."""
    rel = Path(*module.split(".")[1:])
    path = src / rel / "__init__.py" if (src / rel).is_dir() else src / rel.with_suffix(".py")
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def door_users(src: Path = SRC) -> list[str]:
    """``module:line imports name from old_home`` for each package module that goes through a door."""
    moved = doors(src)
    files = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    bad = []
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                home = _resolve(node, mod, path.name == "__init__.py", set(files))[0]
                for a in node.names:
                    if a.name in moved.get(home, {}):
                        bad.append(f"{mod}:{node.lineno} imports {a.name} from {home} (it lives in {moved[home][a.name]})")
    return bad


def internal(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The graph restricted to the package's own modules, without self-imports."""
    return {m: {t: ln for t, ln in e.items() if t in graph and t != m} for m, e in graph.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a closed path of modules) per strongly connected component (Tarjan)."""
    g = internal(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(max(1000, 4 * len(g)))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return [_path_in(g, comp) + [f"({len(comp)} modules: {' '.join(comp)})"] for comp in comps]


def _path_in(g: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    start, members = comp[0], set(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp  # unreachable for a real component


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    """``a (line n) -> b (line m) -> a`` and the component's members."""
    path, members = cycle[:-1], cycle[-1]
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])) + f" -> {path[-1]} {members}"


def is_core(module: str) -> bool:
    return module != WIDGETS and not module.startswith(WIDGETS + ".")


def gui_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """``module:line imports name`` for each core module that reaches into the GUI."""
    bad = []
    for mod, edges in sorted(graph.items()):
        if not is_core(mod) or mod in EXEMPT:
            continue
        for t, ln in sorted(edges.items()):
            top = t.split(".")[0]
            if top in GUI_PACKAGES or not is_core(t):
                bad.append(f"{mod}:{ln} imports {t}")
    return bad


def layers(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Modules by height: 0 imports no module of the package, n imports modules of height < n."""
    g = internal(graph)
    height: dict[str, int] = {}

    def h(v: str, seen: tuple[str, ...] = ()) -> int:
        if v not in height:
            if v in seen:  # a cycle: no height (the test reports it)
                return 0
            height[v] = 1 + max((h(w, seen + (v,)) for w in g[v]), default=-1)
        return height[v]

    for v in g:
        h(v)
    out: list[list[str]] = [[] for _ in range(max(height.values(), default=-1) + 1)]
    for v, n in height.items():
        out[n].append(v)
    return [sorted(x) for x in out]


# -- the tests --------------------------------------------------------------------------------


def test_the_walk_sees_function_level_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import thing\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from qtpy import QtCore\n")
    graph = imports(pkg)
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a", "(2 modules: pkg.a pkg.b)"]]
    assert "qtpy" in graph["pkg.c"]


def test_no_import_cycle():
    graph = imports()
    found = cycles(graph)
    assert not found, "import cycles (function-level imports count):\n" + "\n".join(describe(graph, c) for c in found)


def test_core_imports_no_gui():
    bad = gui_imports(imports())
    assert not bad, "the core must stay Qt-free and not import the widgets:\n" + "\n".join(bad)


def reached(graph: dict[str, dict[str, int]], module: str) -> dict[str, str]:
    """Every module ``module`` imports, directly or not: ``{module: the module that imports it}``."""
    via: dict[str, str] = {}
    todo = [module]
    while todo:
        m = todo.pop()
        for t in graph.get(m, {}):
            if t not in via and t != module:
                via[t] = m
                todo.append(t)
    return via


def test_numpy_only_rooms_never_reach_torch():
    graph = imports()
    bad = []
    for short in TORCH_FREE:
        mod = f"{PACKAGE}.{short}"
        via = reached(graph, mod)
        hit = next((t for t in via if t.split(".")[0] == "torch"), None)
        if hit:
            chain = [hit]
            while chain[-1] != mod:
                chain.append(via[chain[-1]])
            bad.append(" <- ".join(chain))
    assert not bad, "numpy-only modules that import torch:\n" + "\n".join(bad)


def test_package_modules_use_no_door():
    bad = door_users()
    assert not bad, "import moved names from where they live now:\n" + "\n".join(bad)


def test_every_door_leads_to_a_definition():
    for old, moved in doors().items():
        for name, new in moved.items():
            assert name in defined_names(new), f"{old}._MOVED sends {name} to {new}, which does not define it"


def test_napari_entry_points_are_widgets_or_qt_free():
    manifest = (SRC / "napari.yaml").read_text(encoding="utf-8")
    modules = set(re.findall(r"python_name:\s*([\w.]+):", manifest))
    assert modules, "no python_name in napari.yaml"
    graph = imports()
    for mod in modules:
        assert mod in graph, f"napari.yaml names {mod}, which is not a module of the package"
        assert not is_core(mod) or mod not in EXEMPT


def main(argv: list[str]) -> int:
    graph = imports()
    if "--layers" in argv:
        for n, mods in enumerate(layers(graph)):
            print(f"{n}: {' '.join(m.removeprefix(PACKAGE + '.') for m in mods)}")
    else:
        g = internal(graph)
        for mod in sorted(g, key=lambda m: (not is_core(m), m)):
            deps = sorted(t.removeprefix(PACKAGE + ".") for t in g[mod])
            print(f"{mod.removeprefix(PACKAGE + '.') or PACKAGE}: {' '.join(deps) or '-'}")
    for old, moved in doors().items():
        for name, new in sorted(moved.items()):
            print(f"door (old import path): {old}.{name} -> {new}.{name}")
    found = cycles(graph)
    for c in found:
        print("CYCLE:", describe(graph, c))
    for line in gui_imports(graph):
        print("GUI IN CORE:", line)
    return 1 if found or gui_imports(graph) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
