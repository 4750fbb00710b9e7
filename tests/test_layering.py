"""The import graph of agent/ has no cycle, and every import points down the layers.

Read from the source with `ast`: every `import agent...` / `from agent... import`, at module level, inside
a function or under `if TYPE_CHECKING:`, so a cycle hidden in a deferred or a typing-only import counts
too. Where a lower layer needs a type from a higher one, the lower layer owns a small protocol.
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "agent"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The agent modules `path` imports, wherever the import stands (TYPE_CHECKING blocks included)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
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
    return {module_name(p): imports(p, modules) for p in paths}


def test_the_import_graph_has_no_cycle() -> None:
    deps = graph()
    assert len(deps) > 20, "the graph was not read"
    sorter = graphlib.TopologicalSorter(deps)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle (each imports the next): {' -> '.join(reversed(exc.args[1]))}") from None


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    # The check itself can fail: two modules importing each other, one of them in a function.
    (tmp_path / "a.py").write_text("from agent import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from agent import a\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent import a\n")
    modules = {"agent.a", "agent.b", "agent.c"}
    assert imports(tmp_path / "a.py", modules) == {"agent.b"}
    assert imports(tmp_path / "b.py", modules) == {"agent.a"}
    assert imports(tmp_path / "c.py", modules) == {"agent.a"}


# The tree shows the jobs (README.md "Layout", DESIGN.md): each folder may use only what ranks below it, and
# folders of one rank are peers that never use each other (config and stack; supervise and todos; observe and
# act; export, backtest and demo). `agent` (the version) is the foundation; `agent.__main__` is the CLI's.
RANK = {"foundation": 0, "config": 1, "stack": 1, "supervise": 2, "todos": 2, "observe": 3, "act": 3,
        "export": 4, "backtest": 4, "demo": 4, "http": 5, "daemon": 6, "cli": 7}
LOOSE = {"agent": "foundation", "agent.__main__": "cli"}


def group(module: str) -> str:
    if module in LOOSE:
        return LOOSE[module]
    folder = module.split(".")[1]
    assert folder in RANK, f"{module} is in no ranked folder: give it one (RANK) or move it"
    return folder


def wrong_way(deps: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({group(module)}) imports {dep} ({group(dep)})"
        for module, found in deps.items() for dep in found
        if group(dep) != group(module) and RANK[group(dep)] >= RANK[group(module)]
    )


def test_every_import_points_down_the_layers() -> None:
    wrong = wrong_way(graph())
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import() -> None:
    # A planted upward import fails the check, a typing-only one too; a peer's import is upward as well.
    deps = {"agent.supervise.x": {"agent.http.y"}, "agent.observe.z": {"agent.act.w"},
            "agent.http.y": set(), "agent.act.w": {"agent.config.v"}, "agent.config.v": set()}
    assert wrong_way(deps) == ["agent.observe.z (observe) imports agent.act.w (act)",
                               "agent.supervise.x (supervise) imports agent.http.y (http)"]


def test_few_modules_sit_loose() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(loose) <= 3, f"modules loose in agent/ (at most 3; each belongs to a folder by its job): {loose}"


def test_no_module_is_over_450_lines() -> None:
    long = sorted(f"{p.relative_to(ROOT)}: {n}" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 450)
    assert not long, "modules over 450 lines (split by job):\n" + "\n".join(long)


def test_readme_layout_lists_every_folder_top_to_bottom() -> None:
    # README's "Layout" table: one row per folder of the package, none missing or stale, in rank order.
    section = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `agent/(\w+)/` \| (.+) \|$", section, re.MULTILINE)
    folders = [folder for folder, _ in rows]
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert sorted(folders) == sorted(packages), f"README rows {folders} vs the tree's folders {sorted(packages)}"
    assert set(folders) == set(RANK) - {"foundation"}, "a folder without a rank, or a rank without a folder"
    ranks = [RANK[folder] for folder in folders]
    ordered = list(zip(folders, ranks, strict=True))
    assert ranks == sorted(ranks, reverse=True), f"README's rows are not top to bottom: {ordered}"
    assert all(len(owns) > 20 for _, owns in rows), "each row says what its folder owns"
