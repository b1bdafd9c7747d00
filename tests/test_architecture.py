"""The house: packages by concern, layered, with no import cycle (issue 22; docs/architecture.md).

The import graph is read from the source with ``ast``: every ``import`` and
``from ... import`` at any depth (function-level imports included, since they
run too), resolved to stripedump's modules.  A package may import its own
modules and those of lower packages, never one of a higher or the same layer.
"""

from __future__ import annotations

import ast
import os
from functools import lru_cache

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "stripedump")

# lowest first; packages on one line are siblings and may not import each other
LAYERS = [
    ("errors", "version"),
    ("runtime",),
    ("source",),
    ("levels",),
    ("format",),
    ("remote",),
    ("dump", "read"),
    ("kdump",),
    ("mount",),
    ("service", "tools"),
    ("cliargs",),
    ("cli", "__init__"),
    ("__main__",),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
# the longest import chain, module to module (it was 16 levels in one flat folder: issue 22)
MAX_CHAIN = 11


def _modules() -> dict[str, str]:
    """dotted module name (under stripedump, '' for the package) -> path"""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(folder, f)
    return out


@lru_cache(maxsize=1)
def graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
        if mod == "":
            pkg = []
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg[:len(pkg) - (node.level - 1)]
                    frm = ".".join(base + ([node.module] if node.module else []))
                    frm = "stripedump" + ("." + frm if frm else "")
                else:
                    frm = node.module or ""
                for a in node.names:
                    targets.append(f"{frm}.{a.name}" if f"{frm}.{a.name}"[len("stripedump."):] in mods
                                   else frm)
            for t in targets:
                if t == "stripedump" or t.startswith("stripedump."):
                    name = t[len("stripedump."):] if t != "stripedump" else ""
                    while name not in mods:
                        name = name.rpartition(".")[0]
                    if name != mod:
                        edges[mod].add(name)
    return edges


def _package(mod: str) -> str:
    return mod.split(".")[0] if mod else "__init__"


def test_every_package_is_in_a_layer_and_says_its_concern():
    for mod, path in _modules().items():
        assert _package(mod) in LAYER, f"{mod}: a package no layer names (tests/test_architecture.py)"
        doc = ast.get_docstring(ast.parse(open(path).read()))
        if mod != "__main__":
            assert doc and len(doc) > 40, f"{path}: no docstring saying why it exists"


def test_no_package_imports_a_higher_or_sibling_one():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            a, b = _package(mod), _package(dep)
            if a != b and not LAYER[b] < LAYER[a]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    g, state, stack = graph(), {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def longest_chain() -> list[str]:
    g = graph()

    @lru_cache(maxsize=None)
    def chain(m):
        best = max((chain(d) for d in g[m]), key=len, default=())
        return (m,) + best

    return list(max((chain(m) for m in g), key=len))


def test_import_chains_are_short():
    c = longest_chain()
    assert len(c) <= MAX_CHAIN, f"longest import chain, {len(c)} modules: {' -> '.join(c)}"


def test_the_graph_is_read_not_empty():
    """The checks above pass on an empty graph; make sure the reader sees the real imports."""
    g = graph()
    assert "runtime.procs" in g["dump.coordinator"]
    assert "read.reader" in g[""]                        # stripedump.open, a function-level import
    assert "format.codecs" in g["format.decode"]         # from . import codecs as codecs_mod
