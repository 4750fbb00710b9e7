"""The agent's own dashboards: the overview of every component, one component in depth, and the remediation
(what the agent did about alerts)."""

from __future__ import annotations

from agent.stack.panels import (
    COMP,
    COMPONENT_UID,
    INST,
    Json,
    Layout,
    counted,
    dashboard,
    stat,
    steps,
    table,
    target,
    targets,
    timeseries,
)


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
        # The heartbeat (OrchestratorWatchdog, heartbeat="true") always fires: 0 means quiet.
        ('count(ALERTS{alertname=~"Orchestrator.*",alertstate="firing",heartbeat!="true"}) or vector(0)',
         "firing")),
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
