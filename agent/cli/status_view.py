"""`agent status` for people: the components table, and one component in detail (`agent status NAME`).

Figures that do not apply (CPU, RSS and uptime of a component with no running replica) are null in the
status document and blank here, never the last value seen.
"""

from __future__ import annotations

import time
from typing import Any

from agent.cli.output import human_bytes, print_table, seconds
from agent.config.units import clock


def _cpu(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def print_status(doc: dict[str, Any]) -> None:
    """The components table, then the containment line."""
    title = f"node {doc['node']} · autonomy {doc['autonomy']}" + (" · EMERGENCY STOP" if doc["emergency_stop"] else "")
    rows = [
        [c["component"], c["state"] + (" (manual)" if c["manual_stop"] else ""),
         f"{c['replicas']}/{c['desired']} [{c['min']}..{c['max']}]", f"{c['healthy']}/{c['desired']}",
         c["restarts"], c["last_reason"], seconds(c["uptime_seconds"]), _cpu(c["cpu_seconds"]),
         human_bytes(c["rss_bytes"])]
        for c in doc["components"]
    ]
    print_table(["component", "state", "replicas/desired", "health", "restarts", "last reason", "uptime",
                 "CPU s", "RSS"], rows, title)
    contained = doc.get("containment") or {}
    guardian = contained.get("guardian_pid")
    print(f"containment: {contained.get('mechanism') or '?'} ({contained.get('detail', '')}); guardian "
          + (f"pid {guardian}" if guardian else "NOT RUNNING")
          + f", restarted {contained.get('guardian_restarts', 0)} time(s)")
    pipeline = pipeline_line(doc.get("alert_pipeline"))
    if pipeline:
        print(pipeline)
    page_line = status_page_line(doc.get("status_page"))
    if page_line:
        print(page_line)


def status_page_line(page: dict[str, Any] | None, now: float | None = None) -> str:
    """The status page's failed reads of Prometheus's alerts, and how old the last read is ("" when fine)."""
    if not page or not page.get("alerts_error"):
        return ""
    checked = page.get("alerts_checked_at")
    age = f" (last read {seconds(max(0.0, (time.time() if now is None else now) - checked))} ago)" if checked else ""
    return (f"status page: cannot read alerts from Prometheus ({page.get('alerts_failures', 0)} failed read(s)): "
            f"{page['alerts_error']}{age}")


def pipeline_line(pipeline: dict[str, Any] | None, now: float | None = None) -> str:
    """The alert pipeline's line of `agent status` ("" while no heartbeat_timeout is set)."""
    if not pipeline:
        return ""
    now = time.time() if now is None else now
    timeout = f"heartbeat_timeout {seconds(pipeline['timeout_seconds'])}"
    last = pipeline.get("last_heartbeat")
    if pipeline["up"]:
        said = f"last heartbeat {seconds(max(0.0, now - last))} ago" if last else "no heartbeat yet"
        return f"alert pipeline: OK ({said}; {timeout})"
    since = pipeline["silent_since"]
    return (f"alert pipeline: SILENT since {clock(since, now)} ({seconds(max(0.0, now - since))} ago; {timeout}): "
            "alerts may not reach this agent; see docs/operations.md, \"When the alert pipeline goes silent\"")


def print_component(c: dict[str, Any], history: list[dict[str, Any]], hidden_resolved: int = 0) -> None:
    """One component: its state, replicas, last exit, last probe error and recent history."""
    state = c["state"] + (" (stopped by hand: `agent start " + c["component"] + "` starts it)" if c["manual_stop"]
                          else "")
    print(f"{c['component']}: {state}; replicas {c['replicas']}/{c['desired']} [{c['min']}..{c['max']}], "
          f"healthy {c['healthy']}, restarts {c['restarts']}, circuit {c['circuit']}"
          + (f" (trial start due {clock(c['circuit_until'])})" if c.get("circuit_until") else ""))
    usage = [f"up {seconds(c['uptime_seconds'])}" if c["uptime_seconds"] is not None else "",
             f"CPU {_cpu(c['cpu_seconds'])} s" if c["cpu_seconds"] is not None else "",
             f"RSS {human_bytes(c['rss_bytes'])}" if c["rss_bytes"] is not None else ""]
    if any(usage):
        print("  " + ", ".join(u for u in usage if u))
    print(f"  last exit: {c['last_exit'] or '-'}" + (f" ({c['last_reason']})" if c["last_reason"] else ""))
    probe = c.get("last_probe_error")
    if probe:
        print(f"  last probe error: {probe['message']} (at {clock(probe['ts'])})")
    else:
        print("  last probe error: -")
    print()
    print_table(["replica", "pid", "state", "ready", "healthy", "uptime", "probe error"],
                [[r["replica"], r["pid"], r["state"], "yes" if r["ready"] else "no", "yes" if r["healthy"] else "no",
                  seconds(r["uptime_seconds"]), r["probe_error"]] for r in c.get("instances", [])])
    print()
    if history or hidden_resolved:
        print_history(history, hidden_resolved)
    else:
        print("no history for it yet")


def print_history(entries: list[dict[str, Any]], hidden_resolved: int = 0) -> None:
    """The history table; then how many resolved deliveries it leaves out (`agent history --all` lists them)."""
    print_table(["time", "source", "alert", "component", "action", "result", "reason"],
                [[clock(e["ts"]), e["source"], e["alertname"], e["component"],
                  e["action"], e["result"], e["reason"]] for e in entries])
    if hidden_resolved:
        print(f"{hidden_resolved} resolved deliveries not shown (agent history --all)")
