"""`agent --once` beside a running agent: which of the three ways the check takes, and the checks read
from the agent's status document. Pure over their inputs (the lock probe, the agent's answer, the
backlog counts, the clock); agent/export/once.py does the I/O.

Why: `--once` used to probe the components itself only. It said OK with the worker at 0 replicas and
a todo waiting (only the agent knows desired against running), and OK with the agent dead (the probes
of external components still passed). docs/once.md is the reference for every rule here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.models import Config
from agent.config.units import clock
from agent.observe.backlog import ANY_CAPABILITY, Counts
from agent.supervise.statelock import LockProbe

ASK_TIMEOUT = 3.0  # seconds for the agent's answer: a check run by cron or Nagios must stay quick


class Status(enum.IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# Which status wins when checks differ: CRITICAL over UNKNOWN (something is known to be wrong), UNKNOWN
# over WARNING (what could not be checked may be worse).
SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}


@dataclass
class Check:
    name: str
    status: Status
    detail: str


class Source(enum.StrEnum):
    """Where the report's component figures come from (the JSON field `source`)."""

    AGENT = "agent"  # the running agent answered: its view (desired against running, circuits, pipeline)
    DIRECT = "direct"  # no agent supervises the state dir (never ran there, or stopped): probed by --once
    AGENT_DOWN = "agent-down"  # an agent should answer and none does: CRITICAL (UNKNOWN when refused); probed too


class Found(enum.StrEnum):
    """What the state dir and the agent's answer say about the agent (the JSON field `agent.state`)."""

    RUNNING = "running"  # it answered GET /api/v1/status
    NEVER_RAN = "never-ran"  # no lock file: no agent ever ran with this state dir
    STOPPED = "stopped"  # the lock is free and its last holder recorded a clean stop
    NOT_RUNNING = "not-running"  # the lock is free and its last holder did not stop cleanly (killed, crashed)
    NOT_ANSWERING = "not-answering"  # the lock is held (or its holder lives) and nothing answers in time
    REFUSED = "refused"  # it answered, but refused the control token or the TLS handshake; or no token to offer
    UNKNOWN = "unknown"  # the lock file cannot be read and nothing answers


@dataclass
class Answer:
    """The running agent's answer to `GET /api/v1/status`, or why there was none."""

    url: str
    status: dict[str, Any] | None = None
    error: str = ""
    refused: bool = False  # credentials or TLS: the agent may well be fine, --once cannot tell


@dataclass
class Finding:
    """The way the check went, and the `agent` check that says so."""

    found: Found
    source: Source
    check: Check
    lock: LockProbe
    url: str | None = None


def must_ask(lock: LockProbe) -> bool:
    """Whether the state dir says an agent may be running: a lock file without a clean stop mark. Then its
    answer decides, and the lock probe only says, when it does not answer, whether it is down or hung.

    A lock that /proc/locks lists free is no proof that the agent is down: /proc/locks shows only the locks
    of the reader's PID namespace, and its device field can differ from the file's st_dev (btrfs,
    overlayfs); trusted alone, it said CRITICAL of a healthy agent.
    """
    return lock.exists and lock.stopped_at is None


def find(state_dir: Path, lock: LockProbe, answer: Answer | None, now: float) -> Finding:
    """Which of the three ways the check takes (docs/once.md, "Three sources")."""

    def made(found: Found, source: Source, status: Status, detail: str) -> Finding:
        return Finding(found, source, Check("agent", status, detail), lock, answer.url if answer else None)

    who = f"pid {lock.pid}" if lock.pid else "a process whose pid it did not record"
    if answer is not None and answer.status is not None:
        doc = answer.status
        mode = doc.get("autonomy", "?")
        said = {"on": "autonomy on", "off": "autonomy off: alerts are recorded, never acted on",
                "dry-run": "autonomy dry-run: alerts are decided and recorded, never acted on"}.get(mode, mode)
        return made(Found.RUNNING, Source.AGENT, Status.OK,
                    f"running at {answer.url} (node {doc.get('node', '?')}, version {doc.get('version', '?')}, "
                    f"{who}); {said}")
    if not lock.exists:
        return made(Found.NEVER_RAN, Source.DIRECT, Status.OK,
                    f"no agent ever ran with state dir {state_dir} (no lock file): the components were probed directly")
    if lock.stopped_at is not None:
        return made(Found.STOPPED, Source.DIRECT, Status.OK,
                    f"the agent was stopped at {clock(lock.stopped_at, now)} ({who} released state dir {state_dir}); "
                    "the components were probed directly")
    # It was asked and did not answer: the lock probe says which (see must_ask for what it cannot prove).
    error = answer.error if answer is not None else "it was not asked"
    if answer is not None and answer.refused:
        return made(Found.REFUSED, Source.AGENT_DOWN, Status.UNKNOWN,
                    f"the agent's state cannot be read: {answer.error}")
    if lock.held or lock.alive:
        holds = "is locked by" if lock.held else "was last held by"
        return made(Found.NOT_ANSWERING, Source.AGENT_DOWN, Status.CRITICAL,
                    f"the agent does not answer: state dir {state_dir} {holds} {who}, but {error}")
    if lock.held is False or lock.alive is False:
        gone = "which is gone" if lock.alive is False else "which no longer holds it"
        last = (f"was last held by pid {lock.pid}, {gone}" if lock.pid
                else "was last held by an agent that did not stop cleanly")
        return made(Found.NOT_RUNNING, Source.AGENT_DOWN, Status.CRITICAL,
                    f"the agent is not running: state dir {state_dir} {last}, and {error}; "
                    "no component is supervised")
    return made(Found.UNKNOWN, Source.AGENT_DOWN, Status.UNKNOWN,
                f"{lock.error or 'cannot tell whether an agent holds state dir ' + str(state_dir)}, and {error}")


def judge_agent(config: Config, doc: Mapping[str, Any], pending: Counts, now: float) -> list[Check]:
    """The checks read from the running agent's status document (docs/once.md, "Status rule")."""
    checks: list[Check] = []
    if doc.get("emergency_stop"):
        checks.append(Check("emergency stop", Status.WARNING, "in force: every component is stopped and autonomy "
                                                              "is off until `agent autonomy on`"))
    reload = doc.get("config") or {}
    if reload.get("last_reload_successful") is False:
        since = f" loaded at {clock(reload['loaded_at'], now)}" if reload.get("loaded_at") else ""
        checks.append(Check("config reload", Status.WARNING,
                            f"the last reload failed: the agent runs the config{since} "
                            "(`agent reload --dry-run` shows the errors)"))
    pipeline = doc.get("alert_pipeline")
    if isinstance(pipeline, dict):
        checks.append(pipeline_check(pipeline, now))
    rows = [c for c in doc.get("components", []) if isinstance(c, dict) and "component" in c]
    for row in rows:
        spec = config.components.get(row["component"])
        checks.append(component_check(row, spec is not None and spec.essential, now))
    checks.extend(idle_work(config, rows, pending))
    return checks


def pipeline_check(pipeline: Mapping[str, Any], now: float) -> Check:
    """CRITICAL while no heartbeat came within the timeout: no alert reaches the agent, so nothing that
    Prometheus decides (scaling, alert-driven restarts) is acted on, and likely no page reaches a person."""
    timeout = pipeline.get("timeout_seconds")
    last = pipeline.get("last_heartbeat")
    count = pipeline.get("heartbeats", 0)
    if pipeline.get("up"):
        said = f"last heartbeat at {clock(last, now)}" if last else "no heartbeat yet, within the timeout"
        return Check("alert pipeline", Status.OK, f"{said} ({count} received; timeout {timeout:g}s)")
    since = pipeline.get("silent_since")
    when = f" since {clock(since, now)}" if since else ""
    return Check("alert pipeline", Status.CRITICAL,
                 f"silent{when}: no heartbeat from Alertmanager within {timeout:g}s ({count} received), so no alert "
                 "reaches the agent; see docs/operations.md, \"When the alert pipeline goes silent\"")


def component_check(row: Mapping[str, Any], essential: bool, now: float) -> Check:
    """One component as the agent sees it: an essential one short of healthy replicas or with its circuit
    open is CRITICAL, another WARNING; a manual stop or 0 desired is no failure; replicas still starting
    are a WARNING."""
    name = row["component"]
    bad = Status.CRITICAL if essential else Status.WARNING
    desired, healthy, running = int(row.get("desired", 0)), int(row.get("healthy", 0)), int(row.get("replicas", 0))
    probe = row.get("last_probe_error") or {}
    why = [f"last probe error: {probe['message']}"] if probe.get("message") else []
    if row.get("last_exit"):
        why.append(f"last exit: {row['last_exit']}")

    def check(status: Status, detail: str, *more: str) -> Check:
        return Check(f"component {name}", status, "; ".join([detail, *more]))

    if row.get("external"):
        if desired == 0:
            return check(Status.OK, "external, no probe: not watched")
        if healthy >= desired:
            return check(Status.OK, "external: its probe passes")
        return check(bad, "external: its probe fails", *why)
    if row.get("manual_stop"):
        return check(Status.OK, f"stopped by hand (`agent start {name}` starts it)")
    if row.get("circuit") == "open":
        until = row.get("circuit_until")
        trial = [f"trial start at {clock(until, now)}"] if until else []
        return check(bad, f"circuit open after {row.get('restarts', 0)} restart(s), {running} of {desired} running",
                     *trial, *why)
    if desired == 0:
        return check(Status.OK, "0 replicas desired")
    if healthy >= desired:
        return check(Status.OK, f"{healthy}/{desired} healthy")
    half = ["circuit half-open (trial start)"] if row.get("circuit") == "half_open" else []
    starting = sum(1 for i in row.get("instances", []) if isinstance(i, dict) and i.get("state") == "starting")
    if starting and healthy + starting >= desired:
        return check(Status.WARNING, f"{healthy}/{desired} healthy, {starting} starting", *half)
    return check(bad, f"{healthy}/{desired} healthy ({running} running, state {row.get('state', '?')})", *half, *why)


def idle_work(config: Config, rows: Iterable[Mapping[str, Any]], pending: Counts) -> list[Check]:
    """Work waiting with nothing to do it: pending todos of a capability that only components at 0 running
    replicas serve (WARNING, one check per capability). A capability no configured component serves is
    not this check's (on a shared queue another node may serve it)."""
    running = {r["component"]: int(r.get("replicas", 0)) for r in rows}
    waiting: dict[str, int] = {}
    for (status, _, cap), n in pending.by_key.items():
        if status == "pending" and n:
            waiting[cap] = waiting.get(cap, 0) + n
    checks = []
    for cap, n in sorted(waiting.items()):
        servers = [name for name, spec in config.components.items()
                   if name in running and cap in spec.served_capabilities]
        if servers and not any(running[s] for s in servers):
            need = "no capability (any)" if cap == ANY_CAPABILITY else cap
            checks.append(Check(f"waiting {cap}", Status.WARNING,
                                f"{n} pending todo(s) need {need}, served only by {', '.join(servers)}, at 0 running "
                                "replicas"))
    return checks
