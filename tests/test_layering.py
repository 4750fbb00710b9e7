"""The import graph of agent/ has no cycle outside `if TYPE_CHECKING:` blocks.

Read from the source with `ast` (every `import agent...` / `from agent... import`, at module level or
inside a function, except under TYPE_CHECKING), so a cycle hidden in a deferred import counts too.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "agent"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The agent modules `path` imports when it runs (TYPE_CHECKING blocks left out)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found - {module_name(path) if path.is_relative_to(ROOT) else ""}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    # A package's __init__ runs before any of its modules: importing agent.x.y depends on agent.x.
    return {module_name(p): runtime_imports(p, modules) for p in paths}


def test_the_import_graph_has_no_cycle() -> None:
    deps = graph()
    assert len(deps) > 20, "the graph was not read"
    sorter = graphlib.TopologicalSorter(deps)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle outside TYPE_CHECKING: {' -> '.join(exc.args[1])}") from None


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    # The check itself can fail: two modules importing each other, one of them in a function.
    (tmp_path / "a.py").write_text("from agent import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from agent import a\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent import a\n")
    modules = {"agent.a", "agent.b", "agent.c"}
    assert runtime_imports(tmp_path / "a.py", modules) == {"agent.b"}
    assert runtime_imports(tmp_path / "b.py", modules) == {"agent.a"}
    assert runtime_imports(tmp_path / "c.py", modules) == set()


# The tree shows the jobs (DESIGN.md): each package may use only what is below it. observe and act are
# peers and never use each other; export reads from both; app, server, cli and the connection guard sit
# on top. `agent` (the version) and `agent.loop` (uvloop or asyncio) are a foundation anyone may use.
RANK = {"foundation": 0, "config": 1, "supervise": 2, "observe": 3, "act": 3, "export": 4, "demo": 5, "top": 6}


def group(module: str) -> str:
    parts = module.split(".")
    if module in ("agent", "agent.loop"):
        return "foundation"
    return parts[1] if len(parts) >= 2 and parts[1] in RANK else "top"


def test_every_import_points_down_the_layers() -> None:
    wrong = sorted(
        f"{module} ({group(module)}) imports {dep} ({group(dep)})"
        for module, deps in graph().items() for dep in deps
        if group(dep) != group(module) and (RANK[group(dep)] >= RANK[group(module)])
    )
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
