"""The building blocks of the Grafana dashboards: queries, panels, the grid layout, and the dashboard with its
template variables (agent/stack/dashboards.py puts them together).

Every panel queries through the `datasource` template variable, counters go through rate()/increase()
over `$__rate_interval` (or counted()), and every threshold line is the recording rule that the matching
alert compares against, so a panel shows exactly what the alert judges.
"""

from __future__ import annotations

from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
INST = 'job=~"$job",node=~"$node",instance=~"$instance"'
COMP = INST + ',component=~"$component"'
COMPONENT_UID = "orchestrator-component"
# The job variable's query; the selector of the settings replaces {$SEL} (agent/stack/dashboards.py).
JOB_QUERY = "label_values(orchestrator_build_info{$SEL}, job)"
THRESHOLD_STYLE = [
    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
    {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
    {"id": "custom.fillOpacity", "value": 0},
]

Json = dict[str, Any]


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False) -> Json:
    """One Prometheus query of a panel."""
    t: Json = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
    if table:
        t["format"] = "table"
    return t


def counted(selector: str, window: str) -> str:
    """increase() of a counter over `window`, where a series born inside it counts in full: the agent
    writes some counters only from their first increment (docs/metrics.md, "Counters that appear at
    their first increment"), and increase() cannot see that one. The rules use the same form."""
    metric = selector.split("{", 1)[0]
    return (f"({selector} unless {metric}{{{INST}}} offset {window} and on (job, instance) "
            f"orchestrator_build_info{{{INST}}} offset {window}) or increase({selector}[{window}])")


def targets(*pairs: tuple[str, str]) -> list[Json]:
    """Queries A, B, C... from (expr, legend) pairs."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


class Layout:
    """Places panels left to right, wrapping at 24 grid columns; hands out panel ids."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1
        self.panels: list[Json] = []

    def add(self, panel: Json, w: int, h: int) -> None:
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        panel["id"] = self.next_id
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.next_id += 1
        self.x += w
        self.row_height = max(self.row_height, h)
        self.panels.append(panel)

    def row(self, title: str) -> None:
        if self.x:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        self.panels.append({"type": "row", "title": title, "id": self.next_id, "collapsed": False,
                            "panels": [], "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}})
        self.next_id += 1
        self.y += 1


def timeseries(title: str, tgts: list[Json], unit: str = "short", description: str = "",
               thresholds: tuple[str, ...] = (), stack: bool = False, bars: bool = False,
               minimum: float | None = None, maximum: float | None = None) -> Json:
    """A time series panel; series whose legend is in `thresholds` are drawn as dashed red lines."""
    custom: Json = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0,
                    "showPoints": "never", "spanNulls": False,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults: Json = {"unit": unit, "custom": custom}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    overrides = [{"matcher": {"id": "byName", "options": name}, "properties": THRESHOLD_STYLE}
                 for name in thresholds]
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS, "targets": tgts,
            "fieldConfig": {"defaults": defaults, "overrides": overrides},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, tgts: list[Json], unit: str = "short", description: str = "",
         mappings: list[Json] | None = None, steps: list[Json] | None = None, text_mode: str = "auto") -> Json:
    """A single-value panel with optional value mappings and colour steps."""
    return {"type": "stat", "title": title, "description": description, "datasource": DS, "targets": tgts,
            "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                         "thresholds": {"mode": "absolute",
                                                        "steps": steps or [{"color": "green", "value": None}]}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": text_mode,
                        "justifyMode": "auto", "orientation": "auto"}}


def table(title: str, tgts: list[Json], description: str = "", hide: tuple[str, ...] = ()) -> Json:
    """An instant-query table; `hide` drops columns such as Time and Value."""
    exclude = {name: True for name in hide}
    return {"type": "table", "title": title, "description": description, "datasource": DS, "targets": tgts,
            "fieldConfig": {"defaults": {}, "overrides": []}, "options": {"showHeader": True},
            "transformations": [{"id": "organize", "options": {"excludeByName": exclude}}]}


def steps(*pairs: tuple[float | None, str]) -> list[Json]:
    """Threshold colour steps from (value, colour) pairs; the first value is None (base)."""
    return [{"value": value, "color": color} for value, color in pairs]


def query_var(name: str, label: str, query: str, multi: bool, include_all: bool) -> Json:
    """A query template variable over the `datasource` variable."""
    var: Json = {"type": "query", "name": name, "label": label, "datasource": DS,
                 "query": {"query": query, "refId": f"{name}-query"}, "definition": query, "refresh": 2,
                 "sort": 1, "multi": multi, "includeAll": include_all, "current": {}, "hide": 0, "options": [],
                 "regex": ""}
    if include_all:
        var["allValue"] = ".*"
    return var


def dashboard(uid: str, title: str, description: str, layout: Layout, component_var: bool = False,
              component_multi: bool = True) -> Json:
    """The dashboard wrapper with the datasource / instance (/ component) variables and links."""
    variables: list[Json] = [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
         "current": {}, "hide": 0, "options": [], "refresh": 1, "regex": ""},
        query_var("job", "Job", JOB_QUERY, True, True),
        query_var("node", "Node", 'label_values(orchestrator_build_info{job=~"$job"}, node)', True, True),
        query_var("instance", "Agent", 'label_values(orchestrator_build_info{job=~"$job",node=~"$node"}, instance)',
                  True, True),
    ]
    if component_var:
        variables.append(query_var("component", "Component",
                                   f"label_values(orchestrator_component_info{{{INST}}}, component)",
                                   component_multi, component_multi))
    return {
        "uid": uid, "title": title, "description": description, "tags": ["orchestrator"],
        "editable": False, "graphTooltip": 1, "timezone": "", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-3h", "to": "now"}, "refresh": "30s",
        "templating": {"list": variables},
        "annotations": {"list": [{
            "name": "Orchestrator alerts", "datasource": DS, "enable": True, "iconColor": "red",
            "expr": 'ALERTS{alertname=~"Orchestrator.*", alertstate="firing"}',
            "titleFormat": "{{alertname}}", "textFormat": "{{component}} {{action}}", "step": "60s",
            "useValueForTime": False,
        }]},
        "links": [{"type": "dashboards", "tags": ["orchestrator"], "asDropdown": True, "title": "Orchestrator",
                   "includeVars": True, "keepTime": True}],
        "panels": layout.panels,
    }


