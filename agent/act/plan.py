"""Alert -> action, the pure decision: what one alert asks for given a snapshot of the components, and
the plans of one delivery in order. The live webhook and `agent backtest` share it.

Rules of the road (docs/remediation.md): only firing alerts with an `action` label act; each alert is
judged on its own status; another node's alert, an unknown component or a disallowed action is
rejected; the same alert (fingerprint + startsAt + action; for scale_to also the step, from -> to) acts
once, also after an agent restart and after a `resolved` for it arrived first; actions stay within
min/max, the step bound (max_step, max_step_percent), cooldown and stabilisation.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from agent.act.dedupe import dedupe_key
from agent.act.payload import Alert
from agent.config.component import ACTIONS
from agent.config.settings import Autonomy
from agent.supervise import policy

_INT = re.compile(r"^\d{1,6}$")


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
    max_step_percent: int
    last_restart: float
    last_scale_up: float
    manual_stop: bool
    circuit_open: bool
    external: bool = False  # no command: never acted on
    pending: int | None = None  # pending todos it serves, as the agent read them last (None: unknown)


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


def step_bound(comp: ComponentView) -> int:
    """The largest change of desired replicas one delivery makes: max_step replicas or max_step_percent % of
    the desired count, whichever is larger (the HPA's default scale-up policy, "4 pods or 100 %")."""
    return max(comp.max_step, -(-comp.desired * comp.max_step_percent // 100))


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
        size = min(step if step is not None else 1, step_bound(comp))
        target = comp.desired + size if action == "scale_up" else comp.desired - size
    elif action == "scale_to":
        assert wanted is not None
        # At most one step bound per delivery: a still-firing alert converges step by step as it is re-sent;
        # with the percentage, a step grows with the count, so doubling reaches any goal in a few deliveries.
        goal = policy.clamp_replicas(wanted, comp.minimum, comp.maximum)
        bound = step_bound(comp)
        target = max(comp.desired - bound, min(goal, comp.desired + bound))
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
    if target is not None and target < comp.desired and comp.pending is not None:
        # A scale-down decided on data older than the delivery: the rule saw `pending_todos`; if more wait
        # now (a surge landed between the evaluation and this delivery), its count no longer holds.
        try:
            decided = _label_int(alert.annotations.get("pending_todos"), "annotation pending_todos")
        except ValueError as exc:
            return hold(Result.REJECTED, str(exc))
        if decided is not None and comp.pending > decided:
            return hold(Result.IGNORED, f"stale: {comp.pending} todos pending now, {decided} when the rule "
                                        "decided; the next evaluation decides again")
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


def _with_desired(view: ComponentView, desired: int, now: float, action: str) -> ComponentView:
    return replace(view, desired=desired,
                   last_scale_up=now if desired > view.desired else view.last_scale_up,
                   last_restart=now if action == "restart" else view.last_restart)
