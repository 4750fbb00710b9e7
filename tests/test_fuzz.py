"""Bounded property-based fuzzing of the webhook and the control API against an oracle.

The webhook's agent allows actions, so the fuzzer's alerts can act: every answer must be what the pure
plan (`plan_alert`) says for each alert, and only the alerts it accepts may ever be carried out. The
control API's answers and state changes must be what each command says, nothing else.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.act.dedupe import dedupe_key
from agent.act.payload import WebhookPayload
from agent.act.plan import ComponentView, Plan, plan_alert
from agent.config.component import ACTIONS
from agent.config.settings import Autonomy
from tests.helpers import AgentProcess, wait_for
from tests.metricsutil import scrape

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)
NODE = "node-a"
SLEEP = ["sleep", "1000"]
FAST = {"cooldown": 0, "scale_down_stabilization": 0, "max_step": 2}

def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight (`a | a | b` is still one half each)."""
    return st.sampled_from([s for n, s in options for _ in range(n)]).flatmap(lambda s: s)


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                                                        max_size=4), max_leaves=12)
label_text = st.text(max_size=30) | st.sampled_from(["restart", "scale_up", "web", "start", "../x", "$(id)", ""])
small_int = st.sampled_from(["0", "1", "2", "5", "-1", "01", " 1", "1e3", "999999"])
valid_time = st.sampled_from(["2026-11-24T03:32:05.205Z", "2026-11-24T03:32:06Z", "2026-11-24T03:32:07+02:00"])
FRESH = "(fresh)"  # replaced by a new fingerprint when sent (Hypothesis repeats its own draws)
# Mostly fresh fingerprints, some shared ones: duplicates and firings after their resolve.
fingerprint = st.sampled_from([FRESH, FRESH, FRESH, "a", "b"])
COMPONENTS = ["web", "limited", "zero", "none"]


def alerts(action: st.SearchStrategy[str], component: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed alerts with these action and component labels and fuzzed optional labels."""
    return st.fixed_dictionaries({
        "status": st.sampled_from(["firing", "firing", "resolved"]),
        "labels": st.fixed_dictionaries({"action": action, "component": component}, optional={
            "replica": small_int, "step": small_int, "node": st.sampled_from([NODE, "node-b", ""]),
            "alertname": label_text}),
        "annotations": st.fixed_dictionaries({}, optional={"desired_replicas": small_int, "summary": label_text}),
        "startsAt": valid_time, "fingerprint": fingerprint,
    }, optional={"endsAt": valid_time | st.sampled_from(["0001-01-01T00:00:00Z"])})


# Firing, for this node, a configured component and action, sane numbers: the alerts most likely to act.
likely = st.fixed_dictionaries({
    "status": st.just("firing"),
    "labels": st.fixed_dictionaries({"action": st.sampled_from(ACTIONS), "component": st.sampled_from(COMPONENTS)},
                                    optional={"step": st.sampled_from(["1", "2"]), "node": st.just(NODE)}),
    "annotations": st.fixed_dictionaries({}, optional={"desired_replicas": st.sampled_from(["0", "1", "2", "3"])}),
    "startsAt": valid_time, "fingerprint": fingerprint,
})
good_alert = weighted((3, likely), (2, alerts(st.sampled_from(ACTIONS), st.sampled_from(COMPONENTS))),
                      (1, alerts(st.sampled_from(["stop", "Restart"]) | label_text, st.just("nope") | label_text)))
junk_alert = st.fixed_dictionaries({
    "status": st.sampled_from(["firing", "resolved", "other"]) | st.text(max_size=5),
    "labels": st.dictionaries(st.sampled_from(["action", "component", "replica", "step", "node", "alertname"])
                              | st.text(max_size=8), label_text, max_size=5) | json_value,
    "annotations": st.dictionaries(st.sampled_from(["desired_replicas", "summary"]), label_text, max_size=2),
    "startsAt": valid_time | st.text(max_size=30), "fingerprint": st.text(max_size=20),
})
good_payload = st.fixed_dictionaries({
    "version": st.just("4"), "status": st.sampled_from(["firing", "resolved"]),
    "receiver": st.text(max_size=10), "groupKey": st.text(max_size=10),
    "alerts": st.lists(good_alert, min_size=1, max_size=4),
})
payload_like = weighted((1, good_payload), (2, st.fixed_dictionaries({
    "version": st.sampled_from(["4", "3", 4]), "status": st.sampled_from(["firing", "resolved", "x"]),
    "receiver": st.text(max_size=10), "groupKey": st.text(max_size=10),
    "alerts": st.lists(weighted((1, good_alert), (2, junk_alert)), max_size=4),
})), (1, json_value))
mostly = st.sampled_from([True, True, True, False])


def fresh(body: Any) -> Any:
    """The body with each FRESH fingerprint replaced by a new one."""
    if isinstance(body, dict) and isinstance(body.get("alerts"), list):
        for a in body["alerts"]:
            if isinstance(a, dict) and a.get("fingerprint") == FRESH:
                a["fingerprint"] = uuid.uuid4().hex[:16]
    return body


# --- the webhook ----------------------------------------------------------------------------------

WEBHOOK_COMPONENTS: dict[str, Any] = {
    "web": {"command": SLEEP, "replicas": {"min": 1, "max": 3, "initial": 1}, "remediation": FAST},
    "limited": {"command": SLEEP, "remediation": {**FAST, "allowed_actions": ["restart"]}},
    "zero": {"command": SLEEP, "replicas": {"min": 0, "max": 2, "initial": 0}, "remediation": FAST},
    "none": {"command": SLEEP, "remediation": {**FAST, "allowed_actions": []}},
}


@dataclasses.dataclass
class Webhook:
    """The agent under fuzz, and the test's own record of what it was told and what it accepted."""

    agent: AgentProcess
    token: str
    seen: set[str] = dataclasses.field(default_factory=set)  # dedupe keys, as the plan records them
    accepted: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    proc = AgentProcess(tmp_path_factory.mktemp("fuzz-webhook"), {"agent": {"node": NODE},
                                                                  "components": WEBHOOK_COMPONENTS})
    proc.start()
    try:
        wait_for(lambda: (proc.state_dir / "webhook.token").exists(), 5)
        yield Webhook(proc, (proc.state_dir / "webhook.token").read_text().strip())
    finally:
        proc.stop()


def carried_out(agent: AgentProcess) -> collections.Counter[tuple[str, str]]:
    """Actions carried out (executed or failed in the attempt), by component and action."""
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    for (name, labels), v in scrape(agent.url).items():
        lab = dict(labels)
        if name == "orchestrator_remediation_actions_total" and lab["result"] in ("executed", "failed") and v:
            out[lab["component"], lab["action"]] += int(v)
    return out


def views(agent: AgentProcess) -> dict[str, ComponentView]:
    """What the plan knows of each component, from the live status (no cooldowns in this config)."""
    out = {}
    for name, c in agent.status().items():
        spec = WEBHOOK_COMPONENTS[name]["remediation"]
        out[name] = ComponentView(
            desired=c["desired"], minimum=c["min"], maximum=c["max"],
            allowed=tuple(spec.get("allowed_actions", ACTIONS)), cooldown=0, stabilization=0, max_step=2,
            max_step_percent=100, last_restart=0.0, last_scale_up=0.0, manual_stop=c["manual_stop"],
            circuit_open=c["circuit"] != "closed")
    return out


def expected_plans(payload: WebhookPayload, snapshot: dict[str, ComponentView], seen: set[str],
                   now: float) -> list[Plan]:
    """The plan of each alert in turn, as the agent judges a payload: a later alert sees an earlier one's
    effect and keys (the same order as Remediator.plan)."""
    plans = []
    for a in payload.alerts:
        p = plan_alert(a, node=NODE, components=snapshot, autonomy=Autonomy.ON, emergency=False,
                       seen=seen.__contains__, now=now)
        if a.status == "resolved" and a.labels.get("action"):
            seen.add(dedupe_key(a.fingerprint, a.startsAt, "resolved"))
        if p.acts:
            if p.target is not None:
                snapshot[p.component] = dataclasses.replace(snapshot[p.component], desired=p.target)
            seen.add(p.key)
        plans.append(p)
    return plans


def deliver(webhook: Webhook, content: bytes) -> int:
    """Post a body; check the code, each alert's answer against its plan, and that exactly the accepted
    actions are carried out. Returns the status code."""
    agent = webhook.agent
    try:
        payload: WebhookPayload | None = WebhookPayload.model_validate(json.loads(content))
        code = 200
    except ValueError as exc:  # JSONDecodeError and ValidationError are both ValueErrors
        payload, code = None, 422 if isinstance(exc, ValidationError) else 400
    # Everything accepted so far has been carried out, and nothing else: the last example left no debt.
    assert carried_out(agent) == webhook.accepted
    snapshot = views(agent)
    now = time.time()
    r = httpx.post(agent.url + "/webhook/alertmanager", content=content, timeout=10,
                   headers={"Authorization": f"Bearer {webhook.token}", "Content-Type": "application/json"})
    assert r.status_code == code, r.text
    if payload is not None:
        plans = expected_plans(payload, snapshot, webhook.seen, now)
        results = r.json()["results"]
        assert len(results) == len(plans)
        for alert, p, got in zip(payload.alerts, plans, results, strict=True):
            assert (got["component"], got["action"]) == (p.component, p.action), (got, p)
            if p.acts:
                assert got["result"] == "accepted" and got["target"] == p.target, (got, p)
                # Independently of the plan: only a firing alert for this node, naming a configured
                # component and one of its allowed actions, is ever acted on.
                spec = WEBHOOK_COMPONENTS[alert.labels["component"]]["remediation"]
                assert alert.status == "firing" and alert.labels.get("node", NODE) in (NODE, "")
                assert alert.labels["action"] in spec.get("allowed_actions", ACTIONS)
                webhook.accepted[p.component, p.action] += 1
            else:
                assert p.result is not None
                assert (got["result"], got["reason"]) == (p.result.value, p.reason), (got, p)
    wait_for(lambda: carried_out(agent) == webhook.accepted, 10, 0.01,
             f"exactly the accepted actions carried out: {dict(webhook.accepted)}")
    return r.status_code


@FUZZ
@given(body=good_payload)
def test_webhook_answers_what_the_plan_says_and_acts_only_on_what_it_accepts(webhook: Webhook, body: Any) -> None:
    assert deliver(webhook, json.dumps(fresh(body)).encode()) == 200


@settings(FUZZ, max_examples=80)
@given(body=payload_like, whole=mostly)
def test_webhook_refuses_malformed_bodies_and_acts_on_nothing_they_hold(
        webhook: Webhook, body: Any, whole: bool) -> None:
    content = json.dumps(fresh(body)).encode()
    deliver(webhook, content if whole else content[: max(1, len(content) // 2)])  # or truncated JSON


# --- the control API ------------------------------------------------------------------------------

CONTROL_COMPONENTS: dict[str, Any] = {
    "web": {"command": SLEEP, "replicas": {"min": 1, "max": 3, "initial": 1}},
    "pool": {"command": SLEEP, "replicas": {"min": 0, "max": 2, "initial": 0}},
}
VERBS = ("restart", "scale", "stop", "start")
in_range = st.integers(-1, 4)
number_like = weighted((3, in_range), (1, st.booleans() | st.none() | st.floats(-1, 3) | st.text(max_size=3)))
modes = weighted((3, st.sampled_from([m.value for m in Autonomy])),
                 (1, st.sampled_from(["ON", "dry_run", ""]) | number_like))
# The commands that change state most often; emergency stop (which stops everything) least.
PATHS = (*[f"/api/v1/components/{{}}/{v}" for v in VERBS for _ in range(3)], "/api/v1/autonomy", "/api/v1/autonomy",
         "/api/v1/emergency-stop", "/api/v1/simulate", "/api/v1/history", "/api/v1/status")


def bodies(path: str) -> st.SearchStrategy[Any]:
    """Mostly the body the command takes, with fuzzed values; else any JSON."""
    verb = path.rsplit("/", 1)[1]
    shaped = {
        "restart": st.fixed_dictionaries({}, optional={"replica": number_like}),
        "scale": st.fixed_dictionaries({"replicas": number_like}),
        "autonomy": st.fixed_dictionaries({"mode": modes}),
        "simulate": payload_like,
    }.get(verb, st.just({}))
    return weighted((3, shaped), (1, json_value))


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = AgentProcess(tmp_path_factory.mktemp("fuzz-control"), {"components": CONTROL_COMPONENTS})
    proc.start()
    try:
        wait_for(lambda: (proc.state_dir / "control.token").exists(), 5)
        yield proc
    finally:
        proc.stop()


def snapshot(agent: AgentProcess) -> dict[str, Any]:
    """The state a control command may change: autonomy, emergency stop, each component's desired and
    manual stop."""
    doc = agent.api("GET", "/api/v1/status")
    return {"autonomy": doc["autonomy"], "emergency_stop": doc["emergency_stop"],
            **{c["component"]: (c["desired"], c["manual_stop"]) for c in doc["components"]}}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def expected(path: str, name: str, body: Any, before: dict[str, Any]) -> tuple[set[int], dict[str, Any] | None]:
    """The status codes a command may get and the state after it when it succeeds (None: unchanged)."""
    after = dict(before)
    if path in ("/api/v1/status", "/api/v1/history"):
        return {200}, None
    if path == "/api/v1/emergency-stop":
        after.update({n: (before[n][0], True) for n in CONTROL_COMPONENTS}, autonomy="off", emergency_stop=True)
        return {200}, after
    if path == "/api/v1/simulate":
        try:
            WebhookPayload.model_validate(body)
        except ValidationError:
            return {422}, None
        return {200}, None
    if path == "/api/v1/autonomy":
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in [m.value for m in Autonomy]:
            return {422}, None
        after["autonomy"] = mode
        if mode == "on":
            after["emergency_stop"] = False
        return {200}, after
    verb = path.rsplit("/", 1)[1]
    if not isinstance(body, dict):
        return {422}, None
    if name not in CONTROL_COMPONENTS:
        return {404}, None
    desired, manual = before[name]
    bounds = CONTROL_COMPONENTS[name]["replicas"]
    if verb == "restart":
        replica = body.get("replica")
        if replica is not None and not _is_int(replica):
            return {422}, None
        if manual or before["emergency_stop"]:  # held stopped: refused, with what lifts it
            return {409}, None
        if replica is None:
            return {200}, None
        return ({409} if not 0 <= replica < bounds["max"] else {200, 409}), None
    if verb == "scale":
        replicas = body.get("replicas")
        if not _is_int(replicas):
            return {422}, None
        if not bounds["min"] <= replicas <= bounds["max"]:
            return {409}, None
        after[name] = (replicas, manual)
        return {200}, after
    if verb == "start":
        after[name] = (desired or max(bounds["min"], 1), False)
        return {200}, after
    after[name] = (desired, True)  # stop
    return {200}, after


names = weighted((3, st.sampled_from(list(CONTROL_COMPONENTS))), (1, st.text(min_size=1, max_size=20)))


def command(control: AgentProcess, before: dict[str, Any], path: str, name: str, body: Any,
            with_token: bool = True) -> dict[str, Any]:
    """Send one command; check its code and that the state changed as it says (or not at all). Returns
    the state after it."""
    token = (control.state_dir / "control.token").read_text().strip()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if with_token else {})}
    url = control.url + path.format(quote(name, safe=""))
    method = "GET" if path.endswith(("history", "status")) else "POST"
    if "{}" in path and ("/" in name or name in (".", "..")):
        codes, after = {404}, None  # no such route once the path is decoded and normalised
    elif not with_token:
        codes, after = {401}, None
    else:
        codes, after = expected(path, name, body, before)
    r = httpx.request(method, url, content=json.dumps(body), headers=headers, timeout=10)
    assert r.status_code in codes, (path, name, body, r.status_code, r.text, codes)
    state = snapshot(control)
    assert state == (after if after is not None and r.is_success else before), (path, name, body, r.text)
    return state


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_control_api_answers_and_changes_only_what_the_command_says(control: AgentProcess, data: st.DataObject) -> None:
    # A few commands per example: Hypothesis never repeats an example, and the handful of valid single
    # commands would each run once, in whatever state; in sequences they meet many states.
    state = snapshot(control)
    for _ in range(data.draw(st.integers(1, 4), label="commands")):
        path = data.draw(st.sampled_from(PATHS), label="path")
        state = command(control, state, path, data.draw(names, label="name"), data.draw(bodies(path), label="body"),
                        data.draw(mostly, label="with_token"))


COMPONENT = "/api/v1/components/{}/"


def test_control_api_edge_cases_answer_and_change_only_what_they_say(control: AgentProcess) -> None:
    # Cases the fuzzer may not draw (it favours the first values it is given), in an order that passes
    # through every state: JSON booleans are not numbers, off and emergency stop hold until on, and so on.
    state = snapshot(control)
    for path, name, body in [
        # From whatever state the fuzzer left: no emergency stop, both components started.
        ("/api/v1/autonomy", "", {"mode": "on"}), (COMPONENT + "start", "web", {}), (COMPONENT + "start", "pool", {}),
        (COMPONENT + "restart", "web", {"replica": True}), (COMPONENT + "restart", "web", {"replica": False}),
        (COMPONENT + "restart", "web", {"replica": 0}), (COMPONENT + "restart", "web", {"replica": 7}),
        (COMPONENT + "scale", "web", {"replicas": True}), (COMPONENT + "scale", "web", {"replicas": 2.0}),
        (COMPONENT + "scale", "web", {"replicas": 3}), (COMPONENT + "scale", "web", {"replicas": 4}),
        (COMPONENT + "scale", "pool", {"replicas": 0}), (COMPONENT + "start", "pool", {}),
        (COMPONENT + "stop", "pool", []), (COMPONENT + "stop", "pool", {}), (COMPONENT + "restart", "pool", {}),
        (COMPONENT + "start", "pool", {}), (COMPONENT + "start", "nope", {}),
        ("/api/v1/autonomy", "", {"mode": "off"}), ("/api/v1/autonomy", "", {"mode": "dry-run"}),
        ("/api/v1/autonomy", "", {"mode": True}), ("/api/v1/emergency-stop", "", {}),
        (COMPONENT + "restart", "web", {}), ("/api/v1/autonomy", "", {"mode": "dry-run"}),
        ("/api/v1/autonomy", "", {"mode": "on"}), (COMPONENT + "start", "web", {}),
        (COMPONENT + "start", "pool", {}),
    ]:
        state = command(control, state, path, name, body)
