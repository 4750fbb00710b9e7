"""`agent --once`: one check cycle without starting anything, for cron, CI and monitoring plugins.

Status rule (Nagios/Icinga plugin convention, documented in docs/once.md):
  CRITICAL (2)  an essential component fails its probe, or a disk / host memory has < 5 % left;
  WARNING  (1)  a non-essential component fails its probe, a backlog source is down,
                or a disk / host memory has < 10 % left;
  UNKNOWN  (3)  the config cannot be read, or nothing but the host could be checked (no probe, no
                source) and the host is fine;
  OK       (0)  otherwise.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Any

import psutil

from agent import __version__
from agent.config.models import Config
from agent.export.exposition import Family
from agent.export.families import (
    disk_free_family,
    memory_available_family,
    probe_success_family,
    source_up_family,
    todo_backlog_family,
)
from agent.observe.backlog import BacklogMonitor, bounded
from agent.observe.httpclient import HttpClient
from agent.observe.probes import ProbeResult, run_probe
from agent.observe.resources import HostUsage, sample_host
from agent.supervise.process import Reaper

CRITICAL_FREE = 0.05
WARNING_FREE = 0.10


class Status(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class Report:
    status: Status
    checks: list[Check]
    components: dict[str, ProbeResult | None]
    host: HostUsage
    backlog: BacklogMonitor
    duration: float

    def to_json(self) -> dict[str, Any]:
        """The document described by docs/once.schema.json."""
        totals = self.backlog.totals
        return {
            "version": __version__,
            "status": self.status.name,
            "exit_code": int(self.status),
            "duration_seconds": round(self.duration, 4),
            "checks": [{"name": c.name, "status": c.status.name, "detail": c.detail} for c in self.checks],
            "components": {
                name: None if r is None else {"ok": r.ok, "reason": r.reason, "message": r.message,
                                              "duration_seconds": round(r.duration, 4)}
                for name, r in self.components.items()
            },
            "host": {
                "cpu_usage_ratio": self.host.cpu_ratio,
                "memory_available_bytes": self.host.memory_available,
                "memory_total_bytes": self.host.memory_total,
                "disks": {m: {"free_bytes": self.host.disk_free[m], "total_bytes": self.host.disk_total[m]}
                          for m in self.host.disk_free},
                "load": list(self.host.load),
            },
            "backlog": {
                "sources": {label: {"up": s.up, "error": s.error or None}
                            for label, s in self.backlog.sources.items()},
                "counts": [{"status": k[0], "priority": k[1], "capability": k[2], "count": n}
                           for k, n in sorted(totals.by_key.items())],
            },
        }


def judge(config: Config, components: dict[str, ProbeResult | None], host: HostUsage,
          backlog: BacklogMonitor) -> list[Check]:
    """Apply the documented status rule; pure over its inputs."""
    checks: list[Check] = []
    for name, result in components.items():
        essential = config.components[name].essential
        if result is None:
            continue
        if result.ok:
            checks.append(Check(f"component {name}", Status.OK, result.message))
        else:
            checks.append(Check(f"component {name}", Status.CRITICAL if essential else Status.WARNING,
                                result.message))
    for label, source in backlog.sources.items():
        checks.append(Check(f"backlog {label}", Status.OK if source.up else Status.WARNING,
                            "up" if source.up else source.error))

    def headroom(what: str, free: int, total: int) -> None:
        if total <= 0:
            return
        ratio = free / total
        status = Status.CRITICAL if ratio < CRITICAL_FREE else Status.WARNING if ratio < WARNING_FREE else Status.OK
        checks.append(Check(what, status, f"{ratio:.1%} free"))

    headroom("host memory", host.memory_available, host.memory_total)
    for mount, free in host.disk_free.items():
        headroom(f"disk {mount}", free, host.disk_total.get(mount, 0))
    return checks


def overall(checks: list[Check], checked_anything: bool) -> Status:
    """Worst status of the checks; UNKNOWN when nothing could be checked."""
    worst = max((c.status for c in checks), default=Status.OK)
    if not checked_anything and worst is Status.OK:
        return Status.UNKNOWN
    return worst


async def collect(config: Config) -> Report:
    """Probe every component once (replica 0's target), sample the host, read the backlog."""
    started = time.perf_counter()
    reaper = Reaper(asyncio.get_running_loop())
    client = HttpClient()
    try:
        names = list(config.components)
        probed = [n for n in names if config.components[n].probe is not None]
        results = await asyncio.gather(*(run_probe(config.components[n], 0, client, reaper) for n in probed))
        components: dict[str, ProbeResult | None] = dict.fromkeys(names)
        components.update(zip(probed, results, strict=True))
        backlog = BacklogMonitor(config.backlog.sources, client)
        psutil.cpu_percent(interval=None)
        await asyncio.gather(backlog.read_all(), asyncio.sleep(0.1))
        host = sample_host(config.agent.resources.mountpoints)
    finally:
        await client.aclose()
        reaper.close()
    checks = judge(config, components, host, backlog)
    status = overall(checks, bool(probed or backlog.sources))
    return Report(status, checks, components, host, backlog, time.perf_counter() - started)


def report_families(report: Report, served: frozenset[str]) -> list[Family]:
    """The check as metric families; a family /metrics has too is built from its definition there.

    `served`, the capabilities configured components serve, bounds the capability label as on /metrics.
    """
    status = Family("orchestrator_check_status", "Result of `agent --once` (0 OK, 1 WARNING, 2 CRITICAL, "
                    "3 UNKNOWN).", value=int(report.status))
    when = Family("orchestrator_check_timestamp_seconds", "When `agent --once` ran.", value=time.time())
    probe = probe_success_family()
    for name, result in report.components.items():
        if result is not None:
            probe.add_metric([name, "0"], 1 if result.ok else 0)
    mem = memory_available_family(report.host.memory_available)
    free = disk_free_family()
    for mount, value in report.host.disk_free.items():
        free.add_metric([mount], value)
    backlog = todo_backlog_family()
    for key, n in sorted(bounded(report.backlog.totals, served).by_key.items()):
        backlog.add_metric(list(key), n)
    up = source_up_family()
    for label, source in report.backlog.sources.items():
        up.add_metric([label], 1 if source.up else 0)
    return [status, when, probe, mem, free, backlog, up]
