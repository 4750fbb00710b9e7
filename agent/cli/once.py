"""`agent --once` in front: runs the check (agent/export/once.py), asking the config's agent through the
control client (agent/cli/client.py: its URL, control token and TLS trust, as every control verb), and
prints it as a table, JSON or the Prometheus text format; the exit code is the status."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

from agent.cli.client import ControlError, endpoint, unreachable
from agent.config.models import Config
from agent.daemon.eventloop import run
from agent.export.exposition import render
from agent.export.once import Answer, Report, Status, check, report_families
from agent.export.once_agent import ASK_TIMEOUT


def asker(config_args: list[str] | None) -> Callable[[], Awaitable[Answer]]:
    """`GET /api/v1/status` of the config's agent, within ASK_TIMEOUT; never raises."""

    async def ask() -> Answer:
        import httpx

        args = argparse.Namespace(config=config_args, url=None, token_file=None, cacert=None, cert=None, key=None)
        try:
            where = endpoint(args)
        except ControlError as exc:  # no control token to read, or TLS files that do not load
            return Answer("", error=str(exc), refused=True)
        try:
            response = await asyncio.to_thread(where.request, "GET", "/api/v1/status", timeout=ASK_TIMEOUT)
        except httpx.HTTPError as exc:
            error = str(unreachable(where, exc, f"no answer within {ASK_TIMEOUT:g}s"))
            return Answer(where.url, error=error, refused="TLS:" in error)
        if response.status_code in (401, 403):
            return Answer(where.url, error=f"the agent at {where.url} refused the control token "
                          f"({response.status_code}: {response.text[:200].strip()})", refused=True)
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code != 200 or not isinstance(document, dict) or "components" not in document:
            return Answer(where.url, error=f"the agent at {where.url} answered {response.status_code} without its "
                          f"status: {response.text[:200].strip()}")
        return Answer(where.url, status=document)

    return ask


def render_table(report: Report) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colours = {Status.OK: "green", Status.WARNING: "yellow", Status.CRITICAL: "red", Status.UNKNOWN: "magenta"}
    table = Table("check", "status", "detail", title=f"agent --once: {report.status.name} ({report.headline()})")
    for item in report.checks:
        table.add_row(escape(item.name), f"[{colours[item.status]}]{item.status.name}[/]", escape(item.detail))
    for name, result in report.components.items():
        if result is None:
            table.add_row(escape(f"component {name}"), "-", "no probe configured")
    Console().print(table)


def cmd_once(config: Config, fmt: str, config_args: list[str] | None = None) -> int:
    """Run the check and print it; the exit code is the status."""
    try:
        report = run(check(config, asker(config_args)))
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
