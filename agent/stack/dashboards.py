"""The Grafana dashboards (grafana/dashboards/*.json of the exported stack): the five boards with the
settings' links filled in. The panels are built in agent/stack/boards_agent.py and boards_resources.py
from the blocks of agent/stack/panels.py; here each gets the selector of its job variable, the runbook
links of the panels that draw what an alert judges, and, on the overview, the drill-down links to the
component dashboard (under the settings' Grafana link prefix).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from agent.stack.boards_agent import component, overview, remediation
from agent.stack.boards_resources import backlog, host
from agent.stack.panels import COMPONENT_UID, JOB_QUERY, Json
from agent.stack.settings import Settings

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


def drill_down(field: str, prefix: str = "") -> Json:
    """A data link to the component dashboard for the clicked series (`field` reads its labels); `prefix` is
    where Grafana is served (the settings' grafana_link_prefix)."""
    labels = {"component": "component", "instance": "instance", "job": "job"}
    query = "&".join(f"var-{var}=${{{field}.{label}}}" for var, label in labels.items())
    return {"title": f"Component dashboard: ${{{field}.component}}",
            "url": f"{prefix}/d/{COMPONENT_UID}/?{query}&${{datasource:queryparam}}&${{__url_time_range}}"}


def add_links(name: str, doc: Json, settings: Settings = Settings()) -> Json:
    """The settings' parts of a dashboard: the job variable's selector, runbook panel links (RUNBOOK_PANELS)
    on every dashboard, drill-down data links on the overview."""
    for variable in doc["templating"]["list"]:
        if variable["name"] == "job":
            query = JOB_QUERY.replace("{$SEL}", "{" + settings.selector + "}" if settings.selector else "")
            variable["query"]["query"] = variable["definition"] = query
    for panel in doc["panels"]:
        alerts = RUNBOOK_PANELS.get(panel["title"], ())
        if alerts:
            panel["links"] = [{"title": f"Runbook: {alert}", "url": settings.runbook_url(alert),
                               "targetBlank": True} for alert in alerts]
        if name == "orchestrator-overview.json" and panel["title"] in DRILL_DOWN:
            # A table row's cells are its fields; a time series' labels are the field's labels.
            field = "__data.fields" if panel["type"] == "table" else "__field.labels"
            panel["fieldConfig"]["defaults"]["links"] = [drill_down(field, settings.link_prefix())]
    return doc


DASHBOARDS: dict[str, Callable[[], Json]] = {
    "orchestrator-overview.json": overview,
    "orchestrator-component.json": component,
    "orchestrator-backlog.json": backlog,
    "orchestrator-remediation.json": remediation,
    "orchestrator-host.json": host,
}


def render(settings: Settings = Settings()) -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(add_links(name, build(), settings), indent=2, sort_keys=True) + "\n"
            for name, build in DASHBOARDS.items()}
