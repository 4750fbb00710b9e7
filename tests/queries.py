"""Every PromQL expression the project ships: dashboard panel targets and rule expressions."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Grafana variables as a live run resolves them (all instances, all components, short windows).
SUBSTITUTIONS = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "1s", "$instance": ".*",
                 "$component": ".*", "${instance}": ".*", "${component}": ".*",
                 "$job": ".*", "$node": ".*"}

# Panels that may legitimately be empty at the end of the end-to-end run: conditions that are not
# true right now (no probe error, no alert firing, nothing failed), settings the run does not use, or
# counters of events the run does not cause (no rolling restart halts: that series appears at the first).
MAY_BE_EMPTY = ("memory_limit", "failed", "emergency", "predict_linear", "disk_free_bytes:predict",
                'reason!="none"', 'alertstate="firing"', "rollout_halted")


def _substitute(expr: str) -> str:
    for var in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(var, SUBSTITUTIONS[var])
    return expr


def dashboard_queries() -> list[tuple[str, str, bool]]:
    """(where, expr, must have data) for every panel target of every dashboard."""
    out = []
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                if expr:
                    must = not any(marker in expr for marker in MAY_BE_EMPTY)
                    out.append((f"{path.name}: {panel['title']}", _substitute(expr), must))
    return out


def rule_queries() -> list[tuple[str, str, bool]]:
    """(where, expr, False) for every recording and alerting rule."""
    out = []
    for path in sorted((ROOT / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                out.append((f"{path.name}: {name}", rule["expr"], False))
    return out
