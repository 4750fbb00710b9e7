"""Write grafana/dashboards/*.json: `python scripts/gen_stack.py` (commit what it writes; this module's
own `main` writes only the dashboards).

Every panel queries through the `datasource` template variable, counters go through rate()/increase()
over `$__rate_interval`, and every threshold line is the recording rule that the matching alert in
rules/ compares against, so a panel shows exactly what the alert judges.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.stack_source import Settings

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "grafana" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
INST = 'job=~"$job",node=~"$node",instance=~"$instance"'
COMP = INST + ',component=~"$component"'
COMPONENT_UID = "orchestrator-component"
# Panels that draw what an alert judges (or count what it counts) -> the alerts, for runbook links.
RUNBOOK_PANELS: dict[str, tuple[str, ...]] = {
    "Open circuits": ("OrchestratorComponentCircuitOpen",),
    "Emergency stop": ("OrchestratorEmergencyStopActive",),
    "Unplanned restarts in 15m vs crash-loop threshold": ("OrchestratorComponentCrashLooping",),
    "Last config reload": ("OrchestratorConfigReloadFailed",),
    "Rollout halts (range)": ("OrchestratorRolloutHalted",),
    "Rollout halts by component": ("OrchestratorRolloutHalted",),
    "Memory: RSS, 1h forecast, headroom, limit": ("OrchestratorComponentMemoryGrowth",),
    "Oldest pending todo vs threshold": ("OrchestratorTodoBacklogStale",),
    "Backlog sources": ("OrchestratorTodoSourceDown",),
    "Replicas: running vs desired vs desired by backlog": ("OrchestratorBacklogHigh", "OrchestratorBacklogLow",
                                                           "OrchestratorBacklogSaturated"),
    "Scale-down not before": ("OrchestratorBacklogLow",),
    "Actions by result": ("OrchestratorRemediationFailing",),
    "Webhook requests by status code": ("OrchestratorWebhookRequestsRejected",),
    "Memory available vs pressure threshold": ("OrchestratorHostMemoryPressure", "OrchestratorHostMemoryLow"),
    "Disk free vs thresholds": ("OrchestratorHostDiskPressure", "OrchestratorHostDiskFillingUp"),
    "Disk free and 24h forecast": ("OrchestratorHostDiskFillingUp",),
}
# Overview panels whose series carry a `component` label: a click opens that component's dashboard.
DRILL_DOWN = ("Component health (share of desired replicas healthy)", "Component states",
              "Restarts by component and reason", "Unplanned restarts in 15m vs crash-loop threshold",
              "Replicas running by component", "Rollout halts by component")
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
        query_var("job", "Job", f"label_values(orchestrator_build_info{{{_SETTINGS.selector}}}, job)", True, True),
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


def overview() -> Json:
    lay = Layout()
    lay.add(stat("Components healthy", targets(
        (f"count(orchestrator_component_up{{{INST}}} == 1) or vector(0)", "healthy")),
        description="Components whose desired replicas all run and pass their probe.",
        steps=steps((None, "blue"))), 4, 4)
    lay.add(stat("Components not healthy", targets(
        (f"count(orchestrator_component_up{{{INST}}} < 1) or vector(0)", "unhealthy")),
        steps=steps((None, "green"), (1, "red"))), 4, 4)
    lay.add(stat("Open circuits", targets(
        (f'sum(orchestrator_component_state{{{INST},state="circuit_open"}}) or vector(0)', "open")),
        description="Components the agent stopped restarting (OrchestratorComponentCircuitOpen).",
        steps=steps((None, "green"), (1, "red"))), 4, 4)
    lay.add(stat("Autonomy mode", [target(f"orchestrator_autonomy_mode{{{INST}}} == 1", "{{mode}}",
                                          instant=True)],
                 description="on: acts on alerts; dry-run: records what it would do; off: records only.",
                 text_mode="name", steps=steps((None, "blue"))), 4, 4)
    lay.add(stat("Emergency stop", targets((f"max(orchestrator_emergency_stop{{{INST}}})", "emergency stop")),
                 mappings=[{"type": "value", "options": {"0": {"text": "off"}, "1": {"text": "ACTIVE"}}}],
                 steps=steps((None, "green"), (1, "red"))), 4, 4)
    lay.add(stat("Firing orchestrator alerts", targets(
        ('count(ALERTS{alertname=~"Orchestrator.*",alertstate="firing"}) or vector(0)', "firing")),
        steps=steps((None, "green"), (1, "orange"))), 4, 4)

    lay.add(timeseries("Component health (share of desired replicas healthy)", targets(
        (f"orchestrator_component_up{{{INST}}}", "{{component}}")),
        unit="percentunit", minimum=0, maximum=1,
        description="orchestrator_component_up: 0 means no healthy replica (OrchestratorComponentDown)."), 12, 8)
    lay.add(table("Component states", [target(
        f"orchestrator_component_state{{{INST}}} == 1", ref="A", instant=True, table=True)],
        description="The current lifecycle state of each component; a row opens its component dashboard.",
        # job stays a column: the drill-down link reads it from the row.
        hide=("Time", "Value", "__name__")), 12, 8)
    lay.add(timeseries("Restarts by component and reason", targets(
        (f"sum by (job, instance, component, reason) ("
         f"{counted(f'orchestrator_component_restarts_total{{{INST}}}', '$__rate_interval')})",
         "{{component}} {{reason}}")), bars=True, stack=True), 12, 8)
    lay.add(timeseries("Unplanned restarts in 15m vs crash-loop threshold", targets(
        (f"component:orchestrator_component_restarts_unplanned:increase15m{{{INST}}}", "{{component}}"),
        (f"max(orchestrator:crash_loop_restarts_threshold{{{INST}}})", "threshold")),
        thresholds=("threshold",),
        description="OrchestratorComponentCrashLooping fires at the threshold."), 12, 8)
    lay.add(timeseries("Replicas running by component", targets(
        (f"orchestrator_component_replicas{{{INST}}}", "{{component}}")), stack=True), 12, 8)
    lay.add(timeseries("Remediation actions by result", targets(
        (f"sum by (action, result) ("
         f"{counted(f'orchestrator_remediation_actions_total{{{INST}}}', '$__rate_interval')})",
         "{{action}} {{result}}")), bars=True, stack=True), 12, 8)

    lay.row("Agent: config reloads and rolling restarts")
    lay.add(stat("Last config reload", targets(
        (f"orchestrator_config_last_reload_successful{{{INST}}}", "{{instance}}")),
        description="0 from a reload that did not apply (invalid or refused) until one that does; the agent "
                    "keeps the last good config meanwhile (OrchestratorConfigReloadFailed).",
        mappings=[{"type": "value", "options": {"0": {"text": "FAILED"}, "1": {"text": "ok"}}}],
        steps=steps((None, "red"), (1, "green"))), 6, 4)
    lay.add(stat("Since the last successful reload", targets(
        (f"time() - orchestrator_config_last_reload_success_timestamp_seconds{{{INST}}}", "{{instance}}")),
        unit="s", description="The start of the agent counts as a successful load.",
        steps=steps((None, "blue"))), 6, 4)
    lay.add(stat("Agent uptime", targets(
        (f"time() - orchestrator_agent_start_time_seconds{{{INST}}}", "{{instance}}")),
        unit="s", description="Since this agent image started: a restart or an `agent reexec` resets it, a "
                              "reload does not.", steps=steps((None, "blue"))), 6, 4)
    lay.add(stat("Rollout halts (range)", targets(
        (f"sum({counted(f'orchestrator_rollout_halted_total{{{INST}}}', '$__range')}) or vector(0)", "halts")),
        description="Rolling restarts stopped because a successor was not ready within rollout.ready_timeout "
                    "(OrchestratorRolloutHalted).", steps=steps((None, "green"), (1, "orange"))), 6, 4)
    lay.add(timeseries("Config reloads and agent starts", targets(
        (f"orchestrator_config_last_reload_successful{{{INST}}}", "last reload ok {{instance}}"),
        (f"changes(orchestrator_config_hash{{{INST}}}[$__rate_interval])", "config changed {{instance}}"),
        (f"changes(orchestrator_agent_start_time_seconds{{{INST}}}[$__rate_interval])",
         "agent started {{instance}}")), minimum=0,
        description="config changed: a reload (or start) loaded a config that differs from the one before; "
                    "agent started: a restart or an `agent reexec`."), 12, 8)
    lay.add(timeseries("Rollout halts by component", targets(
        (f"sum by (job, instance, component) ("
         f"{counted(f'orchestrator_rollout_halted_total{{{INST}}}', '$__rate_interval')})",
         "{{component}}")), bars=True, stack=True, minimum=0), 12, 8)
    return dashboard("orchestrator-overview", "Orchestrator / Overview",
                     "Health, states, restarts, open circuits and autonomy of the supervised components; the agent's "
                     "config reloads and rolling restarts.", lay)


def component() -> Json:
    lay = Layout()
    lay.add(stat("Healthy share", targets((f"orchestrator_component_up{{{COMP}}}", "{{component}}")),
                 unit="percentunit", steps=steps((None, "red"), (1, "green"))), 6, 4)
    lay.add(stat("State", [target(f"orchestrator_component_state{{{COMP}}} == 1", "{{component}}: {{state}}",
                                  instant=True)], text_mode="name", steps=steps((None, "blue"))), 6, 4)
    # manual_stop is written only while 1, so the other components read 0 from max_replicas.
    lay.add(stat("Stopped by hand", targets((f"orchestrator_component_manual_stop{{{COMP}}} "
                                             f"or 0 * orchestrator_component_max_replicas{{{COMP}}}",
                                             "{{component}}")),
                 mappings=[{"type": "value", "options": {"0": {"text": "no"}, "1": {"text": "yes"}}}],
                 steps=steps((None, "green"), (1, "orange"))), 6, 4)
    lay.add(stat("Last exit code", targets((f"orchestrator_component_last_exit_code{{{COMP}}}", "{{component}}")),
                 description="128+N: killed by signal N. No data: no replica has exited since the agent started.",
                 steps=steps((None, "green"), (1, "orange"))), 6, 4)

    lay.add(timeseries("Replicas: running, desired, min, max", targets(
        (f"orchestrator_component_replicas{{{COMP}}}", "running"),
        (f"orchestrator_component_desired_replicas{{{COMP}}}", "desired"),
        (f"component:orchestrator_component_desired_replicas:backlog{{{COMP}}}", "desired by backlog"),
        (f"orchestrator_component_min_replicas{{{COMP}}}", "min"),
        (f"orchestrator_component_max_replicas{{{COMP}}}", "max")),
        thresholds=("min", "max"), minimum=0), 12, 8)
    lay.add(timeseries("Probe success by replica", targets(
        (f"orchestrator_component_probe_success{{{COMP}}}", "{{component}} #{{replica}}")),
        minimum=0, maximum=1, description="OrchestratorReplicaProbeFailing fires on a replica stuck at 0."), 12, 8)
    lay.add(timeseries("Probe latency", targets(
        (f"histogram_quantile(0.5, sum by (le, probe) (rate(orchestrator_probe_duration_seconds_bucket{{{COMP}}}"
         "[$__rate_interval])))", "p50 {{probe}}"),
        (f"histogram_quantile(0.95, sum by (le, probe) (rate(orchestrator_probe_duration_seconds_bucket{{{COMP}}}"
         "[$__rate_interval])))", "p95 {{probe}}"),
        (f"histogram_quantile(0.99, sum by (le, probe) (rate(orchestrator_probe_duration_seconds_bucket{{{COMP}}}"
         "[$__rate_interval])))", "p99 {{probe}}")), unit="s"), 12, 8)
    lay.add(timeseries("Probe errors by reason", targets(
        (f'orchestrator_component_probe_error{{{COMP},reason!="none"}} == 1', "{{component}} {{reason}}")),
        bars=True), 12, 8)
    lay.add(timeseries("Restarts by reason", targets(
        (f"sum by (component, reason) ("
         f"{counted(f'orchestrator_component_restarts_total{{{COMP}}}', '$__rate_interval')})",
         "{{component}} {{reason}}")), bars=True, stack=True), 12, 8)
    lay.add(timeseries("CPU", targets(
        (f"rate(orchestrator_component_cpu_seconds_total{{{COMP}}}[$__rate_interval])", "{{component}}")),
        unit="cores", minimum=0, description="CPU seconds per second of the component's process trees."), 12, 8)
    lay.add(timeseries("Memory: RSS, 1h forecast, headroom, limit", targets(
        (f"orchestrator_component_resident_memory_bytes{{{COMP}}}", "rss"),
        (f"component:orchestrator_component_resident_memory_bytes:predict_linear1h{{{COMP}}}", "forecast 1h"),
        (f"component:orchestrator_component_memory_limit_bytes:headroom{{{COMP}}}", "headroom"),
        (f"orchestrator_component_memory_limit_bytes{{{COMP}}}", "limit")),
        unit="bytes", minimum=0, thresholds=("headroom", "limit"),
        description="OrchestratorComponentMemoryGrowth fires while the forecast is above the headroom."), 12, 8)
    lay.add(timeseries("Open file descriptors", targets(
        (f"orchestrator_component_open_fds{{{COMP}}}", "open fds {{component}}")), minimum=0,
        description="Of the component's process trees; its memory is in the RSS panel."), 12, 8)
    lay.add(timeseries("Remediation actions on this component", targets(
        (f"sum by (action, result) ("
         f"{counted(f'orchestrator_remediation_actions_total{{{COMP}}}', '$__rate_interval')})",
         "{{action}} {{result}}")), bars=True, stack=True), 12, 8)
    return dashboard(COMPONENT_UID, "Orchestrator / Component",
                     "One component in depth: replicas, probes, restarts, CPU and memory.", lay,
                     component_var=True, component_multi=False)


def backlog() -> Json:
    lay = Layout()
    lay.row("Backlog")
    lay.add(timeseries("Pending todos by priority", targets(
        (f'sum by (priority) (orchestrator_todo_backlog{{{INST},status="pending"}})', "{{priority}}")),
        stack=True, minimum=0), 8, 8)
    lay.add(timeseries("Pending todos by required capability", targets(
        (f"capability:orchestrator_todo_pending:sum{{{INST}}}", "{{capability}}")), stack=True, minimum=0,
        description='"any": todos that need no capability, served by components with todo_processing.'), 8, 8)
    lay.add(timeseries("Todos by status", targets(
        (f"sum by (status) (orchestrator_todo_backlog{{{INST}}})", "{{status}}")), minimum=0,
        description="A todo that needs two capabilities counts twice."), 8, 8)
    lay.add(timeseries("Oldest pending todo vs threshold", targets(
        (f"orchestrator_todo_oldest_pending_age_seconds{{{INST}}}", "{{priority}}"),
        (f"orchestrator:todo_oldest_pending_age_threshold_seconds{{{INST}}}", "threshold {{priority}}")),
        unit="s", minimum=0), 12, 8)
    lay.add(timeseries("Backlog sources", targets(
        (f"orchestrator_todo_source_up{{{INST}}}", "up {{source}}"),
        (f"orchestrator_todo_source_read_duration_seconds{{{INST}}}", "read seconds {{source}}"),
        (f"time() - orchestrator_todo_source_last_success_timestamp_seconds{{{INST}}}",
         "seconds since last read {{source}}")),
        description="Scale-downs wait while any source is down (OrchestratorTodoSourceDown)."), 12, 8)

    lay.row("Cluster (shared queues counted once)")
    lay.add(timeseries("Cluster backlog by status", targets(
        ('status:orchestrator_todo_cluster_backlog:sum{job=~"$job"}', "{{status}}")), minimum=0,
        description="Every source once, however many agents read it (max over agents per source name)."), 8, 8)
    lay.add(timeseries("Cluster pending by capability", targets(
        ('capability:orchestrator_todo_cluster_pending:sum{job=~"$job"}', "{{capability}}")), stack=True,
        minimum=0), 8, 8)
    lay.add(timeseries("Leases expired and completions rejected", targets(
        (f"max without (instance, node) (rate(orchestrator_todo_leases_expired_total{{{INST}}}[$__rate_interval]))",
         "expired {{source}}"),
        (f"max without (instance, node) (rate(orchestrator_todo_completions_rejected_total{{{INST}}}"
         "[$__rate_interval]))", "rejected {{source}}")), unit="ops", minimum=0,
        description="Expired: a worker died or stalled past its lease; the todo went back to pending and its work "
        "may run twice. Rejected: a late completion from an expired claim (docs/todos.md)."), 8, 8)

    lay.row("Scaling ($component)")
    lay.add(timeseries("Demand: arrivals and waiting work, in replicas", targets(
        (f"component:orchestrator_todo_arrival_replicas:sum{{{COMP}}}", "arrivals {{component}}"),
        (f"component:orchestrator_todo_pending_work_seconds:sum{{{COMP}}}"
         f" / on (job, instance, component) orchestrator:backlog_drain_target_seconds{{{COMP}}}",
         "backlog {{component}}")), stack=True, minimum=0,
        description="Little's law: arrivals = seconds per todo x todos per second (the replicas that keep up); "
        "backlog = seconds per todo x pending / drain target (the replicas that work off what waits in time). "
        "Their sum, rounded up and clamped to max, is the desired count by backlog."), 12, 8)
    lay.add(timeseries("Replicas: running vs desired vs desired by backlog", targets(
        (f"orchestrator_component_replicas{{{COMP}}}", "running {{component}}"),
        (f"orchestrator_component_desired_replicas{{{COMP}}}", "desired {{component}}"),
        (f"component:orchestrator_component_desired_replicas:backlog{{{COMP}}}", "by backlog {{component}}"),
        (f"component:orchestrator_component_desired_replicas:backlog_raw{{{COMP}}}", "unclamped {{component}}"),
        (f"orchestrator_component_min_replicas{{{COMP}}}", "min {{component}}"),
        (f"orchestrator_component_max_replicas{{{COMP}}}", "max {{component}}")), minimum=0,
        description="by backlog = ceil(arrivals + backlog) clamped to max, the annotation of scale_to: "
        "OrchestratorBacklogHigh above desired, OrchestratorBacklogLow below it once the stabilisation passed."),
        12, 8)
    lay.add(timeseries("Pending todos the component can serve", targets(
        (f"component:orchestrator_todo_pending:sum{{{COMP}}}", "{{component}}")), minimum=0), 12, 8)
    lay.add(timeseries("Seconds per todo", targets(
        (f"capability:orchestrator_todo_local_seconds_per_todo:ratio{{{INST}}}", "{{capability}}")), unit="s",
        minimum=0, description="One replica's work time per todo (claim to finish, per completion over 5m; the "
        "last measure while nothing completes; 6 s before any)."), 12, 8)
    lay.add(timeseries("Scale-down not before", targets(
        (f"clamp_min(orchestrator_component_scale_down_not_before_timestamp_seconds{{{COMP}}} - time(), 0)",
         "{{component}}")), unit="s", minimum=0,
        description="Seconds until the agent's scale-down stabilisation since its last scale-up has passed "
        "(0: passed); OrchestratorBacklogLow waits for it."), 12, 8)
    for panel in lay.panels:
        if panel["type"] != "timeseries":
            continue
        # Threshold series are those whose legend starts with target / window / threshold / min / max.
        words = {t["legendFormat"].split(" ")[0] for t in panel["targets"]}
        if words & {"target", "window", "threshold", "min", "max"}:
            panel["fieldConfig"]["overrides"] = [{"matcher": {"id": "byRegexp",
                                                              "options": "^(target|window|threshold|min|max) .*"},
                                                  "properties": THRESHOLD_STYLE}]
    return dashboard("orchestrator-backlog", "Orchestrator / Backlog & scaling",
                     "The todo backlog and the scaling decisions drawn against their thresholds.", lay,
                     component_var=True)


def remediation() -> Json:
    lay = Layout()
    lay.add(stat("Autonomy mode", [target(f"orchestrator_autonomy_mode{{{INST}}} == 1", "{{mode}}",
                                          instant=True)], text_mode="name", steps=steps((None, "blue"))), 6, 4)
    lay.add(stat("Emergency stop", targets((f"max(orchestrator_emergency_stop{{{INST}}})", "emergency stop")),
                 mappings=[{"type": "value", "options": {"0": {"text": "off"}, "1": {"text": "ACTIVE"}}}],
                 steps=steps((None, "green"), (1, "red"))), 6, 4)
    lay.add(stat("Actions executed (range)", targets(
        ("sum(" + counted(f'orchestrator_remediation_actions_total{{{INST},result="executed"}}', "$__range")
         + ") or vector(0)", "executed")), steps=steps((None, "blue"))), 6, 4)
    lay.add(stat("Actions failed (range)", targets(
        ("sum(" + counted(f'orchestrator_remediation_actions_total{{{INST},result="failed"}}', "$__range")
         + ") or vector(0)", "failed")), steps=steps((None, "green"), (1, "red"))), 6, 4)

    # Counts, not rates: a decision's series is born at 1, which rate() never sees (counted()).
    lay.add(timeseries("Actions by result", targets(
        (f"sum by (result) ({counted(f'orchestrator_remediation_actions_total{{{INST}}}', '$__rate_interval')})",
         "{{result}}")), bars=True, stack=True), 12, 8)
    lay.add(timeseries("Actions by component and action", targets(
        (f"sum by (component, action) ("
         f"{counted(f'orchestrator_remediation_actions_total{{{INST}}}', '$__rate_interval')})",
         "{{component}} {{action}}")), bars=True, stack=True), 12, 8)
    lay.add(timeseries("Webhook requests by status code", targets(
        (f"sum by (code) (rate(orchestrator_webhook_requests_total{{{INST}}}[$__rate_interval]))", "{{code}}")),
        unit="reqps", stack=True,
        description="4xx are not retried by Alertmanager (OrchestratorWebhookRequestsRejected)."), 12, 8)
    lay.add(timeseries("Action latency", targets(
        (f"histogram_quantile(0.5, sum by (le, action) (rate(orchestrator_remediation_duration_seconds_bucket"
         f"{{{INST}}}[$__rate_interval])))", "p50 {{action}}"),
        (f"histogram_quantile(0.95, sum by (le, action) (rate(orchestrator_remediation_duration_seconds_bucket"
         f"{{{INST}}}[$__rate_interval])))", "p95 {{action}}")), unit="s"), 12, 8)
    lay.add(table("Self-healing alerts firing now", [target(
        'ALERTS{alertname=~"Orchestrator.*",alertstate="firing",action=~".+"}', instant=True, table=True)],
        hide=("Time", "Value", "__name__", "alertstate", "job")), 24, 8)
    return dashboard("orchestrator-remediation", "Orchestrator / Remediation",
                     "What the agent did about alerts: actions by result, webhook status codes, latency.", lay)


def host() -> Json:
    lay = Layout()
    lay.add(timeseries("CPU busy", targets((f"orchestrator_host_cpu_usage_ratio{{{INST}}}", "{{instance}}")),
                       unit="percentunit", minimum=0, maximum=1), 12, 8)
    lay.add(timeseries("Load average", targets(
        (f"orchestrator_host_load1{{{INST}}}", "load1 {{instance}}"),
        (f"orchestrator_host_load5{{{INST}}}", "load5 {{instance}}"),
        (f"orchestrator_host_load15{{{INST}}}", "load15 {{instance}}")), minimum=0), 12, 8)
    lay.add(timeseries("Memory available vs pressure threshold", targets(
        (f"instance:orchestrator_host_memory_available:ratio{{{INST}}}", "{{instance}}"),
        (f"orchestrator:host_memory_available_min_ratio{{{INST}}}", "threshold {{instance}}")),
        unit="percentunit", minimum=0, maximum=1,
        description="Below the threshold: OrchestratorHostMemoryPressure (scale_down of non-essential)."), 12, 8)
    lay.add(timeseries("Memory", targets(
        (f"orchestrator_host_memory_available_bytes{{{INST}}}", "available {{instance}}"),
        (f"orchestrator_host_memory_total_bytes{{{INST}}}", "total {{instance}}")), unit="bytes", minimum=0), 12, 8)
    lay.add(timeseries("Disk free vs thresholds", targets(
        (f"instance_mountpoint:orchestrator_host_disk_free:ratio{{{INST}}}", "{{instance}} {{mountpoint}}"),
        (f"orchestrator:host_disk_free_min_ratio{{{INST}}}", "threshold pressure {{mountpoint}}"),
        (f"orchestrator:host_disk_free_warning_ratio{{{INST}}}", "threshold forecast {{mountpoint}}")),
        unit="percentunit", minimum=0, maximum=1), 12, 8)
    lay.add(timeseries("Disk free and 24h forecast", targets(
        (f"orchestrator_host_disk_free_bytes{{{INST}}}", "free {{mountpoint}}"),
        (f"instance_mountpoint:orchestrator_host_disk_free_bytes:predict_linear24h{{{INST}}}",
         "forecast 24h {{mountpoint}}"),
        (f"orchestrator_host_disk_total_bytes{{{INST}}}", "size {{mountpoint}}")), unit="bytes",
        description="OrchestratorHostDiskFillingUp fires while the forecast is below zero."), 12, 8)
    lay.add(timeseries("Memory by component", targets(
        (f"orchestrator_component_resident_memory_bytes{{{INST}}}", "{{component}}")), unit="bytes",
        stack=True), 12, 8)
    lay.add(timeseries("CPU by component", targets(
        (f"rate(orchestrator_component_cpu_seconds_total{{{INST}}}[$__rate_interval])", "{{component}}")),
        unit="cores", stack=True), 12, 8)
    for panel in lay.panels:
        names = [t["legendFormat"] for t in panel["targets"]]
        if any(n.startswith("threshold") for n in names):
            panel["fieldConfig"]["overrides"] = [
                {"matcher": {"id": "byRegexp", "options": "^threshold.*"}, "properties": THRESHOLD_STYLE}]
    return dashboard("orchestrator-host", "Orchestrator / Host resources",
                     "CPU, load, memory and disk of the host, with the pressure thresholds.", lay)


def drill_down(field: str) -> Json:
    """A data link to the component dashboard for the clicked series (`field` reads its labels)."""
    labels = {"component": "component", "instance": "instance", "job": "job"}
    query = "&".join(f"var-{var}=${{{field}.{label}}}" for var, label in labels.items())
    return {"title": f"Component dashboard: ${{{field}.component}}",
            "url": f"/d/{COMPONENT_UID}/?{query}&${{datasource:queryparam}}&${{__url_time_range}}"}


def add_links(name: str, doc: Json) -> Json:
    """Runbook panel links (RUNBOOK_PANELS) on every dashboard; drill-down data links on the overview."""
    for panel in doc["panels"]:
        alerts = RUNBOOK_PANELS.get(panel["title"], ())
        if alerts:
            panel["links"] = [{"title": f"Runbook: {alert}", "url": _SETTINGS.runbook_url(alert),
                               "targetBlank": True} for alert in alerts]
        if name == "orchestrator-overview.json" and panel["title"] in DRILL_DOWN:
            # A table row's cells are its fields; a time series' labels are the field's labels.
            field = "__data.fields" if panel["type"] == "table" else "__field.labels"
            panel["fieldConfig"]["defaults"]["links"] = [drill_down(field)]
    return doc


_SETTINGS = Settings()

DASHBOARDS = {
    "orchestrator-overview.json": overview,
    "orchestrator-component.json": component,
    "orchestrator-backlog.json": backlog,
    "orchestrator-remediation.json": remediation,
    "orchestrator-host.json": host,
}


def render(settings: Settings = Settings()) -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    global _SETTINGS
    _SETTINGS = settings
    try:
        return {name: json.dumps(add_links(name, build()), indent=2, sort_keys=True) + "\n"
                for name, build in DASHBOARDS.items()}
    finally:
        _SETTINGS = Settings()


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with --check report (exit 1) those that differ from the generator."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare with the committed JSON")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run python scripts/gen_stack.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
