"""Layering of the packages, from their source (ast; imports inside functions count, `if TYPE_CHECKING:` ones
do not): no import cycle among the modules of dsl/, tracking/, trainables/ and sweeps/; dsl/ imports neither
Ray nor MLflow nor the other packages; tracking/ imports neither trainables/ nor sweeps/; trainables/ does not
import sweeps/. Command-line code lives in sweeps/cli/ only: dsl/ imports no argparse, and no `*_from_cli`
function is defined anywhere else.

`python tests/test_layering.py` prints the graph's cycles and layering violations.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dsl", "tracking", "trainables", "sweeps")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (functions, methods, try blocks), except under `if TYPE_CHECKING:`."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
            else:
                todo.append(child)
    return out


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> project modules it imports, module -> top-level names of everything it imports)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    tops: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                tops[mod].add(t.split(".")[0])
                while t and t not in files:  # `import a.b.c` of a non-module attribute: its module
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph, tops


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(graph: dict[str, set[str]], tops: dict[str, set[str]]) -> list[str]:
    forbidden = {"dsl": {"ray", "mlflow", "tracking", "trainables", "sweeps"}, "tracking": {"trainables", "sweeps"},
                 "trainables": {"sweeps"}}
    out = []
    for mod in sorted(tops):
        bad = sorted(tops[mod] & forbidden.get(mod.split(".")[0], set()))
        if bad:
            out.append(f"{mod} imports {', '.join(bad)}")
    return out


def test_no_import_cycles() -> None:
    graph, _ = import_graph()
    assert "sweeps.search.space" in graph["sweeps.search.spec"]  # the graph sees imports (this one was inside a function)
    assert cycles(graph) == []


def test_layers() -> None:
    graph, tops = import_graph()
    assert "ray" in tops["trainables.chain_trainable"]  # imported inside functions only: still seen
    assert violations(graph, tops) == []


def test_command_line_code_lives_in_the_cli_package() -> None:
    """dsl/ parses no command line, and every `*_from_cli` function lives in sweeps/cli/ (issue 21)."""
    _, tops = import_graph()
    assert "argparse" in tops["sweeps.cli.app"]  # the graph sees it where it is
    assert [m for m in tops if m.split(".")[0] == "dsl" and "argparse" in tops[m]] == []
    stray = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.is_relative_to(ROOT / "sweeps" / "cli"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.endswith("_from_cli"):
                    stray.append(f"{_module_name(path)}.{node.name}")
    assert stray == []


if __name__ == "__main__":
    g, t = import_graph()
    found = cycles(g) + [[v] for v in violations(g, t)]
    for c in found:
        print(" <-> ".join(c))
    sys.exit(1 if found else 0)
