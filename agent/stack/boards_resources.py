"""The dashboards of what the components work on and with: the todo backlog and its scaling, and the host's
resources against their pressure thresholds."""

from __future__ import annotations

from agent.stack.panels import (
    COMP,
    INST,
    THRESHOLD_STYLE,
    Json,
    Layout,
    dashboard,
    targets,
    timeseries,
)


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
