"""Alertmanager webhook -> actions: payload models, the pure plan, audit, execution (dedupe keys in dedupe.py).

Rules of the road (docs/remediation.md): only firing alerts with an `action` label act; each alert is
judged on its own status; another node's alert, an unknown component or a disallowed action is
rejected; the same alert (fingerprint + startsAt + action; for scale_to also the step, from -> to) acts
once, also after an agent restart and after a `resolved` for it arrived first; actions stay within
min/max, max_step, cooldown and stabilisation.
Alert content only selects among configured commands: it never reaches a shell or a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.act.dedupe import DedupeStore, dedupe_key
from agent.act.history import HISTORY_FILE, AuditEntry, History, Stamps
from agent.config.models import ACTIONS, Autonomy, Config
from agent.supervise import policy
from agent.supervise.logs import log_direct
from agent.supervise.replica import CommandError

UNKNOWN_COMPONENT = "_unknown"  # the component label of alerts naming no configured component

if TYPE_CHECKING:  # types only: neither imports this module
    from agent.act.modes import Modes
    from agent.export.metrics import EventMetrics
    from agent.export.tracing import Tracing
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.remediation")
audit_log = logging.getLogger("agent.audit")

_INT = re.compile(r"^\d{1,6}$")
# RFC 3339 date-time, as Alertmanager writes it (Go's time.RFC3339Nano): `2023-01-01T00:00:00.000Z`,
# `0001-01-01T00:00:00Z` for "no end". fromisoformat alone would also take `2023-01-01` or `20230101`.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def rfc3339(value: str) -> str:
    """The value if it is an RFC 3339 date-time (kept as sent: it is part of the dedupe key), else ValueError."""
    if not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time such as 2023-01-01T00:00:00.000Z")
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not a valid date-time ({exc})") from None
    return value


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

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        return rfc3339(value)


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
    external: bool = False  # no command: never acted on


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
    base = (alert.fingerprint, alert.startsAt)
    base_key = dedupe_key(*base)

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
    if comp.external:
        return no(Result.REJECTED, "external: the agent has no command for this component and never starts, "
                                   "stops, restarts or scales it")
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
    key = dedupe_key(*base, action, *((f"{comp.desired}->{target}",) if action == "scale_to" else ()))
    resolved_key = dedupe_key(*base, "resolved")

    plan = Plan(alertname, name, action, key, None, "", target, replica)

    def hold(result: Result, reason: str) -> Plan:
        return Plan(alertname, name, action, key, result, reason, target, replica)

    if seen(key) or seen(resolved_key):
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


def plan_payload(
    alerts: Sequence[Alert],
    views: dict[str, ComponentView],
    *,
    node: str,
    autonomy: Autonomy,
    emergency: bool,
    seen: Callable[[str], bool],
    now: float,
    remember: Callable[[str, bool], None] | None = None,
) -> list[Plan]:
    """Plans for the alerts of one delivery, in order, at time `now` (the live webhook and `agent backtest`).

    `views` is updated in place: an acting alert's effect (desired count, scale-up and restart times) is
    seen by the alerts after it. `remember(key, marker)`, when given, records the key of each acting
    plan (marker False) and the `resolved` marker of each resolved alert with an action (marker True),
    so a later alert of the same delivery sees them too.
    """
    plans = []
    for alert in alerts:
        p = plan_alert(alert, node=node, components=views, autonomy=autonomy, emergency=emergency,
                       seen=seen, now=now)
        if remember is not None and alert.status == "resolved" and alert.labels.get("action"):
            remember(dedupe_key(alert.fingerprint, alert.startsAt, "resolved"), True)
        if p.acts:
            if p.component in views:
                view = views[p.component]
                views[p.component] = _with_desired(view, view.desired if p.target is None else p.target, now,
                                                   p.action)
            if remember is not None:
                remember(p.key, False)
        plans.append(p)
    return plans


# --- audit ------------------------------------------------------------------------------------------


class Remediator:
    """Judges webhook payloads against the live state and carries out the plans in the background."""

    def __init__(self, config: Config, supervisor: Supervisor, modes: Modes, dedupe: DedupeStore,
                 events: EventMetrics, tracing: Tracing, history: int = 1000) -> None:
        self.config = config
        self.sup = supervisor
        self.modes = modes
        self.dedupe = dedupe
        self.events = events
        self.tracing = tracing
        # Both survive an agent restart (agent/act/history.py): a scale-down stays held within the
        # stabilisation window of a scale-up before the restart, and `agent history` shows what happened.
        state_dir = config.agent.state_dir
        self.history = History(state_dir / HISTORY_FILE, history)
        self.stamps = Stamps(state_dir)
        self.stamps.keep_only(config.components)  # those of components removed while the agent was down
        self.last_scale_up = self.stamps.last_scale_up
        self.last_alert_restart = self.stamps.last_alert_restart
        self._tasks: set[asyncio.Task[None]] = set()

    def views(self, names: Iterable[str] | None = None) -> dict[str, ComponentView]:
        """A snapshot for the pure plan: of the components named (those that exist), else of every one.

        A delivery's plan looks up only the components its alerts name, so it snapshots only those: its
        cost does not grow with the number of components.
        """
        views = {}
        components = self.sup.components
        for name in components if names is None else names:
            rt = components.get(name)
            if rt is None or name in views:
                continue
            spec = rt.spec
            views[name] = ComponentView(
                desired=rt.desired, minimum=spec.replicas.min, maximum=spec.replicas.max,
                allowed=tuple(spec.remediation.allowed_actions), cooldown=spec.remediation.cooldown,
                stabilization=spec.remediation.scale_down_stabilization, max_step=spec.remediation.max_step,
                last_restart=max(rt.last_restart_wall, self.last_alert_restart.get(name, 0.0)),
                last_scale_up=self.last_scale_up.get(name, 0.0),
                manual_stop=rt.manual_stop, circuit_open=rt.circuit.value != "closed", external=rt.external,
            )
        return views

    def plan(self, payload: WebhookPayload, record: bool) -> list[Plan]:
        """Plans for every alert; with `record`, keys of acting plans (and resolves) are recorded at once."""
        now = time.time()
        # Only ever prevents an action: a resolved marker is kept in memory even if its write fails.
        remember = (lambda key, marker: self.dedupe.add(key, keep_on_failure=marker)) if record else None
        named = [a.labels.get("component", "") for a in payload.alerts]
        plans = plan_payload(payload.alerts, self.views(named), node=self.config.agent.node,
                             autonomy=self.modes.autonomy, emergency=self.modes.emergency,
                             seen=self.dedupe.seen, now=now, remember=remember)
        if record:
            restarted = [p.component for p in plans if p.acts and p.action == "restart"]
            for name in restarted:
                self.last_alert_restart[name] = now
            if restarted:
                self.stamps.save()
        return plans

    def handle(self, payload: WebhookPayload, trace_id: str, parent: Any = None) -> list[dict[str, Any]]:
        """Judge a payload, start the actions in the background, and return per-alert results."""
        plans = self.plan(payload, record=True)
        # Keys are recorded in memory; the journal writes them in the background (no fsync here) and
        # each action waits for that write before it runs.
        journal = self.dedupe.durable()
        results = []
        for alert, p in zip(payload.alerts, plans, strict=True):
            body: dict[str, Any] = {"fingerprint": alert.fingerprint, "alertname": p.alertname,
                                    "status": alert.status, "component": p.component, "action": p.action}
            if p.acts:
                body.update(result="accepted", reason="acting in the background", target=p.target)
                stamp = self.last_alert_restart.get(p.component) if p.action == "restart" else None
                self._spawn(self._execute(alert, p, journal, stamp, trace_id, parent))
            else:
                assert p.result is not None
                body.update(result=p.result.value, reason=p.reason)
                self.record(alert, p, p.result, p.reason, trace_id)
            results.append(body)
        return results

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def _execute(self, alert: Alert, p: Plan, journal: asyncio.Future[OSError | None], stamp: float | None,
                       trace_id: str, parent: Any) -> None:
        started = time.perf_counter()
        attrs = {"component": p.component, "action": p.action, "alertname": p.alertname}
        with self.tracing.span("remediation.action", parent, **attrs) as (span, _, _ctx):
            try:
                error = await asyncio.shield(journal)  # durable before acting
                if error is None:
                    outcome, reason = await self._act(p)
            except asyncio.CancelledError:
                # Only `drain` cancels, at shutdown: answered 200 but not done. Said so, counted, and the key is
                # forgotten (on disk at the drain's flush), so Alertmanager's next delivery acts after the restart.
                self.dedupe.forget(p.key)
                self._unstamp(p.component, stamp)
                self.record(alert, p, Result.FAILED, "not acted: the agent stopped before the action finished; "
                            "the next delivery of the alert acts", trace_id)
                raise
            if error is not None:
                # Not on disk, so not done: the store dropped the key and the next delivery acts.
                outcome, reason = Result.FAILED, f"not acted: the dedupe journal could not be written ({error})"
                self._unstamp(p.component, stamp)
            span.set_attribute("result", outcome.value)
        self.events.remediation_duration.observe(p.action, value=time.perf_counter() - started)
        self.record(alert, p, outcome, reason, trace_id)

    def _unstamp(self, component: str, stamp: float | None) -> None:
        """No restart happened after all: no cooldown from the one this alert stamped."""
        if stamp is not None and self.last_alert_restart.get(component) == stamp:
            del self.last_alert_restart[component]
            self.stamps.save()

    async def _act(self, p: Plan) -> tuple[Result, str]:
        sup = self.sup
        try:
            if p.action == "restart":
                done = await sup.restart(p.component, "alert", replica=p.replica)
                if not done.started and not done.halted and not done.interrupted:
                    return Result.FAILED, "nothing running to restart"
                return (Result.FAILED if done.halted else Result.EXECUTED), done.describe()
            if p.action == "start":
                await sup.start(p.component, "alert")
                return Result.EXECUTED, f"started ({sup.components[p.component].desired} replicas)"
            assert p.target is not None
            before = await sup.scale(p.component, p.target, "alert")
            if p.target > before:
                self.last_scale_up[p.component] = time.time()
                self.stamps.save()
            return Result.EXECUTED, f"replicas {before} -> {p.target}"
        except (CommandError, OSError) as exc:
            return Result.FAILED, str(exc)
        except Exception as exc:
            log.exception("action %s on %s failed", p.action, p.component)
            return Result.FAILED, f"{type(exc).__name__}: {exc}"

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
        # vars, not asdict: the fields logged are plain values, and asdict deep-copies every one. The line goes
        # to the log handlers directly (agent/supervise/logs.py, log_direct), written and flushed to each.
        log_direct(audit_log, f"decision {result.value} {action} on {component}: {reason}", {
            "audit": True, **{k: v for k, v in vars(entry).items() if k not in ("extra", "ts")}})
        if source != "webhook":
            return  # manual commands are audited, not counted as remediation
        self.events.remediation_actions.inc(component, action, result.value, trace_id=trace_id)

    def rollout_halted(self, component: str, why: str) -> None:
        """History entry for a halted rolling restart (a supervisor roll listener)."""
        plan = Plan("rollout_halted", component, "restart", "", Result.FAILED, why)
        self.record(None, plan, Result.FAILED, why, "", source="supervisor")

    async def settle(self, timeout: float) -> int:
        """Wait (bounded) for the accepted actions still in flight; returns how many have not finished."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        return sum(not task.done() for task in self._tasks)

    async def drain(self, timeout: float) -> None:
        """At shutdown: wait (bounded) for the actions in flight; those left are cancelled, recorded as not
        acted and their keys forgotten; then the journal is written (resolved markers too)."""
        if await self.settle(timeout):
            left = [task for task in self._tasks if not task.done()]
            log.error("%d accepted action(s) still waiting at shutdown after %.0fs: not acted, their alerts act "
                      "at their next delivery", len(left), timeout)
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.dedupe.flush(), timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write the timestamps and the history queued so far (blocking: at shutdown, or before a reexec)."""
        self.stamps.close(timeout)
        self.history.close(timeout)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background remediation task failed", exc_info=task.exception())


def _with_desired(view: ComponentView, desired: int, now: float, action: str) -> ComponentView:
    from dataclasses import replace

    return replace(view, desired=desired,
                   last_scale_up=now if desired > view.desired else view.last_scale_up,
                   last_restart=now if action == "restart" else view.last_restart)
