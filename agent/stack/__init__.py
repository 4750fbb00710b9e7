"""The monitoring stack the package ships: Prometheus rules with their promtool tests, Prometheus and
Alertmanager configs (native and Docker), Grafana dashboards and provisioning, and a systemd unit,
rendered from the templates under agent/stack/templates/ with an operator's settings (`agent stack export`).
Imports only the standard library and PyYAML (README.md, "Layout"); agent/stack/README.md says how to
edit the templates.

Settings are cheap to import (every `agent` invocation builds the export's parser from their defaults);
the renderer (render, shipped, shipped_names) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.stack.settings import Settings, StackError

if TYPE_CHECKING:
    from agent.stack.tree import render, shipped, shipped_names

__all__ = ["Settings", "StackError", "render", "rule_names", "shipped", "shipped_names"]


def rule_names() -> list[str]:
    """The names of the rule files the package ships (rules/NAME.yml of the export), from the templates'
    names: no rendering, cheap enough for a --help."""
    from importlib import resources

    folder = resources.files(__name__).joinpath("templates", "rules")
    return sorted(t.name for t in folder.iterdir() if t.is_file() and t.name.endswith(".yml"))


def __getattr__(name: str) -> Any:
    if name in ("render", "shipped", "shipped_names"):
        from agent.stack import tree

        return getattr(tree, name)
    raise AttributeError(f"module 'agent.stack' has no attribute {name!r}")
