"""Carrying out the plans of alerts: the Remediator judges a delivery against the live state
(agent/act/plan.py), acts in the background, and records every decision (audit line, history, counter).

An accepted action waits until its dedupe key is on disk (agent/act/dedupe.py), so the same alert acts
once, also after an agent restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from agent.act.history import HISTORY_FILE, AuditEntry, History, Stamps
from agent.act.pipeline import AlertPipeline, heartbeat_answer, is_heartbeat
from agent.act.plan import ComponentView, Plan, Result, plan_payload
from agent.supervise.logs import log_direct
from agent.supervise.replica import CommandError

UNKNOWN_COMPONENT = "_unknown"  # the component label of alerts naming no configured component

if TYPE_CHECKING:  # types only: neither imports this module
    from agent.act.dedupe import DedupeStore
    from agent.act.modes import Modes
    from agent.act.payload import Alert, WebhookPayload
    from agent.config.models import Config
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.remediation")
audit_log = logging.getLogger("agent.audit")


class DecisionMetrics(Protocol):
    """Where decisions and action times are counted (the event metrics /metrics serves)."""

    def decided(self, component: str, action: str, result: str, trace_id: str) -> None:
        """Count one remediation decision."""

    def action_took(self, action: str, seconds: float) -> None:
        """Record how long one action took to carry out."""


class Tracer(Protocol):
    """Spans for the actions: `with span(...) as (span, trace_id, parent)`; span has set_attribute."""

    def span(self, name: str, parent: Any = None, **attributes: Any) -> AbstractContextManager[tuple[Any, str, Any]]:
        """A span; yields it, its trace id (hex) and a parent for child spans started later."""
        ...


class Remediator:
    """Judges webhook payloads against the live state and carries out the plans in the background."""

    def __init__(self, config: Config, supervisor: Supervisor, modes: Modes, dedupe: DedupeStore,
                 events: DecisionMetrics, tracing: Tracer, history: int = 1000) -> None:
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
        # The alert pipeline's heartbeat (agent/act/pipeline.py); its last one is kept in remediation.json.
        self.pipeline = AlertPipeline(config.agent.webhook.heartbeat_timeout, last=self.stamps.last_heartbeat,
                                      save=self.stamps.save_heartbeat)
        self._tasks: set[asyncio.Task[None]] = set()
        # Pending todos that need any of the given capabilities, as the backlog last read them (None:
        # unknown); the daemon hands in the backlog monitor's. A scale-down checks it against the rule's.
        self.pending_todos: Callable[[Iterable[str]], int | None] = lambda capabilities: None

    def configure(self, config: Config) -> None:
        """A reload's config: the plan reads it from the next alert on; the dedupe bounds apply too."""
        self.config = config
        self.dedupe.configure(config.agent.webhook)
        self.pipeline.configure(config.agent.webhook.heartbeat_timeout)

    def forget_removed(self, components: Collection[str]) -> None:
        """Once a reload's removed components are gone: their cooldown and stabilisation timestamps go."""
        self.stamps.keep_only(components)

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
                max_step_percent=spec.remediation.max_step_percent,
                last_restart=max(rt.last_restart_wall, self.last_alert_restart.get(name, 0.0)),
                last_scale_up=self.last_scale_up.get(name, 0.0),
                manual_stop=rt.manual_stop, circuit_open=rt.circuit.value != "closed", external=rt.external,
                pending=self.pending_todos(spec.served_capabilities) if spec.served_capabilities else None,
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
        """Judge a payload, start the actions in the background, and return per-alert results.

        Heartbeats (agent/act/pipeline.py) are taken out first: recorded and counted, never planned, acted on,
        keyed or written to the history, whatever the autonomy mode. The rest of the delivery goes on as ever.
        """
        beats = [is_heartbeat(alert) for alert in payload.alerts]
        if any(beats):
            alerts = [alert for alert, beat in zip(payload.alerts, beats, strict=True) if not beat]
            answers = iter(self.handle(payload.model_copy(update={"alerts": alerts}), trace_id, parent)
                           if alerts else [])
            return [self._heartbeat(alert) if beat else next(answers)
                    for alert, beat in zip(payload.alerts, beats, strict=True)]
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

    def _heartbeat(self, alert: Alert) -> dict[str, Any]:
        """One heartbeat of a delivery: recorded and counted by the pipeline, its answer."""
        body: dict[str, Any] = {"fingerprint": alert.fingerprint, "alertname": alert.labels.get("alertname", "")[:128],
                                "status": alert.status, "component": "", "action": ""}
        if alert.status == "firing":
            self.pipeline.heartbeat()
        else:
            self.pipeline.heartbeat_resolved()
        result, reason = heartbeat_answer(alert)
        return {**body, "result": result, "reason": reason}

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
        self.events.action_took(p.action, time.perf_counter() - started)
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
               source: str = "webhook", extra: dict[str, Any] | None = None, audit: bool = True) -> None:
        """Audit line, history ring and counter for one decision (webhook decisions only are counted).

        `audit` False: no audit line, for what the supervisor decided and has logged already (a restart after
        an exit, a circuit opening): the history gets the entry, the log says it once."""
        component = p.component or UNKNOWN_COMPONENT
        action = p.action or "none"
        entry = AuditEntry(
            ts=time.time(), alertname=p.alertname, component=component, action=action, result=result.value,
            reason=reason, fingerprint=alert.fingerprint if alert else "", status=alert.status if alert else "",
            trace_id=trace_id, source=source, target=p.target, extra=extra or {},
        )
        self.history.append(entry)
        if not audit:
            return
        # vars, not asdict: the fields logged are plain values, and asdict deep-copies every one. The line goes
        # to the log handlers directly (agent/supervise/logs.py, log_direct), written and flushed to each.
        log_direct(audit_log, f"decision {result.value} {action} on {component}: {reason}", {
            "audit": True, **{k: v for k, v in vars(entry).items() if k not in ("extra", "ts")}})
        if source != "webhook":
            return  # manual commands are audited, not counted as remediation
        self.events.decided(component, action, result.value, trace_id)

    def rollout_halted(self, component: str, why: str) -> None:
        """History entry for a halted rolling restart (a supervisor roll listener)."""
        plan = Plan("rollout_halted", component, "restart", "", Result.FAILED, why)
        self.record(None, plan, Result.FAILED, why, "", source="supervisor")

    def restarted(self, component: str, reason: str, detail: str) -> None:
        """History entry for a restart the supervisor decided itself (a supervisor restart listener):
        `reason` exit, probe, resource or spawn; `detail` what happened (exit status, probe error, limit)."""
        plan = Plan("restart", component, "restart", "", Result.EXECUTED, detail)
        self.record(None, plan, Result.EXECUTED, f"{reason}: {detail}", "", source="supervisor",
                    extra={"reason": reason}, audit=False)

    def circuit_changed(self, component: str, opened: bool, why: str) -> None:
        """History entry for a circuit that opened (no more restarts) or closed (a supervisor circuit listener)."""
        name, result = ("circuit_open", Result.FAILED) if opened else ("circuit_closed", Result.EXECUTED)
        plan = Plan(name, component, "", "", result, why)
        self.record(None, plan, result, why, "", source="supervisor", audit=False)

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
        self.pipeline.close()
        self.stamps.close(timeout)
        self.history.close(timeout)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background remediation task failed", exc_info=task.exception())
