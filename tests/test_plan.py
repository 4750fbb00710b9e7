"""The alert -> action plan as a pure function: no processes, no sockets, an injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from agent.act.payload import Alert
from agent.act.plan import ComponentView, Result, plan_alert, step_bound
from agent.config.settings import Autonomy

NOW = 1_000_000.0


def view(**kw: Any) -> ComponentView:
    base: dict[str, Any] = {"desired": 2, "minimum": 1, "maximum": 6, "allowed": ("restart", "scale_up", "scale_down",
                                                                                 "scale_to", "start"),
                            "cooldown": 60.0, "stabilization": 300.0, "max_step": 2, "max_step_percent": 0,
                            "last_restart": 0.0,
                            "last_scale_up": 0.0, "manual_stop": False, "circuit_open": False}
    base.update(kw)
    return ComponentView(**base)


def make(labels: dict[str, str], status: str = "firing", **annotations: str) -> Alert:
    return Alert(status=status, labels={"alertname": "A", **labels}, annotations=annotations,
                 startsAt="2026-11-24T03:32:05.205Z", fingerprint="f00")


def plan(alert: Alert, seen: frozenset[str] = frozenset(), autonomy: Autonomy = Autonomy.ON,
         emergency: bool = False, **kw: Any) -> Any:
    return plan_alert(alert, node="n1", components={"c": view(**kw)}, autonomy=autonomy, emergency=emergency,
                      seen=lambda k: k in seen, now=NOW)


def test_restart_acts_with_a_stable_key() -> None:
    p = plan(make({"action": "restart", "component": "c"}))
    assert p.acts and p.key == '["f00","2026-11-24T03:32:05.205Z","restart"]'


def test_key_is_unambiguous_whatever_the_fields_hold() -> None:
    # Two different alerts whose `fingerprint|startsAt|action` joined the same way once shared a key, so
    # the second was dropped as a duplicate. model_construct: the webhook now also refuses such a startsAt.
    labels = {"alertname": "A", "action": "restart", "component": "c"}
    one = Alert.model_construct(status="firing", labels=labels, annotations={}, startsAt="b|c", fingerprint="a")
    two = Alert.model_construct(status="firing", labels=labels, annotations={}, startsAt="c", fingerprint="a|b")
    first = plan(one)
    assert first.acts
    assert plan(two, seen=frozenset({first.key})).acts


@pytest.mark.parametrize(("labels", "result", "reason"), [
    ({"component": "c"}, Result.IGNORED, "no action label"),
    ({"action": "restart", "component": "c", "node": "n2"}, Result.IGNORED, "another node"),
    ({"action": "reboot", "component": "c"}, Result.REJECTED, "unknown action"),
    ({"action": "restart", "component": "nope"}, Result.REJECTED, "unknown component"),
    ({"action": "restart", "component": "c", "replica": "7"}, Result.REJECTED, "no replica 7"),
    ({"action": "scale_up", "component": "c", "step": "-1"}, Result.REJECTED, "non-negative integer"),
])
def test_refusals(labels: dict[str, str], result: Result, reason: str) -> None:
    p = plan(make(labels))
    assert p.result is result and reason in p.reason


def test_resolved_never_acts() -> None:
    assert plan(make({"action": "restart", "component": "c"}, status="resolved")).result is Result.IGNORED


def test_seen_key_and_resolved_marker_are_duplicates() -> None:
    a = make({"action": "restart", "component": "c"})
    assert plan(a, seen=frozenset({'["f00","2026-11-24T03:32:05.205Z","restart"]'})).result is Result.DUPLICATE
    stale = plan(a, seen=frozenset({'["f00","2026-11-24T03:32:05.205Z","resolved"]'}))
    assert stale.result is Result.DUPLICATE and "stale" in stale.reason


def test_modes_and_emergency() -> None:
    a = make({"action": "restart", "component": "c"})
    assert plan(a, autonomy=Autonomy.DRY_RUN).result is Result.DRY_RUN
    assert plan(a, autonomy=Autonomy.OFF).result is Result.IGNORED
    assert plan(a, emergency=True).result is Result.REJECTED


def test_cooldown_and_stabilisation() -> None:
    assert plan(make({"action": "restart", "component": "c"}), last_restart=NOW - 10).result is Result.COOLDOWN
    assert plan(make({"action": "restart", "component": "c"}), last_restart=NOW - 61).acts
    down = make({"action": "scale_down", "component": "c"})
    assert plan(down, last_scale_up=NOW - 299).result is Result.COOLDOWN
    assert plan(down, last_scale_up=NOW - 301).target == 1


def test_scaling_is_clamped_and_stepped() -> None:
    assert plan(make({"action": "scale_up", "component": "c", "step": "9"})).target == 4  # max_step 2, no percent
    assert plan(make({"action": "scale_up", "component": "c"}), desired=6).result is Result.IGNORED  # at max
    up = plan(make({"action": "scale_to", "component": "c"}, desired_replicas="50"))
    assert up.target == 4 and up.key.endswith(',"scale_to","2->4"]')
    assert plan(make({"action": "scale_to", "component": "c"}, desired_replicas="50"), desired=5).target == 6
    assert plan(make({"action": "scale_to", "component": "c"}, desired_replicas="0")).target == 1  # min 1
    assert plan(make({"action": "scale_to", "component": "c"})).result is Result.REJECTED  # no annotation


# --- the step bound: max(max_step, ceil(desired * max_step_percent / 100)), the HPA's "4 pods or 100 %" ---

HPA: dict[str, Any] = {"max_step": 4, "max_step_percent": 100, "minimum": 0, "maximum": 8}


def test_step_bound_is_the_larger_of_the_count_and_the_percentage_rounded_up() -> None:
    assert step_bound(view(desired=1, **HPA)) == 4
    assert step_bound(view(desired=6, **HPA)) == 6
    assert step_bound(view(desired=3, max_step=1, max_step_percent=50)) == 2  # 1.5 rounds up
    assert step_bound(view(desired=7, max_step=3, max_step_percent=0)) == 3


def test_scale_to_doubles_from_one_to_eight_in_two_deliveries() -> None:
    to8 = make({"action": "scale_to", "component": "c"}, desired_replicas="8")
    first = plan(to8, desired=1, **HPA)
    assert first.acts and first.target == 5 and first.key.endswith(',"scale_to","1->5"]')
    second = plan(to8, seen=frozenset({first.key}), desired=5, **HPA)
    assert second.acts and second.target == 8  # 5 + max(4, 5) reaches the goal


def test_scale_to_from_zero_moves_max_step() -> None:
    p = plan(make({"action": "scale_to", "component": "c"}, desired_replicas="8"), desired=0, **HPA)
    assert p.acts and p.target == 4


def test_scale_to_down_moves_the_whole_count_with_percent_100() -> None:
    p = plan(make({"action": "scale_to", "component": "c"}, desired_replicas="0"), desired=8, **HPA)
    assert p.acts and p.target == 0  # max(4, 8): all the way in one delivery, stabilisation permitting
    held = plan(make({"action": "scale_to", "component": "c"}, desired_replicas="0"), desired=8,
                last_scale_up=NOW - 10, **HPA)
    assert held.result is Result.COOLDOWN


def test_percent_zero_keeps_a_fixed_step() -> None:
    fixed = {**HPA, "max_step_percent": 0, "maximum": 20}
    to20 = make({"action": "scale_to", "component": "c"}, desired_replicas="20")
    assert plan(to20, desired=8, **fixed).target == 12
    assert plan(to20, desired=12, **fixed).target == 16
    assert plan(make({"action": "scale_to", "component": "c"}, desired_replicas="0"), desired=12,
                **fixed).target == 8


def test_the_step_label_is_bounded_by_the_step_bound() -> None:
    up = make({"action": "scale_up", "component": "c", "step": "9"})
    assert plan(up, desired=6, **{**HPA, "maximum": 20}).target == 12  # max(4, 6)
    assert plan(up, desired=6, **{**HPA, "maximum": 20, "max_step_percent": 0}).target == 10  # max_step 4
    assert plan(make({"action": "scale_up", "component": "c", "step": "2"}), desired=6,
                **{**HPA, "maximum": 20}).target == 8  # the label asks for less than the bound
    down = make({"action": "scale_down", "component": "c", "step": "9"})
    assert plan(down, desired=6, **{**HPA, "max_step_percent": 50}).target == 2  # max(4, 3)
    assert plan(down, desired=6, **HPA).target == 0


def test_start_goes_to_min_at_least_one() -> None:
    assert plan(make({"action": "start", "component": "c"}), desired=0, minimum=0).target == 1
    assert plan(make({"action": "start", "component": "c"}), desired=0, minimum=3).target == 3


def test_manual_stop_and_open_circuit_block_automation() -> None:
    a = make({"action": "restart", "component": "c"})
    assert plan(a, manual_stop=True).result is Result.REJECTED
    assert plan(a, circuit_open=True).result is Result.REJECTED
    assert plan(make({"action": "scale_down", "component": "c"}), circuit_open=True).acts


def test_disallowed_action() -> None:
    p = plan(make({"action": "scale_up", "component": "c"}), allowed=("restart",))
    assert p.result is Result.REJECTED and "not allowed" in p.reason


# --- plan_payload: one delivery, shared by the webhook and `agent backtest` -----------------------------


def test_payload_alerts_see_the_effect_of_earlier_ones() -> None:
    from agent.act.plan import plan_payload

    views = {"c": view(desired=2)}
    keys: dict[str, bool] = {}
    first = Alert(status="firing", labels={"alertname": "A", "action": "restart", "component": "c"},
                  startsAt="2026-11-24T03:32:05Z", fingerprint="f1")
    second = first.model_copy(update={"fingerprint": "f2"})
    up = Alert(status="firing", labels={"alertname": "B", "action": "scale_up", "component": "c"},
               startsAt="2026-11-24T03:32:05Z", fingerprint="f3")
    gone = Alert(status="resolved", labels={"alertname": "A", "action": "restart", "component": "c"},
                 startsAt="2026-11-24T03:00:00Z", fingerprint="f4")
    plans = plan_payload([first, second, up, gone], views, node="n1", autonomy=Autonomy.ON, emergency=False,
                         seen=lambda k: k in keys, now=NOW, remember=keys.__setitem__)
    assert [p.result for p in plans] == [None, Result.COOLDOWN, None, Result.IGNORED]
    assert plans[1].reason == "restarted 0s ago (cooldown 60s)"  # the first restart's time, in the same payload
    assert views["c"].desired == 3 and views["c"].last_scale_up == NOW and views["c"].last_restart == NOW
    # remember(key, marker): the acting keys, and the resolved alert's marker (kept even if unwritten).
    assert keys == {plans[0].key: False, plans[2].key: False, '["f4","2026-11-24T03:00:00Z","resolved"]': True}
    again = plan_payload([first], views, node="n1", autonomy=Autonomy.ON, emergency=False,
                         seen=lambda k: k in keys, now=NOW + 3600)
    assert again[0].result is Result.DUPLICATE


def test_a_scale_down_decided_before_a_surge_is_not_acted_on() -> None:
    # OrchestratorBacklogLow carries the pending count its scale_to was computed for; when more wait by the
    # time it arrives (todos landed between the evaluation and the delivery), its count no longer holds.
    down = make({"action": "scale_to", "component": "c"}, desired_replicas="1", pending_todos="0")
    stale = plan(down, desired=4, max_step=4, pending=600)
    assert stale.result is Result.IGNORED and not stale.acts
    assert stale.reason == "stale: 600 todos pending now, 0 when the rule decided; the next evaluation decides again"
    assert plan(down, desired=4, max_step=4, pending=0).target == 1  # nothing new: acts
    assert plan(down, desired=4, max_step=4, pending=None).acts  # the agent reads no backlog: the rule decides
    assert plan(make({"action": "scale_to", "component": "c"}, desired_replicas="1"),
                desired=4, max_step=4, pending=600).acts  # no count in the alert (an older rule file)
    # Fewer pending than the rule saw (work went on): still acts.
    fewer = make({"action": "scale_to", "component": "c"}, desired_replicas="2", pending_todos="90")
    assert plan(fewer, desired=4, max_step=4, pending=40).target == 2
    # Only scale-downs: a scale-up with more pending than decided is all the more right.
    up = make({"action": "scale_to", "component": "c"}, desired_replicas="5", pending_todos="10")
    assert plan(up, desired=2, max_step=4, pending=600).target == 5
    bad = plan(make({"action": "scale_to", "component": "c"}, desired_replicas="1", pending_todos="many"),
               desired=4, max_step=4, pending=3)
    assert bad.result is Result.REJECTED and "annotation pending_todos must be a non-negative integer" in bad.reason
