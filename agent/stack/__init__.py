"""The monitoring stack the package ships: Prometheus rules with their promtool tests, Prometheus and
Alertmanager configs (native and Docker), Grafana dashboards and provisioning, and a systemd unit,
rendered from the templates under agent/stack/templates/ with an operator's settings (`agent stack export`).
Imports only the standard library and PyYAML (README.md, "Layout"); agent/stack/README.md says how to
edit the templates.
"""

from agent.stack.settings import Settings, StackError
from agent.stack.tree import render, shipped, shipped_names

__all__ = ["Settings", "StackError", "render", "shipped", "shipped_names"]
