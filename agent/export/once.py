"""`agent --once`: one check cycle without starting anything, for cron, CI and monitoring plugins.

Three ways (agent/export/once_agent.py decides which; docs/once.md is the reference):
  agent       the config's agent answers: the components as it sees them, its circuits, its alert pipeline;
  direct      no agent supervises the state dir (none ever ran there, or it stopped): probe every component;
  agent-down  one should and none answers: CRITICAL (UNKNOWN when it refused), and probe them too.

Status rule of the direct probes and the host (Nagios/Icinga plugin convention):
  CRITICAL (2)  an essential component fails its probe, or a disk / host memory has < 5 % left;
  WARNING  (1)  a non-essential component fails its probe, a backlog source is down,
                or a disk / host memory has < 10 % left;
  UNKNOWN  (3)  the config cannot be read, or nothing but the host could be checked (no probe, no
                source) and the host is fine;
  OK       (0)  otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
from agent.export.once_agent import SEVERITY, Answer, Check, Finding, Found, Source, Status, find, judge_agent, must_ask
from agent.observe.backlog import BacklogMonitor, bounded
from agent.observe.httpclient import HttpClient
from agent.observe.probes import ProbeResult, run_probe
from agent.observe.resources import HostUsage, sample_host
from agent.supervise.process import Reaper
from agent.supervise.statelock import probe

__all__ = ["Answer", "Check", "Report", "Source", "Status", "check", "judge", "overall", "report_families"]

CRITICAL_FREE = 0.05
WARNING_FREE = 0.10


@dataclass
class Report:
    status: Status
    checks: list[Check]
    components: dict[str, ProbeResult | None]  # probed by --once (direct, agent-down); empty from the agent
    host: HostUsage
    backlog: BacklogMonitor
    duration: float
    finding: Finding  # which of the three ways the check went, and why
    agent: dict[str, Any] = field(default_factory=dict)  # the running agent's status document, when it answered

    @property
    def source(self) -> Source:
        return self.finding.source

    def headline(self) -> str:
        """What the check did, in a few words (the table's title)."""
        if self.source is Source.DIRECT:
            return "checked directly"
        if self.source is Source.AGENT:
            return f"from the agent at {self.finding.url}"
        return f"agent {self.finding.found.value}; checked directly"

    def _agent_json(self) -> dict[str, Any]:
        f = self.finding
        doc = self.agent
        return {"state": f.found.value, "detail": f.check.detail, "url": f.url or None, "pid": f.lock.pid,
                "stopped_at": f.lock.stopped_at, "node": doc.get("node"), "version": doc.get("version"),
                "autonomy": doc.get("autonomy"), "emergency_stop": doc.get("emergency_stop")}

    def _components_json(self) -> dict[str, Any]:
        if self.source is Source.AGENT:
            worst = {c.name: c.status for c in self.checks}
            return {row["component"]: {
                "ok": worst.get(f"component {row['component']}") is Status.OK,
                "state": row.get("state"), "desired": row.get("desired"), "running": row.get("replicas"),
                "healthy": row.get("healthy"), "manual_stop": bool(row.get("manual_stop")),
                "circuit": row.get("circuit"), "circuit_until": row.get("circuit_until"),
                "external": bool(row.get("external")),
                "last_probe_error": (row.get("last_probe_error") or {}).get("message"),
            } for row in self.agent.get("components", [])}
        return {name: None if r is None else {"ok": r.ok, "reason": r.reason, "message": r.message,
                                              "duration_seconds": round(r.duration, 4)}
                for name, r in self.components.items()}

    def to_json(self) -> dict[str, Any]:
        """The document described by docs/once.schema.json."""
        totals = self.backlog.totals
        return {
            "version": __version__,
            "status": self.status.name,
            "exit_code": int(self.status),
            "source": self.source.value,
            "duration_seconds": round(self.duration, 4),
            "agent": self._agent_json(),
            "checks": [{"name": c.name, "status": c.status.name, "detail": c.detail} for c in self.checks],
            "components": self._components_json(),
            "alert_pipeline": self.agent.get("alert_pipeline"),
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
    """Apply the documented status rule to the direct probes, the backlog sources and the host; pure."""
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
    """Worst status of the checks (CRITICAL over UNKNOWN over WARNING); UNKNOWN when nothing could be checked."""
    worst = max((c.status for c in checks), key=SEVERITY.__getitem__, default=Status.OK)
    if not checked_anything and worst is Status.OK:
        return Status.UNKNOWN
    return worst


async def _probe_all(config: Config, client: HttpClient, reaper: Reaper) -> dict[str, ProbeResult | None]:
    """Every component with a probe, once (replica 0's target), concurrently; None for the others."""
    names = list(config.components)
    probed = [n for n in names if config.components[n].probe is not None]
    results = await asyncio.gather(*(run_probe(config.components[n], 0, client, reaper) for n in probed))
    components: dict[str, ProbeResult | None] = dict.fromkeys(names)
    components.update(zip(probed, results, strict=True))
    return components


async def _observe(config: Config, backlog: BacklogMonitor) -> HostUsage:
    """Read every backlog source and sample the host (CPU over at least 0.1 s), concurrently."""
    psutil.cpu_percent(interval=None)
    await asyncio.gather(backlog.read_all(), asyncio.sleep(0.1))
    return sample_host(config.agent.resources.mountpoints)


async def check(config: Config, ask: Callable[[], Awaitable[Answer]]) -> Report:
    """The whole check: look at the state dir's lock; when an agent may run there, `ask` it (concurrently
    with the backlog and the host) and report from its answer; else, or when it does not answer, probe
    the components directly."""
    started = time.perf_counter()
    state_dir = config.agent.state_dir
    lock = probe(state_dir)
    reaper = Reaper(asyncio.get_running_loop())
    client = HttpClient()
    try:
        backlog = BacklogMonitor(config.backlog.sources, client)
        answer: Answer | None = None
        if must_ask(lock):
            answer, host = await asyncio.gather(ask(), _observe(config, backlog))
        else:
            host = await _observe(config, backlog)
        finding = find(state_dir, lock, answer, time.time())
        components: dict[str, ProbeResult | None] = {}
        if finding.found is not Found.RUNNING:
            components = await _probe_all(config, client, reaper)
    finally:
        await client.aclose()
        reaper.close()
    doc = answer.status if answer is not None and answer.status is not None else {}
    checks = [finding.check]
    if doc:
        checks += judge_agent(config, doc, backlog.totals, time.time())
    checks += judge(config, components, host, backlog)
    probed = any(r is not None for r in components.values())
    status = overall(checks, bool(doc or probed or backlog.sources))
    return Report(status, checks, components, host, backlog, time.perf_counter() - started, finding, doc)


def report_families(report: Report, served: frozenset[str]) -> list[Family]:
    """The check as metric families; a family /metrics has too is built from its definition there.

    `served`, the capabilities configured components serve, bounds the capability label as on /metrics.
    """
    status = Family("orchestrator_check_status", "Result of `agent --once` (0 OK, 1 WARNING, 2 CRITICAL, "
                    "3 UNKNOWN).", value=int(report.status))
    when = Family("orchestrator_check_timestamp_seconds", "When `agent --once` ran.", value=time.time())
    how = Family("orchestrator_check_source", "How `agent --once` checked: 1 for the source it used (agent: "
                    "from the running agent; direct: probed itself; agent-down: none answered where one should).",
                    labels=["source"])
    how.add_metric([report.source.value], 1)
    probes = probe_success_family()
    for name, result in report.components.items():
        if result is not None:
            probes.add_metric([name, "0"], 1 if result.ok else 0)
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
    families = [status, when, how, mem, free, backlog, up]
    if report.source is not Source.AGENT:  # from the agent, nothing was probed by this check
        families.insert(3, probes)
    return families
