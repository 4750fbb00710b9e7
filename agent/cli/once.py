"""`agent --once` in front: runs the check (agent/export/once.py) and prints it as a table, JSON or the
Prometheus text format; the exit code is the status."""

from __future__ import annotations

import json
import sys

from agent.config.models import Config
from agent.daemon.eventloop import run
from agent.export.exposition import render
from agent.export.once import Report, Status, collect, report_families


def render_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {Status.OK: "green", Status.WARNING: "yellow", Status.CRITICAL: "red", Status.UNKNOWN: "magenta"}
    table = Table("check", "status", "detail", title=f"agent --once: {report.status.name}")
    for check in report.checks:
        table.add_row(check.name, f"[{colours[check.status]}]{check.status.name}[/]", check.detail)
    for name, result in report.components.items():
        if result is None:
            table.add_row(f"component {name}", "-", "no probe configured")
    Console().print(table)


def cmd_once(config: Config, fmt: str) -> int:
    """Run the check and print it; the exit code is the status."""
    try:
        report = run(collect(config))
    except Exception as exc:  # a check that cannot run is UNKNOWN, never a traceback
        print(f"UNKNOWN: the check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return int(Status.UNKNOWN)
    if fmt == "json":
        print(json.dumps(report.to_json(), indent=2))
    elif fmt == "prometheus":
        served = frozenset(config.served_capabilities())
        # The renderer /metrics uses, so both outputs escape and format alike.
        sys.stdout.write(render(report_families(report, served), openmetrics=False).decode())
    else:
        render_table(report)
    return int(report.status)
