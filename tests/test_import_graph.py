"""graft's import graph, read statically (no module is imported): data flows one way, so no two graft modules
import each other (directly or round a longer loop), and no module reaches into another module's private names.

Every import counts, also one inside a function (a deferred import still ties the two modules together); imports
under `if TYPE_CHECKING:` do not (they never run). Run this file as a script to print the findings:
`python tests/test_import_graph.py`.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "graft"


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
    mods = modules(ROOT)
    edges = graph(mods)
    for c in cycles(edges):
        print("cycle:", ", ".join(c))
        for m in c:
            print(f"   {m} -> {', '.join(sorted(edges[m] & set(c)))}")
    for mod in mods.values():
        for line in private_reaches(mod, mods):
            print(line)
    sys.exit(0)
