"""The Alertmanager webhook on a live agent: actions, exactly-once, guardrails, modes, audit."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import AgentProcess, pid_alive, wait_for
from tests.metricsutil import scrape, value
from tests.webhookutil import alert, fixture, payload

SLEEP = ["sleep", "1000"]


def components() -> dict[str, Any]:
    fast = {"cooldown": 0, "scale_down_stabilization": 0, "max_step": 2, "max_step_percent": 0}
    return {
        "web": {"command": SLEEP, "replicas": {"min": 1, "max": 3, "initial": 2}, "remediation": fast},
        "pool": {"command": SLEEP, "replicas": {"min": 1, "max": 4, "initial": 1}, "remediation": fast},
        "held": {"command": SLEEP, "replicas": {"min": 1, "max": 4, "initial": 1},
                 "remediation": {"cooldown": 0, "scale_down_stabilization": 300}},
        "zero": {"command": SLEEP, "replicas": {"min": 0, "max": 2, "initial": 0}, "remediation": fast},
        "limited": {"command": SLEEP, "remediation": {"allowed_actions": ["restart"], "cooldown": 0}},
        "cool": {"command": SLEEP, "remediation": {"cooldown": 60}},
    }


class Hook:
    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.token = (agent.state_dir / "webhook.token").read_text().strip()
        self.control = (agent.state_dir / "control.token").read_text().strip()

    def post(self, body: Any, token: str | None = "default", **kw: Any) -> httpx.Response:
        headers = kw.pop("headers", {})
        if token == "default":
            token = self.token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(body, dict | list):
            kw["json"] = body
        else:
            kw["content"] = body
        return httpx.post(self.agent.url + "/webhook/alertmanager", headers=headers, timeout=10, **kw)

    def send(self, *alerts: dict[str, Any]) -> list[dict[str, Any]]:
        r = self.post(payload(*alerts))
        assert r.status_code == 200, r.text
        results: list[dict[str, Any]] = r.json()["results"]
        return results

    def api(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return httpx.request(method, self.agent.url + path, json=body, timeout=30,
                             headers={"Authorization": f"Bearer {self.control}"})

    def status(self) -> dict[str, dict[str, Any]]:
        return {c["component"]: c for c in self.api("GET", "/api/v1/status").json()["components"]}

    def pids(self) -> dict[str, list[int]]:
        return {name: sorted(c["pids"]) for name, c in self.status().items()}

    def counter(self, component: str, action: str, result: str) -> float:
        return value(scrape(self.agent.url), "orchestrator_remediation_actions_total", component=component,
                     action=action, result=result) or 0.0

    def wait_result(self, component: str, action: str, result: str, n: float = 1) -> None:
        wait_for(lambda: self.counter(component, action, result) >= n, 10, 0.02,
                 f"{result} {action} on {component} x{n}")


def start_hook(tmp: Path, extra: dict[str, Any] | None = None) -> Hook:
    """An agent with components() (and `extra`), every replica up."""
    agent = AgentProcess(tmp, {"agent": {"node": "node-a", "webhook": {"max_body_bytes": 65536}},
                               "components": {**components(), **(extra or {})}})
    agent.start()
    wait_for(lambda: (agent.state_dir / "control.token").exists(), 5)
    h = Hook(agent)
    wait_for(lambda: all(len(p) == {"web": 2, "zero": 0}.get(n, 1) for n, p in h.pids().items()), 10)
    return h


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[Hook]:
    """A fresh agent per test, for tests that act: none sees another's restarts, scales or cooldowns."""
    h = start_hook(tmp_path)
    try:
        yield h
    finally:
        h.agent.stop()


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hook]:
    """One agent shared by the tests whose requests are all refused (4xx, rejected, ignored, simulated):
    nothing they send changes a component, and each asserts on the deltas it measures itself."""
    h = start_hook(tmp_path_factory.mktemp("refusing"))
    try:
        yield h
    finally:
        h.agent.stop()


# --- each action ----------------------------------------------------------------------------------


def test_restart_all_replicas_then_resolved_does_nothing(hook: Hook) -> None:
    before = hook.pids()["web"]
    a = alert({"action": "restart", "component": "web"})
    assert hook.send(a)[0]["result"] == "accepted"
    hook.wait_result("web", "restart", "executed")
    after = wait_for(lambda: (p := hook.pids()["web"]) and len(p) == 2 and not set(p) & set(before) and p, 10)
    assert not any(pid_alive(p) for p in before)
    restarts = value(scrape(hook.agent.url), "orchestrator_component_restarts_total", component="web",
                     reason="alert")
    assert restarts == 2
    resolved = dict(a, status="resolved")
    assert hook.send(resolved)[0]["result"] == "ignored"
    assert hook.pids()["web"] == after


def test_restart_one_replica_by_label(hook: Hook) -> None:
    before = hook.pids()["web"]
    r0 = hook.status()["web"]["pids"]
    hook.send(alert({"action": "restart", "component": "web", "replica": "1"}))
    wait_for(lambda: hook.status()["web"]["pids"][0] == r0[0] and hook.status()["web"]["pids"][1] != r0[1], 10)
    assert pid_alive(r0[0]) and not pid_alive(r0[1])
    assert len(set(hook.pids()["web"]) & set(before)) == 1


def test_scale_up_down_and_to_within_bounds(hook: Hook) -> None:
    def desired() -> int:
        return int(hook.status()["pool"]["desired"])

    start = desired()
    hook.send(alert({"action": "scale_up", "component": "pool"}))
    wait_for(lambda: desired() == start + 1, 10)
    hook.send(alert({"action": "scale_up", "component": "pool", "step": "5"}))  # max_step 2, max 4
    wait_for(lambda: desired() == min(start + 3, 4), 10)
    wait_for(lambda: len(hook.pids()["pool"]) == desired(), 10)
    hook.send(alert({"action": "scale_to", "component": "pool"}, annotations={"desired_replicas": "99"}))
    wait_for(lambda: desired() == 4, 10)
    # Down from 4 to 1 with max_step 2: one step per delivery of the same alert, each step once.
    down = alert({"action": "scale_to", "component": "pool"}, annotations={"desired_replicas": "1"})
    assert hook.send(down)[0]["target"] == 2
    wait_for(lambda: desired() == 2, 10)
    assert hook.send(down)[0]["target"] == 1
    wait_for(lambda: desired() == 1 and len(hook.pids()["pool"]) == 1, 10)
    assert hook.send(down)[0]["result"] == "ignored"  # at the goal: nothing left to do
    res = hook.send(alert({"action": "scale_down", "component": "pool"}))  # at min already
    assert res[0]["result"] == "ignored" and "already at 1" in res[0]["reason"]
    assert desired() == 1


def test_scale_down_waits_for_the_stabilisation_window(hook: Hook) -> None:
    hook.send(alert({"action": "scale_up", "component": "held"}))
    wait_for(lambda: hook.status()["held"]["desired"] == 2, 10)
    res = hook.send(alert({"action": "scale_down", "component": "held"}))
    assert res[0]["result"] == "cooldown" and "stabilisation" in res[0]["reason"]
    assert hook.status()["held"]["desired"] == 2


def test_start_brings_a_zero_component_to_at_least_one(hook: Hook) -> None:
    assert hook.pids()["zero"] == []
    hook.send(alert({"action": "start", "component": "zero"}))
    wait_for(lambda: len(hook.pids()["zero"]) == 1, 10)


def test_restart_cooldown_holds(hook: Hook) -> None:
    hook.send(alert({"action": "restart", "component": "cool"}))
    hook.wait_result("cool", "restart", "executed")
    pids = hook.pids()["cool"]
    res = hook.send(alert({"action": "restart", "component": "cool"}))  # another alert, within 60 s
    assert res[0]["result"] == "cooldown"
    assert hook.pids()["cool"] == pids


# --- exactly once ---------------------------------------------------------------------------------


def test_same_payload_five_times_in_a_row_and_concurrently_acts_once(hook: Hook) -> None:
    for label, parallel in (("sequential", False), ("concurrent", True)):
        before_exec = hook.counter("limited", "restart", "executed")
        before_dup = hook.counter("limited", "restart", "duplicate")
        body = payload(alert({"action": "restart", "component": "limited", "t": label}))
        if parallel:
            with concurrent.futures.ThreadPoolExecutor(5) as pool:
                codes = list(pool.map(lambda _, b=body: hook.post(b).status_code, range(5)))
        else:
            codes = [hook.post(body).status_code for _ in range(5)]
        assert codes == [200] * 5
        hook.wait_result("limited", "restart", "executed", before_exec + 1)
        hook.wait_result("limited", "restart", "duplicate", before_dup + 4)
        assert hook.counter("limited", "restart", "executed") == before_exec + 1


def test_stale_firing_after_resolved_does_not_act(refusing: Hook) -> None:
    a = alert({"action": "restart", "component": "limited"})
    pids = refusing.pids()["limited"]
    assert refusing.send(dict(a, status="resolved"))[0]["result"] == "ignored"
    res = refusing.send(a)  # the HA peer's late firing, same fingerprint and startsAt
    assert res[0]["result"] == "duplicate" and "stale" in res[0]["reason"]
    assert refusing.pids()["limited"] == pids


# --- guardrails: one test per case ------------------------------------------------------------------


def refused(hook: Hook) -> float:
    """All rejected and ignored decisions so far, whatever the labels."""
    return sum(v for (name, labels), v in scrape(hook.agent.url).items()
               if name == "orchestrator_remediation_actions_total"
               and dict(labels)["result"] in ("rejected", "ignored"))


def code_count(hook: Hook, code: str) -> float:
    return value(scrape(hook.agent.url), "orchestrator_webhook_requests_total", code=code) or 0.0


def test_missing_credentials_401(refusing: Hook) -> None:
    before = code_count(refusing, "401")
    r = refusing.post(payload(alert({"action": "restart", "component": "web"})), token=None)
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers
    assert code_count(refusing, "401") == before + 1


def test_wrong_credentials_401(refusing: Hook) -> None:
    pids = refusing.pids()
    r = refusing.post(payload(alert({"action": "restart", "component": "web"})), token=refusing.token[:-1] + "x")
    assert r.status_code == 401
    assert refusing.post(b"{}", headers={"Authorization": "Basic " + base64.b64encode(b"a:b").decode()},
                         token=None).status_code == 401
    assert refusing.pids() == pids


def test_oversized_body_413(refusing: Hook) -> None:
    before = code_count(refusing, "413")
    big = payload(*[alert({"action": "restart", "component": "web", "pad": "x" * 2000}) for _ in range(40)])
    assert len(json.dumps(big)) > 65536
    assert refusing.post(big).status_code == 413
    assert code_count(refusing, "413") == before + 1


def test_invalid_json_400(refusing: Hook) -> None:
    before = code_count(refusing, "400")
    r = refusing.post(b'{"version": "4", "alerts": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "line 1 column" in r.json()["error"]
    assert code_count(refusing, "400") == before + 1


def test_wrong_schema_422_names_the_field(refusing: Hook) -> None:
    before = code_count(refusing, "422")
    pids = refusing.pids()
    body = payload(alert({"action": "restart", "component": "web"}))
    body["alerts"][0]["status"] = "exploded"
    r = refusing.post(body)
    assert r.status_code == 422
    assert any(d.startswith("alerts.0.status") for d in r.json()["details"])
    body = payload(alert({}))
    body["version"] = "3"
    assert refusing.post(body).status_code == 422
    assert code_count(refusing, "422") == before + 2
    assert refusing.pids() == pids


@pytest.mark.parametrize(("field", "bad"), [("startsAt", "yesterday"), ("startsAt", "2026-11-24"),
                                           ("startsAt", "a|b"), ("endsAt", "never")])
def test_times_must_be_rfc3339_else_422_naming_the_field(refusing: Hook, field: str, bad: str) -> None:
    before = refusing.counter("pool", "scale_up", "executed")
    a = alert({"action": "scale_up", "component": "pool"})
    a[field] = bad
    r = refusing.post(payload(a))
    assert r.status_code == 422, r.text
    assert any(d.startswith(f"alerts.0.{field}") and "RFC 3339" in d for d in r.json()["details"]), r.text
    assert refusing.counter("pool", "scale_up", "executed") == before


def test_real_alertmanager_payloads_pass_the_time_checks(refusing: Hook) -> None:
    for name in ("alertmanager-0.25-webhook-firing.json", "alertmanager-0.25-webhook-resolved.json"):
        assert refusing.post(fixture(name)).status_code == 200, name


def test_unknown_component_rejected(refusing: Hook) -> None:
    before = refusing.counter("_unknown", "restart", "rejected")
    res = refusing.send(alert({"action": "restart", "component": "nope"}))
    assert res[0]["result"] == "rejected" and res[0]["reason"] == "unknown component"
    assert refusing.counter("_unknown", "restart", "rejected") == before + 1


def test_disallowed_action_rejected(refusing: Hook) -> None:
    before = refusing.counter("limited", "scale_up", "rejected")
    res = refusing.send(alert({"action": "scale_up", "component": "limited"}))
    assert res[0]["result"] == "rejected" and "not allowed" in res[0]["reason"]
    assert refusing.status()["limited"]["desired"] == 1
    assert refusing.counter("limited", "scale_up", "rejected") == before + 1


def test_other_nodes_alert_ignored_and_counted(refusing: Hook) -> None:
    pids = refusing.pids()["web"]
    before = refusing.counter("web", "restart", "ignored")
    res = refusing.send(alert({"action": "restart", "component": "web", "node": "node-b"}))
    assert res[0]["result"] == "ignored" and "another node" in res[0]["reason"]
    assert refusing.counter("web", "restart", "ignored") == before + 1
    assert refusing.pids()["web"] == pids


def _hostile(marker: Path, nonce: str) -> list[str]:
    """Values that create `marker` if a shell ever evaluates them, each carrying `nonce` to find it by."""
    touch = f"touch {marker}"
    return [f"$({touch}) {nonce}", f"; {touch}; echo {nonce}", f"`{touch}` {nonce}", f"| {touch} {nonce}",
            f"&& {touch} {nonce}", f"\n{touch}\n{nonce}", f"'; {touch}; echo '{nonce}",
            f'"; {touch}; echo "{nonce}', f"../../{nonce}/../etc/passwd"]


def test_hostile_alert_content_never_reaches_a_shell_or_a_command_line(tmp_path: Path) -> None:
    # "shelly" is a shell: each start writes its own command line and environment to a file of its own
    # and then runs. Hostile values ride on alerts that restart it (so it runs again after reading them) and
    # on alerts that are refused. If any value reached a shell, the marker file would exist; if any reached
    # a command line or an environment, a dump would hold the nonce.
    marker, dumps, nonce = tmp_path / "MARKER", tmp_path / "dumps", uuid.uuid4().hex
    dumps.mkdir()
    (tmp_path / "agent").mkdir()
    shelly = {"command": f"{{ tr '\\0' ' ' < /proc/$$/cmdline; echo; env; }} > {dumps}/start.$$; exec sleep 1000",
              "shell": True, "remediation": {"cooldown": 0}}
    hook = start_hook(tmp_path / "agent", {"shelly": shelly})
    try:
        values = _hostile(marker, nonce)
        for n, evil in enumerate(values, start=1):
            # Acted on: every field but component and action is hostile.
            a = alert({"action": "restart", "component": "shelly", "alertname": evil, evil: evil},
                      annotations={"summary": evil, "description": evil}, fingerprint=f"{n}{evil}"[:64])
            a["generatorURL"] = evil
            body = payload(a)
            body.update(receiver=evil, groupKey=evil, externalURL=evil)
            r = hook.post(body)
            assert r.status_code == 200 and r.json()["results"][0]["result"] == "accepted", r.text
            hook.wait_result("shelly", "restart", "executed", n)
            wait_for(lambda n=n: len(list(dumps.iterdir())) == 1 + n, 10, 0.02, f"shelly's start number {1 + n}")
        refused_before = refused(hook)
        pids = hook.pids()
        for evil in [*values, "x" * 10_000]:
            # Refused: the hostile value is the component, the action, the replica, the step or the target.
            for labels in ({"action": "restart", "component": evil}, {"action": evil, "component": "shelly"},
                           {"action": "restart", "component": "shelly", "replica": evil},
                           {"action": "scale_up", "component": "pool", "step": evil}):
                res = hook.send(alert(labels))
                assert res[0]["result"] in ("rejected", "ignored"), res
            res = hook.send(alert({"action": "scale_to", "component": "pool"}, annotations={"desired_replicas": evil}))
            assert res[0]["result"] == "rejected"
        assert refused(hook) == refused_before + 5 * (len(values) + 1)
        assert hook.pids() == pids
    finally:
        hook.agent.stop()
    assert not marker.exists(), "alert content reached a shell"
    leaked = [p.name for p in dumps.iterdir() if nonce in p.read_text(errors="replace")]
    assert not leaked, f"alert content reached the command line or environment of {leaked}"
    assert nonce not in (hook.agent.log_dir / "shelly.log").read_text(errors="replace")


def test_shutting_down_answers_503(tmp_path: Path) -> None:
    # The shutdown lasts the stop grace only once the component ignores SIGTERM: a shell that has not
    # run `trap` yet dies at once, the agent exits, and the request finds no server.
    trapped = tmp_path / "trapped"
    agent = AgentProcess(tmp_path, {"components": {"slow": {
        "command": f"trap '' TERM; touch {trapped}; while :; do sleep 0.1; done", "shell": True,
        "stop": {"grace": 2}}}})
    agent.start()
    wait_for(trapped.exists, 15, 0.02, "the component to ignore SIGTERM")
    token = (agent.state_dir / "webhook.token").read_text().strip()
    agent.proc.send_signal(15)  # type: ignore[union-attr]
    body = payload(alert({"action": "restart", "component": "slow"}))
    r = wait_for(lambda: (x := httpx.post(agent.url + "/webhook/alertmanager", json=body, timeout=5,
                                          headers={"Authorization": f"Bearer {token}"})).status_code == 503 and x,
                 3, 0.02)
    assert r.headers["Retry-After"]
    assert agent.stop() == 0


def test_basic_auth_is_accepted_when_configured(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)  # a secret others may read stops the start
    agent = AgentProcess(tmp_path, {"agent": {"webhook": {"basic_auth_username": "am",
                                                          "basic_auth_password_file": str(tmp_path / "pw")}},
                                    "components": {"a": {"command": SLEEP}}})
    agent.start()
    try:
        url = agent.url + "/webhook/alertmanager"
        body = payload(alert({"alertname": "X"}))
        ok = httpx.post(url, json=body, auth=("am", "s3cret"))
        assert ok.status_code == 200 and ok.json()["results"][0]["result"] == "ignored"
        assert httpx.post(url, json=body, auth=("am", "wrong")).status_code == 401
    finally:
        agent.stop()


# --- modes, emergency stop, restarts of the agent ---------------------------------------------------------


def test_dry_run_records_and_does_nothing(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"components": {"a": {"command": SLEEP}}}, ("--autonomy", "dry-run"))
    agent.start()
    try:
        h = Hook(agent)
        pids = h.pids()
        res = h.send(alert({"action": "restart", "component": "a"}))
        assert res[0]["result"] == "dry_run"
        assert h.pids() == pids
        assert value(scrape(agent.url), "orchestrator_autonomy_mode", mode="dry-run") == 1
        assert h.api("POST", "/api/v1/autonomy", {"mode": "off"}).json()["autonomy"] == "off"
        assert h.send(alert({"action": "restart", "component": "a"}))[0]["result"] == "ignored"
    finally:
        agent.stop()


def test_emergency_stop_holds_across_restarts_until_autonomy_on(tmp_path: Path) -> None:
    cfg = {"components": {"a": {"command": SLEEP, "stop": {"grace": 1}, "remediation": {"cooldown": 0}},
                          "b": {"command": "trap '' TERM; while :; do sleep 0.1; done", "shell": True,
                                "stop": {"grace": 1}}}}
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    h = Hook(agent)
    wait_for(lambda: all(h.pids().values()), 10)
    started = agent.descendants()
    t0 = time.monotonic()
    assert h.api("POST", "/api/v1/emergency-stop").status_code == 200
    wait_for(lambda: not any(pid_alive(p) for p in started if p != _guardian(agent)), 1 + 1.0)
    assert time.monotonic() - t0 <= 1 + 1.0 + 0.5
    res = h.send(alert({"action": "restart", "component": "a"}))
    assert res[0]["result"] == "rejected" and "emergency" in res[0]["reason"]
    assert value(scrape(agent.url), "orchestrator_emergency_stop") == 1
    assert agent.stop() == 0
    # The emergency stop survives an agent restart.
    agent2 = AgentProcess(tmp_path, cfg)
    agent2.start()
    try:
        h2 = Hook(agent2)
        assert h2.pids() == {"a": [], "b": []}
        assert h2.api("GET", "/api/v1/autonomy").json() == {"autonomy": "off", "emergency_stop": True}
        assert h2.send(alert({"action": "restart", "component": "a"}))[0]["result"] == "rejected"
        h2.api("POST", "/api/v1/autonomy", {"mode": "on"})
        assert h2.api("POST", "/api/v1/components/a/start").status_code == 200
        wait_for(lambda: len(h2.pids()["a"]) == 1, 5)
        hook_res = h2.send(alert({"action": "restart", "component": "a"}))
        assert hook_res[0]["result"] == "accepted"
    finally:
        agent2.stop()


def _guardian(agent: AgentProcess) -> int:
    import psutil

    for child in psutil.Process(agent.proc.pid).children():  # type: ignore[union-attr]
        if "agent-guardian" in child.cmdline():
            return int(child.pid)
    return -1


def test_retry_after_sigkill_does_not_act_again(tmp_path: Path) -> None:
    cfg = {"components": {"a": {"command": SLEEP, "remediation": {"cooldown": 0}}}}
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    h = Hook(agent)
    a = alert({"action": "restart", "component": "a"})
    assert h.send(a)[0]["result"] == "accepted"
    h.wait_result("a", "restart", "executed")
    agent.proc.kill()  # type: ignore[union-attr]
    agent.proc.wait(5)  # type: ignore[union-attr]
    agent.stderr.close()
    agent2 = AgentProcess(tmp_path, cfg)
    agent2.start()
    try:
        h2 = Hook(agent2)
        wait_for(lambda: len(h2.pids()["a"]) == 1, 5)
        pids = h2.pids()
        res = h2.send(a)  # Alertmanager's retry of the same notification
        assert res[0]["result"] == "duplicate"
        assert h2.pids() == pids
    finally:
        agent2.stop()


def test_audit_line_history_and_exemplar(hook: Hook) -> None:
    before = hook.counter("limited", "restart", "executed")
    res = hook.send(alert({"action": "restart", "component": "limited", "alertname": "AuditMe"}))
    assert res[0]["result"] == "accepted"
    hook.wait_result("limited", "restart", "executed", before + 1)
    wait_for(lambda: any(r.get("alertname") == "AuditMe" and r.get("result") == "executed"
                         for r in hook.agent.log_records()), 5)
    line = next(r for r in hook.agent.log_records() if r.get("alertname") == "AuditMe" and r.get("result"))
    for key in ("alertname", "component", "action", "result", "reason", "fingerprint", "trace_id"):
        assert line[key], key
    history = hook.api("GET", "/api/v1/history").json()["history"]
    assert any(e["alertname"] == "AuditMe" and e["trace_id"] == line["trace_id"] for e in history)
    om = httpx.get(hook.agent.url + "/metrics", headers={"Accept": "application/openmetrics-text"}).text
    executed = [ln for ln in om.splitlines() if ln.startswith("orchestrator_remediation_actions_total{")
                and 'component="limited"' in ln and 'result="executed"' in ln]
    assert executed and "# {trace_id=" in executed[0]


def test_simulate_does_nothing(refusing: Hook) -> None:
    pids = refusing.pids()
    body = payload(alert({"action": "restart", "component": "web"}), alert({"action": "scale_up", "component": "x"}))
    r = refusing.api("POST", "/api/v1/simulate", body)
    assert [x["would"] for x in r.json()["results"]] == ["act", "rejected"]
    assert refusing.pids() == pids
