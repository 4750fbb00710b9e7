"""One backtest: evaluate the rules, simulate Alertmanager, and run every delivery through the agent's plan.

The plan is the live one (agent.act.plan.plan_payload: plan_alert, the dedupe keys, cooldown,
stabilisation, max_step, bounds), given the simulated time of each delivery as its clock. The
replica counts it decides are kept here and never fed back into the series the rules read: the
backtest is open loop (docs/backtest.md).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.act.payload import Alert
from agent.act.plan import ComponentView, Result, plan_payload
from agent.backtest.alertmanager import AlertmanagerConfig, Delivery, fingerprint, load_alertmanager, simulate
from agent.backtest.rules import (
    AlertInstance,
    AlertRule,
    BacktestError,
    Prometheus,
    RuleSet,
    Shipped,
    Source,
    evaluate,
    load_rules,
    parse_duration,
)
from agent.config.models import Config
from agent.config.settings import Autonomy
from agent.config.yamlfile import load_yaml

# A decision no guardrail made: the alert names a component the config read does not have. The live agent
# rejects it as an unknown component; in a backtest it means the config is not the one the agent ran.
NOT_IN_CONFIG = "not_in_config"
# The defaults: the stack this package ships (agent/stack), the same files `agent stack export` writes.
SHIPPED_ALERTMANAGER = Shipped("prometheus/alertmanager.yml")
SHIPPED_PROMETHEUS = "prometheus/prometheus.yml"
_RELATIVE = re.compile(r"^-\s*(\S+)$")


def parse_time(text: str, now: float, what: str) -> float:
    """Unix seconds of an RFC 3339 date-time, `now`, or a relative time such as `-7d` or `-1h30m`."""
    value = text.strip()
    if value == "now":
        return now
    m = _RELATIVE.match(value)
    if m:
        try:
            return now - parse_duration(m.group(1))
        except BacktestError:
            raise BacktestError(f"{what}: not a time: {text!r} (RFC 3339, `now` or relative such as -7d)") from None
    try:
        at = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise BacktestError(f"{what}: not a time: {text!r} (RFC 3339 such as 2026-01-01T00:00:00Z, `now`, "
                            f"or relative such as -7d)") from None
    if at.tzinfo is None:
        raise BacktestError(f"{what}: {text!r} has no time zone (add Z or +HH:MM)")
    return at.timestamp()


def iso(t: float) -> str:
    """RFC 3339 in UTC, as Alertmanager writes startsAt."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{round(t % 1 * 1000):03d}Z" if t % 1 else "Z")


@dataclass
class Policy:
    """What decides: rule files, an Alertmanager config, and the agent's config (bounds, guardrails)."""

    name: str
    rules: RuleSet
    alertmanager: AlertmanagerConfig
    config: Config


def shipped_rules() -> list[Shipped]:
    """The rule files this package ships (rules/*.yml of the exported stack)."""
    from agent.stack import shipped_names

    return [Shipped(relpath) for relpath in shipped_names("rules")]


def shipped_evaluation_interval() -> float:
    """Seconds between evaluations of a rule group without `interval:`: the global evaluation_interval of the
    prometheus.yml this package ships (what Prometheus would use with it)."""
    from agent.stack import shipped

    doc = load_yaml(shipped(SHIPPED_PROMETHEUS))
    return parse_duration(doc["global"]["evaluation_interval"], f"{SHIPPED_PROMETHEUS}: global.evaluation_interval")


def load_policy(name: str, rules: Sequence[Source], alertmanager: Source, config: Config,
                interval: float) -> Policy:
    """Read a policy's files (BacktestError naming the file when one cannot be used)."""
    return Policy(name, load_rules(rules, interval), load_alertmanager(alertmanager), config)


@dataclass
class Row:
    """One decision of the timeline (repeats of the same decision on the same alert are folded in)."""

    time: float
    alert: str
    component: str
    action: str
    result: str
    reason: str
    before: int | None
    after: int | None
    starts_at: str
    fingerprint: str
    repeats: int = 1
    last: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The row in --json output."""
        return {"time": iso(self.time), "alert": self.alert, "component": self.component, "action": self.action,
                "result": self.result, "reason": self.reason, "replicas_before": self.before,
                "replicas_after": self.after, "starts_at": self.starts_at, "fingerprint": self.fingerprint,
                "repeats": self.repeats, "last": iso(self.last or self.time)}


@dataclass
class Outcome:
    """What one policy would have done over the window."""

    policy: str
    start: float
    end: float
    rows: list[Row]
    counts: Counter[tuple[str, str, str]]  # (component, action, result) over every decision, folded or not
    replica_hours: dict[str, float]
    initial: dict[str, int]
    final: dict[str, int]
    deliveries: int
    unrouted: int
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _views(config: Config, initial: dict[str, int]) -> dict[str, ComponentView]:
    views = {}
    for name, spec in config.components.items():
        r = spec.remediation
        desired = min(max(initial.get(name, spec.replicas.start_count), spec.replicas.min), spec.replicas.max)
        views[name] = ComponentView(
            desired=desired, minimum=spec.replicas.min, maximum=spec.replicas.max,
            allowed=tuple(r.allowed_actions), cooldown=r.cooldown, stabilization=r.scale_down_stabilization,
            max_step=r.max_step, max_step_percent=r.max_step_percent, last_restart=0.0, last_scale_up=0.0,
            manual_stop=False, circuit_open=False, external=spec.external)
    return views


def initial_replicas(prom: Prometheus, at: float) -> dict[str, int]:
    """Desired replicas per component as recorded at the start of the window (the simulation starts there)."""
    found = prom.instant("max by (component) (orchestrator_component_desired_replicas)", at)
    return {s["metric"].get("component", ""): int(float(s["value"][1])) for s in found}


def _alert(inst: AlertInstance, status: str, now: float) -> Alert:
    return Alert.model_validate({
        "status": status, "labels": inst.labels, "annotations": inst.annotations_at(now),
        "startsAt": iso(inst.fired), "endsAt": iso(now) if status == "resolved" else "0001-01-01T00:00:00Z",
        "fingerprint": fingerprint(inst.labels)})


def replay(deliveries: list[Delivery], config: Config, initial: dict[str, int], start: float, end: float
           ) -> tuple[list[Row], Counter[tuple[str, str, str]], dict[str, float], dict[str, int]]:
    """Every delivery through the live plan at its own time; the simulated replica counts it leads to."""
    views = _views(config, initial)
    keys: dict[str, float] = {}
    ttl = config.agent.webhook.dedupe_ttl
    rows: list[Row] = []
    last_row: dict[tuple[str, str], Row] = {}
    counts: Counter[tuple[str, str, str]] = Counter()
    changes: dict[str, list[tuple[float, int]]] = {n: [(start, v.desired)] for n, v in views.items()}
    for d in sorted(deliveries, key=lambda d: d.at):
        now = d.at
        alerts = [_alert(i, "firing", now) for i in d.firing] + [_alert(i, "resolved", now) for i in d.resolved]
        running = {n: v.desired for n, v in views.items()}

        def remember(key: str, _marker: bool, now: float = now) -> None:
            keys[key] = now

        def seen(key: str, now: float = now) -> bool:
            return key in keys and now - keys[key] < ttl

        plans = plan_payload(alerts, views, node=config.agent.node, autonomy=Autonomy.ON, emergency=False,
                             seen=seen, now=now, remember=remember)
        for alert, p in zip(alerts, plans, strict=True):
            if alert.status == "resolved":
                continue  # recorded by the agent, never acted on: not a decision of the timeline
            before = running.get(p.component)
            after = before
            if p.acts:
                result = Result.EXECUTED.value
                if p.action == "restart":
                    reason = f"restarted {1 if p.replica is not None else before} replica(s)"
                elif p.action == "start":
                    after = p.target
                    reason = f"started ({p.target} replicas)"
                else:
                    after = p.target
                    reason = f"replicas {before} -> {p.target}"
                if after is not None and after != before:
                    running[p.component] = after
                    changes[p.component].append((now, after))
            else:
                assert p.result is not None
                result, reason = p.result.value, p.reason
                named = alert.labels.get("component", "")
                if p.result is Result.REJECTED and p.action and named and named not in views:
                    result, reason = NOT_IN_CONFIG, f"no component {named!r} in the config read"
            counts[(p.component or alert.labels.get("component", ""), p.action or "none", result)] += 1
            row = Row(now, p.alertname, p.component or alert.labels.get("component", ""), p.action, result,
                      reason, before, after, alert.startsAt, alert.fingerprint, last=now)
            prev = last_row.get((alert.fingerprint, alert.startsAt))
            if prev is not None and _folded(prev) == _folded(row):
                prev.repeats += 1
                prev.last = now
                continue
            last_row[(alert.fingerprint, alert.startsAt)] = row
            rows.append(row)
    hours = {n: _replica_hours(c, end) for n, c in changes.items()}
    return rows, counts, hours, {n: v.desired for n, v in views.items()}


def _folded(row: Row) -> tuple[Any, ...]:
    # "restarted 2400s ago (cooldown 3600s)" changes on every repeat: fold on the guardrail, not the seconds.
    return row.action, row.result, re.sub(r"\d+", "#", row.reason), row.before, row.after


def _replica_hours(changes: list[tuple[float, int]], end: float) -> float:
    total = 0.0
    for (t, n), (t2, _) in zip(changes, [*changes[1:], (end, 0)], strict=True):
        total += n * max(0.0, min(t2, end) - t)
    return total / 3600


def run_policy(prom: Prometheus, policy: Policy, start: float, end: float, initial: dict[str, int]) -> Outcome:
    """Evaluate, route, plan: what this policy would have done in [start, end]."""
    began = time.perf_counter()
    actions = [r for r in policy.rules.alerts if r.labels.get("action")]
    sources = [r for r in policy.rules.alerts if not r.labels.get("action") and _may_inhibit(r, policy)]
    if not actions:
        raise BacktestError(f"policy {policy.name}: no alerting rule with an `action` label in "
                            f"{', '.join(policy.rules.files)}")
    found = evaluate(prom, [*actions, *sources], start, end)
    action_alerts = [i for i in found if i.labels.get("action")]
    deliveries, unrouted = simulate(policy.alertmanager, action_alerts, found, end)
    deliveries = [d for d in deliveries if d.at >= start]
    rows, counts, hours, final = replay(deliveries, policy.config, initial, start, end)
    notes = []
    if policy.rules.stored:
        notes.append("read from the server's recorded series, not recomputed from the given files (a rule that "
                     "reads its own past values, or is used with label matchers): " + ", ".join(policy.rules.stored))
    guessed = sorted(n for n in policy.config.components if n not in initial)
    if guessed:
        notes.append("no orchestrator_component_desired_replicas at --start (started from the config's initial "
                     "count): " + ", ".join(guessed))
    missing = sorted({c for c, _, r in counts if r == NOT_IN_CONFIG})
    if missing:
        notes.append(f"alerts for components not in the config read ({', '.join(missing)}): not refused by a "
                     "guardrail; the config is not the one the agent that recorded these series ran, or they were "
                     "removed from it (-c with the agent's files)")
    if unrouted:
        notes.append(f"{unrouted} firing alert(s) with an action label matched no route to the agent's receiver")
    initial_views = _views(policy.config, initial)
    return Outcome(policy.name, start, end, rows, counts, hours, {n: v.desired for n, v in initial_views.items()},
                   final, len(deliveries), unrouted, notes, time.perf_counter() - began)


def _may_inhibit(rule: AlertRule, policy: Policy) -> bool:
    """Whether a rule without an action can be the source of an inhibition (so it must be evaluated too)."""
    static = {**rule.labels, "alertname": rule.name}
    for inhibit in policy.alertmanager.inhibit:
        if all(m.matches(static) or m.name not in static for m in inhibit.source):
            return True
    return False
