"""graft's import graph, read statically (no module is imported): data flows one way, so every module imports only
from its own layer or a lower one (`LAYERS`, drawn in docs/architecture.md), no two graft modules import each other
(directly or round a longer loop), and no module reaches into another module's private names.

Every import counts, also one inside a function (a deferred import still ties the two modules together); imports
under `if TYPE_CHECKING:` do not (they never run). Run this file as a script to print the findings:
`python tests/test_import_graph.py` (`--root DIR` reads another checkout; `--layers FILE`, a JSON list of
[layer, [modules]] pairs, judges it by another table).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "graft"

# The layers, lowest first: a module may import from its own layer and the layers before it, never from a later one.
# `graft.x` is that module alone; `graft.x.*` is the package x and everything in it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("graft", "graft._compat.*", "graft.errors", "graft.display", "graft.schema", "graft.regular_files",
              "graft.flag_ranges")),
    ("core", ("graft.core.*",)),
    ("io", ("graft.io.*",)),
    ("engines", ("graft.engines.*",)),
    ("evals", ("graft.evals.*",)),
    ("search", ("graft.search.*",)),
    ("inspect", ("graft.inspect.*",)),
    ("toy", ("graft.toy.*", "graft.testing.*")),
    ("cli", ("graft.cli.*", "graft.examples.*")),
]


@dataclass
class Module:
    name: str  # dotted, e.g. graft.evals.scoring (a package is named by its folder)
    path: str  # relative to the repository root, as a failure message names it
    is_package: bool
    tree: ast.Module = field(repr=False)


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Module]:
    """Every .py file under the package, parsed, with its `if TYPE_CHECKING:` bodies removed."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        _drop_type_checking(tree)
        out[name] = Module(name, str(path.relative_to(root)), is_package, tree)
    return out


def _drop_type_checking(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            node.body = [ast.Pass()]  # the else branch does run, so it stays


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _base(mod: Module, node: ast.ImportFrom) -> str:
    """The dotted module a `from ... import` reads from (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


@dataclass(frozen=True)
class Target:
    """What one imported name is: a module of the package, or a name `attr` read from the module `module`."""

    module: str
    attr: str | None = None


def imports(mod: Module, mods: dict[str, Module]) -> list[tuple[ast.stmt, Target]]:
    """Each graft module (or name in one) that `mod` imports anywhere in its file."""
    found = []
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            found += [(node, Target(a.name)) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            base = _base(mod, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in mods:
                    found.append((node, Target(f"{base}.{alias.name}")))
                elif base in mods:
                    found.append((node, Target(base, alias.name)))
    return found


def graph(mods: dict[str, Module]) -> dict[str, set[str]]:
    """module -> the graft modules it imports (a module's imports of itself are left out)."""
    return {m: {t.module for _, t in imports(mod, mods)} - {m} for m, mod in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in edges:
                    continue
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def private_reaches(mod: Module, mods: dict[str, Module]) -> list[str]:
    """`from graft.x import _name` and `x._name` where x is another graft module: one line per place."""
    found = []
    bound: dict[str, str] = {}  # local name -> the graft module it is bound to
    for node, target in imports(mod, mods):
        if target.module == mod.name:
            continue
        if target.attr is not None:
            if _private(target.attr):
                found.append(f"{mod.path}:{node.lineno}: imports {target.attr} from {target.module}")
            continue
        for alias in node.names:
            if isinstance(node, ast.Import) and alias.name == target.module:
                # `import a.b.c` binds `a`; `import a.b.c as m` binds m
                if alias.asname:
                    bound[alias.asname] = target.module
                else:
                    head = alias.name.split(".")[0]
                    if head in mods:
                        bound[head] = head
            elif isinstance(node, ast.ImportFrom) and target.module.endswith(f".{alias.name}"):
                bound[alias.asname or alias.name] = target.module
    for node in ast.walk(mod.tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        dotted = _dotted(node.value)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        if head not in bound:
            continue
        owner = bound[head] + (f".{rest}" if rest else "")
        if owner in mods and owner != mod.name:
            found.append(f"{mod.path}:{node.lineno}: reads {dotted}.{node.attr} ({owner}'s private name)")
    return found


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]]) -> int | None:
    """The index of `module`'s layer (the most specific entry that names it), or None when no entry does."""
    best: tuple[int, int] | None = None  # (specificity, layer index)
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            package = entry.removesuffix(".*")
            if module == package or (entry.endswith(".*") and module.startswith(package + ".")):
                specificity = len(package) + (0 if entry.endswith(".*") else 1)
                if best is None or specificity > best[0]:
                    best = (specificity, index)
    return None if best is None else best[1]


def upward_imports(mods: dict[str, Module], layers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    """One line per module that imports another from a later (higher) layer, naming both layers and the first line
    where it does."""
    names = [name for name, _ in layers]
    found = []
    for mod in mods.values():
        own = layer_of(mod.name, layers)
        first: dict[str, int] = {}
        for node, target in imports(mod, mods):
            first.setdefault(target.module, node.lineno)
        for module, line in sorted(first.items(), key=lambda item: item[1]):
            theirs = layer_of(module, layers)
            if own is not None and theirs is not None and theirs > own:
                found.append(f"{mod.path}:{line}: {mod.name} ({names[own]}) imports {module} ({names[theirs]}), "
                             "a layer above it")
    return found


def missing_imports(mods: dict[str, Module], package: str = PACKAGE) -> list[str]:
    """Imports of a package module that this checkout does not hold (an old path an editable install elsewhere, or a
    stale file, would otherwise answer silently)."""
    found = []
    for mod in mods.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == package and a.name not in mods]
            elif isinstance(node, ast.ImportFrom) and _base(mod, node).split(".")[0] == package:
                base = _base(mod, node)
                names = [] if base in mods else [base]
            else:
                continue
            found += [f"{mod.path}:{node.lineno}: {mod.name} imports {name}, which is no module here" for name in names]
    return found


def unplaced(mods: dict[str, Module], layers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    return sorted(f"{mod.path}: {name} is in no layer" for name, mod in mods.items() if layer_of(name, layers) is None)


# ---------------------------------------------------------------- the tests

def test_cycle_finder_finds_a_planted_cycle() -> None:
    """The finder itself can fail: a three-module loop and a two-module loop are found, a chain is not."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert sorted(cycles(edges)) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_reader_sees_function_level_imports_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n"
                              "def f():\n    from .b import thing\n    return thing\n")
    (pkg / "b.py").write_text("import pkg.a as a\nthing = a._hidden\n")
    (pkg / "c.py").write_text("from pkg.a import _secret\n")
    mods = modules(tmp_path, "pkg")
    edges = graph(mods)
    assert edges["pkg.a"] == {"pkg.b"}  # the deferred import counts, the TYPE_CHECKING one does not
    assert cycles(edges) == [["pkg.a", "pkg.b"]]
    assert len(private_reaches(mods["pkg.b"], mods)) == 1
    assert "_secret" in private_reaches(mods["pkg.c"], mods)[0]


def test_layer_check_finds_a_planted_upward_import(tmp_path: Path) -> None:
    """The layer check itself can fail: an import of a higher layer is found (also inside a function), one of the
    same or a lower layer is not, a TYPE_CHECKING import is not, and a module in no layer is named."""
    pkg = tmp_path / "pkg"
    for folder in ("low", "high"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("")
    (pkg / "low" / "a.py").write_text("from pkg import base\nfrom pkg.low import b\nfrom typing import TYPE_CHECKING\n"
                                      "if TYPE_CHECKING:\n    from pkg.high import c\n"
                                      "def f():\n    from pkg.high.c import thing\n    return thing\n")
    (pkg / "low" / "b.py").write_text("")
    (pkg / "high" / "c.py").write_text("from pkg.low import a\nthing = 1\n")
    (pkg / "stray.py").write_text("")
    layers = [("base", ("pkg", "pkg.base")), ("low", ("pkg.low.*",)), ("high", ("pkg.high.*",))]
    mods = modules(tmp_path, "pkg")
    found = upward_imports(mods, layers)
    assert len(found) == 1 and "pkg.low.a (low) imports pkg.high.c (high)" in found[0] and ":7:" in found[0]
    assert unplaced(mods, layers) == [f"{Path('pkg/stray.py')}: pkg.stray is in no layer"]
    assert layer_of("pkg.low", layers) == 1 and layer_of("pkg.lowly", layers) is None
    (pkg / "high" / "d.py").write_text("def f():\n    from pkg.gone import x\n    return x\n")
    assert missing_imports(modules(tmp_path, "pkg"), "pkg") == [
        f"{Path('pkg/high/d.py')}:2: pkg.high.d imports pkg.gone, which is no module here"]


def test_every_module_imports_only_its_own_layer_or_lower() -> None:
    mods = modules(ROOT)
    assert not unplaced(mods, LAYERS), "modules in no layer (add them to LAYERS and docs/architecture.md):\n" + \
        "\n".join(unplaced(mods, LAYERS))
    found = upward_imports(mods, LAYERS)
    assert not found, ("imports that point up a layer (move the code down, or hand the caller what it needs; "
                       "docs/architecture.md draws the layers):\n" + "\n".join(found))


def test_every_import_names_a_module_of_this_checkout() -> None:
    found = missing_imports(modules(ROOT))
    assert not found, "imports of modules that are not there:\n" + "\n".join(found)


def test_graft_has_no_import_cycles() -> None:
    mods = modules(ROOT)
    assert len(mods) > 50, "the package was not found"
    edges = graph(mods)
    loops = cycles(edges)
    lines = [f"cycle among {', '.join(c)}:\n" + "\n".join(f"  {m} -> {', '.join(sorted(edges[m] & set(c)))}" for m in c)
             for c in loops]
    assert not loops, "import cycles between graft modules (data should flow one way):\n" + "\n".join(lines)


def test_no_module_reads_another_modules_private_names() -> None:
    mods = modules(ROOT)
    found = [line for mod in mods.values() for line in private_reaches(mod, mods)]
    assert not found, ("private names read across graft modules (give the thing a public name in its owner):\n"
                       + "\n".join(found))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print graft's import-graph findings.")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to read (default: this one)")
    parser.add_argument("--layers", type=Path, help="a JSON list of [layer, [modules]] pairs (default: LAYERS)")
    args = parser.parse_args()
    mods = modules(args.root)
    layers = [(name, tuple(entries)) for name, entries in json.loads(args.layers.read_text())] if args.layers \
        else LAYERS
    up = upward_imports(mods, layers)
    print("\n".join([*unplaced(mods, layers), *up]))
    print(f"{len(up)} imports point up a layer")
    edges = graph(mods)
    for c in cycles(edges):
        print("cycle:", ", ".join(c))
        for m in c:
            print(f"   {m} -> {', '.join(sorted(edges[m] & set(c)))}")
    for mod in mods.values():
        for line in private_reaches(mod, mods):
            print(line)
    sys.exit(0)
