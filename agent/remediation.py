"""Alertmanager webhook -> actions: payload models, the pure plan, dedupe journal, audit, execution.

Rules of the road (docs/remediation.md): only firing alerts with an `action` label act; each alert is
judged on its own status; another node's alert, an unknown component or a disallowed action is
rejected; the same alert (fingerprint + startsAt + action; for scale_to also the step, from -> to) acts
once, also after an agent restart and after a `resolved` for it arrived first; actions stay within
min/max, max_step, cooldown and stabilisation.
Alert content only selects among configured commands: it never reaches a shell or a command line.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent import policy
from agent.config import ACTIONS, Autonomy, Config
from agent.supervisor import CommandError

UNKNOWN_COMPONENT = "_unknown"  # the component label of alerts naming no configured component

if TYPE_CHECKING:
    from agent.app import Agent

log = logging.getLogger("agent.remediation")
audit_log = logging.getLogger("agent.audit")

_INT = re.compile(r"^\d{1,6}$")


# --- payload --------------------------------------------------------------------------------------


class Alert(BaseModel):
    """One alert of Alertmanager's webhook payload (version 4); extra fields are tolerated."""

    model_config = ConfigDict(extra="allow")
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = Field(min_length=1, max_length=64)
    endsAt: str = ""
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=64)


class WebhookPayload(BaseModel):
    """Alertmanager's webhook body, version 4."""

    model_config = ConfigDict(extra="allow")
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(max_length=1000)


# --- the pure plan ----------------------------------------------------------------------------------


class Result(enum.StrEnum):
    EXECUTED = "executed"
    DUPLICATE = "duplicate"
    COOLDOWN = "cooldown"
    REJECTED = "rejected"
    DRY_RUN = "dry_run"
    FAILED = "failed"
    IGNORED = "ignored"


@dataclass(frozen=True)
class ComponentView:
    """What the plan needs to know of a component (a snapshot; no live objects)."""

    desired: int
    minimum: int
    maximum: int
    allowed: tuple[str, ...]
    cooldown: float
    stabilization: float
    max_step: int
    last_restart: float
    last_scale_up: float
    manual_stop: bool
    circuit_open: bool


@dataclass(frozen=True)
class Plan:
    """The decision for one alert: act (result None) or not (result says why)."""

    alertname: str
    component: str
    action: str
    key: str
    result: Result | None = None
    reason: str = ""
    target: int | None = None
    replica: int | None = None

    @property
    def acts(self) -> bool:
        return self.result is None


def _label_int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not _INT.match(value.strip()):
        raise ValueError(f"{name} must be a non-negative integer, got {value[:40]!r}")
    return int(value)


def plan_alert(
    alert: Alert,
    *,
    node: str,
    components: dict[str, ComponentView],
    autonomy: Autonomy,
    emergency: bool,
    seen: Callable[[str], bool],
    now: float,
) -> Plan:
    """Decide what one alert asks for, given a snapshot; pure apart from the `seen` lookup."""
    labels = alert.labels
    alertname = labels.get("alertname", "")[:128]
    action = labels.get("action", "")
    name = labels.get("component", "")
    comp = components.get(name)
    shown = name if comp is not None else ""
    base_key = f"{alert.fingerprint}|{alert.startsAt}"

    def no(result: Result, reason: str, act: str = action) -> Plan:
        return Plan(alertname, shown, act if act in ACTIONS else "", base_key, result, reason)

    if not action:
        return no(Result.IGNORED, "no action label: not for the agent")
    if labels.get("node") and labels["node"] != node:
        return no(Result.IGNORED, "alert for another node")
    if alert.status == "resolved":
        return no(Result.IGNORED, "resolved: recorded, never acted on")
    if action not in ACTIONS:
        return no(Result.REJECTED, "unknown action")
    if comp is None:
        return no(Result.REJECTED, "unknown component")
    if action not in comp.allowed:
        return no(Result.REJECTED, f"action {action} is not allowed for this component")
    try:
        replica = _label_int(labels.get("replica"), "label replica")
        step = _label_int(labels.get("step"), "label step")
        wanted = _label_int(alert.annotations.get("desired_replicas"), "annotation desired_replicas")
    except ValueError as exc:
        return no(Result.REJECTED, str(exc))
    if action == "scale_to" and wanted is None:
        return no(Result.REJECTED, "scale_to needs annotation desired_replicas")
    if replica is not None and (action != "restart" or replica >= max(comp.desired, 1)):
        return no(Result.REJECTED, f"no replica {replica} to {action}")

    target: int | None = None
    if action in ("scale_up", "scale_down"):
        size = min(step if step is not None else 1, comp.max_step)
        target = comp.desired + size if action == "scale_up" else comp.desired - size
    elif action == "scale_to":
        assert wanted is not None
        # At most max_step per delivery: a still-firing alert converges step by step as it is re-sent.
        goal = policy.clamp_replicas(wanted, comp.minimum, comp.maximum)
        target = max(comp.desired - comp.max_step, min(goal, comp.desired + comp.max_step))
    elif action == "start":
        target = max(comp.minimum, 1, comp.desired)
    if target is not None:
        target = policy.clamp_replicas(target, comp.minimum, comp.maximum)
    # The dedupe key: scale_to's key carries its step (from -> to), so each step acts once and only once,
    # and a re-sent alert keeps converging even if someone changed the count in between.
    key = f"{base_key}|{action}" + (f"|{comp.desired}->{target}" if action == "scale_to" else "")

    plan = Plan(alertname, name, action, key, None, "", target, replica)

    def hold(result: Result, reason: str) -> Plan:
        return Plan(alertname, name, action, key, result, reason, target, replica)

    if seen(key) or seen(f"{base_key}|resolved"):
        return hold(Result.DUPLICATE, "already handled" if seen(key) else "stale: resolved already arrived")
    if emergency:
        return hold(Result.REJECTED, "emergency stop in force until `agent autonomy on`")
    if autonomy is Autonomy.OFF:
        return hold(Result.IGNORED, "autonomy off")
    if comp.manual_stop:
        return hold(Result.REJECTED, "stopped by hand: only `agent start` starts it")
    if comp.circuit_open and action in ("restart", "scale_up", "scale_to", "start"):
        return hold(Result.REJECTED, "circuit open: a human must look first")
    if action == "restart" and now - comp.last_restart < comp.cooldown:
        return hold(Result.COOLDOWN, f"restarted {now - comp.last_restart:.0f}s ago (cooldown {comp.cooldown:g}s)")
    if target is not None and target < comp.desired and now - comp.last_scale_up < comp.stabilization:
        return hold(Result.COOLDOWN, f"scaled up {now - comp.last_scale_up:.0f}s ago "
                                     f"(scale-down stabilisation {comp.stabilization:g}s)")
    if target is not None and target == comp.desired and action != "start":
        return hold(Result.IGNORED, f"already at {target} replicas (bounds [{comp.minimum}, {comp.maximum}])")
    if autonomy is Autonomy.DRY_RUN:
        return hold(Result.DRY_RUN, "dry-run: would act")
    return plan


# --- dedupe journal ----------------------------------------------------------------------------------


class DedupeStore:
    """Keys of alerts already acted on, persisted as an fsynced append-only journal with a TTL and a bound.

    `add` records in memory at once (so concurrent deliveries see it); `flush` makes it durable, and an
    action waits for that before running, so a SIGKILL right after acting cannot forget the key.
    """

    def __init__(self, path: Path, ttl: float, max_entries: int) -> None:
        self.path = path
        self.ttl = ttl
        self.max_entries = max_entries
        self.keys: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._pending: list[tuple[str, float]] = []
        self._flushing: asyncio.Future[None] | None = None
        self._load()

    def _load(self) -> None:
        now = time.time()
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read dedupe journal %s: %s", self.path, exc)
            return
        bad = 0
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                key, at = str(entry["k"]), float(entry["t"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            if now - at < self.ttl:
                self.keys[key] = at
                self.keys.move_to_end(key)
        if bad:
            log.warning("dedupe journal %s: skipped %d unreadable line(s)", self.path, bad)
        self._trim()

    def _trim(self) -> None:
        now = time.time()
        while self.keys:
            at = next(iter(self.keys.values()))
            if now - at >= self.ttl or len(self.keys) > self.max_entries:
                self.keys.popitem(last=False)
            else:
                break

    @property
    def pending(self) -> bool:
        """Keys recorded in memory but not yet on disk."""
        return bool(self._pending)

    def seen(self, key: str) -> bool:
        at = self.keys.get(key)
        return at is not None and time.time() - at < self.ttl

    def add(self, key: str) -> None:
        now = time.time()
        self.keys[key] = now
        self.keys.move_to_end(key)
        self._pending.append((key, now))
        self._trim()

    def _write(self, entries: list[tuple[str, float]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"k": k, "t": t}) + "\n" for k, t in entries)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        if self.path.stat().st_size > 200 * max(self.max_entries, 100):
            self._compact()

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for k, t in list(self.keys.items()):
                f.write(json.dumps({"k": k, "t": t}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    async def flush(self) -> None:
        """Make every key added so far durable (one fsync for a batch)."""
        while self._pending or self._flushing is not None:
            if self._flushing is not None:
                await asyncio.shield(self._flushing)
                continue
            batch, self._pending = self._pending, []
            self._flushing = asyncio.get_running_loop().create_future()
            try:
                await asyncio.to_thread(self._write, batch)
            finally:
                done, self._flushing = self._flushing, None
                done.set_result(None)


# --- audit ------------------------------------------------------------------------------------------


@dataclass
class AuditEntry:
    ts: float
    alertname: str
    component: str
    action: str
    result: str
    reason: str
    fingerprint: str
    status: str
    trace_id: str
    source: str = "webhook"
    target: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Remediator:
    """Judges webhook payloads against the live state and carries out the plans in the background."""

    def __init__(self, agent: Agent, dedupe: DedupeStore, history: int = 1000) -> None:
        self.agent = agent
        self.dedupe = dedupe
        self.history: collections.deque[AuditEntry] = collections.deque(maxlen=history)
        self.last_scale_up: dict[str, float] = {}
        self.last_alert_restart: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> Config:
        return self.agent.config

    def views(self) -> dict[str, ComponentView]:
        """A snapshot of every component for the pure plan."""
        views = {}
        sup = self.agent.sup
        for name, rt in sup.components.items():
            spec = rt.spec
            views[name] = ComponentView(
                desired=rt.desired, minimum=spec.replicas.min, maximum=spec.replicas.max,
                allowed=tuple(spec.remediation.allowed_actions), cooldown=spec.remediation.cooldown,
                stabilization=spec.remediation.scale_down_stabilization, max_step=spec.remediation.max_step,
                last_restart=max(rt.last_restart_wall, self.last_alert_restart.get(name, 0.0)),
                last_scale_up=self.last_scale_up.get(name, 0.0),
                manual_stop=rt.manual_stop, circuit_open=rt.circuit.value != "closed",
            )
        return views

    def plan(self, payload: WebhookPayload, record: bool) -> list[Plan]:
        """Plans for every alert; with `record`, keys of acting plans (and resolves) are recorded at once."""
        views = self.views()
        now = time.time()
        plans = []
        for alert in payload.alerts:
            p = plan_alert(alert, node=self.config.agent.node, components=views, autonomy=self.agent.autonomy,
                           emergency=self.agent.emergency, seen=self.dedupe.seen, now=now)
            if record and alert.status == "resolved" and alert.labels.get("action"):
                self.dedupe.add(f"{alert.fingerprint}|{alert.startsAt}|resolved")
            if p.acts:
                # Later alerts in the same payload see this one's effect (in a simulation too).
                if p.target is not None and p.component in views:
                    views[p.component] = _with_desired(views[p.component], p.target, now, p.action)
                if record:
                    self.dedupe.add(p.key)
                    if p.action == "restart":
                        self.last_alert_restart[p.component] = now
            plans.append(p)
        return plans

    def handle(self, payload: WebhookPayload, trace_id: str, parent: Any = None) -> list[dict[str, Any]]:
        """Judge a payload, start the actions in the background, and return per-alert results."""
        plans = self.plan(payload, record=True)
        results = []
        for alert, p in zip(payload.alerts, plans, strict=True):
            body: dict[str, Any] = {"fingerprint": alert.fingerprint, "alertname": p.alertname,
                                    "status": alert.status, "component": p.component, "action": p.action}
            if p.acts:
                body.update(result="accepted", reason="acting in the background", target=p.target)
                self._spawn(self._execute(alert, p, trace_id, parent))
            else:
                assert p.result is not None
                body.update(result=p.result.value, reason=p.reason)
                self.record(alert, p, p.result, p.reason, trace_id)
            results.append(body)
        if self.dedupe.pending:
            # Resolved markers become durable too, even when nothing acts on this payload.
            self._spawn(self.dedupe.flush())
        return results

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, alert: Alert, p: Plan, trace_id: str, parent: Any) -> None:
        started = time.perf_counter()
        sup = self.agent.sup
        attrs = {"component": p.component, "action": p.action, "alertname": p.alertname}
        with self.agent.tracing.span("remediation.action", parent, **attrs) as (span, _, _ctx):
            try:
                await self.dedupe.flush()  # durable before acting
                if p.action == "restart":
                    n = await sup.restart(p.component, "alert", replica=p.replica)
                    outcome, reason = (Result.EXECUTED, f"restarted {n} replica(s)") if n else \
                        (Result.FAILED, "nothing running to restart")
                elif p.action == "start":
                    await sup.start(p.component, "alert")
                    outcome, reason = Result.EXECUTED, f"started ({sup.components[p.component].desired} replicas)"
                else:
                    assert p.target is not None
                    before = await sup.scale(p.component, p.target, "alert")
                    if p.target > before:
                        self.last_scale_up[p.component] = time.time()
                    outcome, reason = Result.EXECUTED, f"replicas {before} -> {p.target}"
            except (CommandError, OSError) as exc:
                outcome, reason = Result.FAILED, str(exc)
            except Exception as exc:
                log.exception("action %s on %s failed", p.action, p.component)
                outcome, reason = Result.FAILED, f"{type(exc).__name__}: {exc}"
            span.set_attribute("result", outcome.value)
        self.agent.events.remediation_duration.observe(p.action, value=time.perf_counter() - started)
        self.record(alert, p, outcome, reason, trace_id)

    def record(self, alert: Alert | None, p: Plan, result: Result, reason: str, trace_id: str,
               source: str = "webhook") -> None:
        """Audit line, history ring and counter for one decision."""
        component = p.component or UNKNOWN_COMPONENT
        action = p.action or "none"
        entry = AuditEntry(
            ts=time.time(), alertname=p.alertname, component=component, action=action, result=result.value,
            reason=reason, fingerprint=alert.fingerprint if alert else "", status=alert.status if alert else "",
            trace_id=trace_id, source=source, target=p.target,
        )
        self.history.append(entry)
        audit_log.info("decision %s %s on %s: %s", result.value, action, component, reason, extra={
            "audit": True, **{k: v for k, v in asdict(entry).items() if k not in ("extra", "ts")}})
        if source != "webhook":
            return  # manual commands are audited, not counted as remediation
        self.agent.events.remediation_actions.inc(component, action, result.value, trace_id=trace_id)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for background actions at shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


def _with_desired(view: ComponentView, desired: int, now: float, action: str) -> ComponentView:
    from dataclasses import replace

    return replace(view, desired=desired,
                   last_scale_up=now if desired > view.desired else view.last_scale_up,
                   last_restart=now if action == "restart" else view.last_restart)
