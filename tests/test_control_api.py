"""The control API in process: each route checks the body's shape and hands one command to `Manual`,
which holds the rules (why a restart is held, what is audited); no agent, no processes, no sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from agent.act.manual import Manual
from agent.act.modes import Modes
from agent.config.settings import AgentSettings, Autonomy
from agent.http.control import control_routes
from agent.http.credentials import Auth
from agent.supervise.replica import CommandError
from agent.supervise.rollout import RollResult
from agent.supervise.state import StateStore


class FakeSupervisor:
    """The supervisor commands the control API gives, recorded; components `web` and `db`."""

    def __init__(self) -> None:
        self.components = {"web": SimpleNamespace(manual_stop=False, desired=2),
                           "db": SimpleNamespace(manual_stop=False, desired=1)}
        self.calls: list[tuple[Any, ...]] = []
        self.roll = RollResult(2)

    async def restart(self, name: str, reason: str, replica: int | None = None,
                      all_at_once: bool = False) -> RollResult:
        self.calls.append(("restart", name, reason, replica, all_at_once))
        if replica == 7:
            raise CommandError(f"component {name!r} has no replica 7")
        return self.roll

    async def scale(self, name: str, replicas: int, reason: str) -> int:
        self.calls.append(("scale", name, replicas, reason))
        before, self.components[name].desired = self.components[name].desired, replicas
        return before

    async def start(self, name: str, reason: str, *, with_dependencies: bool = False) -> list[str]:
        self.calls.append(("start", name, reason, with_dependencies))
        return ["db"] if name == "web" else []

    async def stop(self, name: str, reason: str, *, with_dependents: bool = False) -> list[str]:
        self.calls.append(("stop", name, reason, with_dependents))
        return ["web"] if name == "db" else []

    async def emergency_stop(self) -> None:
        self.calls.append(("emergency_stop",))


class FakeRemediator:
    """The audit trail `Manual` writes (Remediator.record), and an empty history."""

    def __init__(self) -> None:
        self.audited: list[tuple[str, str, str, str, str]] = []
        self.history: list[Any] = []

    def record(self, alert: Any, plan: Any, result: Any, reason: str, trace_id: str, source: str = "webhook") -> None:
        self.audited.append((plan.component, plan.action, result.value, reason, source))


Parts = tuple[FakeSupervisor, FakeRemediator, Modes]


@pytest.fixture
def parts(tmp_path: Path) -> Parts:
    return FakeSupervisor(), FakeRemediator(), Modes(StateStore(tmp_path / "state"), Autonomy.ON)


@pytest.fixture
def client(tmp_path: Path, parts: Parts) -> TestClient:
    sup, remediator, modes = parts
    auth = Auth(AgentSettings(state_dir=tmp_path))
    token = (tmp_path / "control.token").read_text().strip()
    app = Starlette(routes=control_routes(auth, sup, modes, remediator, lambda: {"node": "n"}))  # type: ignore[arg-type]
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def test_each_verb_answers_its_command_and_is_audited(
        client: TestClient, parts: Parts) -> None:
    sup, remediator, _ = parts
    r = client.post("/api/v1/components/web/restart", json={"replica": 1})
    assert r.status_code == 200 and r.json() == {"component": "web", "restarted": 2, "ready": 2, "halted": False}
    assert client.post("/api/v1/components/web/scale", json={"replicas": 3}).json() == {
        "component": "web", "before": 2, "desired": 3}
    assert client.post("/api/v1/components/web/start").json() == {
        "component": "web", "desired": 3, "started_dependencies": ["db"]}
    assert client.post("/api/v1/components/db/stop").json() == {
        "component": "db", "stopped": True, "dependents_running": ["web"]}
    assert client.post("/api/v1/components/db/stop", json={"with_dependents": True}).json() == {
        "component": "db", "stopped": True, "stopped_dependents": ["web"]}
    assert sup.calls == [("restart", "web", "manual", 1, False), ("scale", "web", 3, "manual"),
                         ("start", "web", "manual", True), ("stop", "db", "manual", False),
                         ("stop", "db", "manual", True)]
    assert [(c, a, res) for c, a, res, _, _ in remediator.audited] == [
        ("web", "restart", "executed"), ("web", "scale_to", "executed"), ("db", "start", "executed"),
        ("web", "start", "executed"), ("db", "stop", "executed"), ("web", "stop", "executed"),
        ("db", "stop", "executed")]
    assert remediator.audited[4][3] == "stopped by hand; still running on it: web"
    assert {source for *_, source in remediator.audited} == {"cli"}


def test_a_halted_roll_says_what_it_left(client: TestClient, parts: Parts) -> None:
    sup, remediator, _ = parts
    sup.roll = RollResult(1, halted=True, reason="not ready", started=2,
                          remaining=[SimpleNamespace(index=1)])  # type: ignore[list-item]
    assert client.post("/api/v1/components/web/restart").json() == {
        "component": "web", "restarted": 2, "ready": 1, "halted": True, "reason": "not ready", "not_restarted": [1]}
    assert remediator.audited[-1][2] == "failed"


@pytest.mark.parametrize(("path", "body", "code", "error"), [
    ("/api/v1/components/web/restart", {"replica": True}, 422, "replica must be an integer"),
    ("/api/v1/components/web/restart", {"all_at_once": 1}, 422, "all_at_once must be true or false"),
    ("/api/v1/components/web/scale", {"replicas": "2"}, 422, "replicas must be an integer"),
    ("/api/v1/components/web/stop", {"with_dependents": "yes"}, 422, "with_dependents must be true or false"),
    ("/api/v1/components/web/restart", [1], 422, "the body must be a JSON object"),
    ("/api/v1/components/nope/restart", {}, 404, "unknown component 'nope'"),
    ("/api/v1/components/web/reboot", {}, 404, "unknown verb 'reboot'"),
    ("/api/v1/components/web/restart", {"replica": 7}, 409, "component 'web' has no replica 7"),
    ("/api/v1/autonomy", {"mode": "maybe"}, 422, "mode must be one of on, dry-run, off"),
])
def test_a_wrong_body_is_refused_before_any_command(
        client: TestClient, parts: Parts,
        path: str, body: Any, code: int, error: str) -> None:
    sup, remediator, _ = parts
    r = client.post(path, json=body)
    assert (r.status_code, r.json()["error"]) == (code, error)
    assert remediator.audited == [] and all(call[3] == 7 for call in sup.calls)
    if code == 404 and "component" in error:
        assert r.json()["known"] == ["db", "web"]


def test_bad_json_and_a_body_too_large(client: TestClient) -> None:
    r = client.post("/api/v1/components/web/scale", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("invalid JSON at line 1")
    r = client.post("/api/v1/components/web/scale", content=b" " * ((1 << 20) + 1))
    assert r.status_code == 413 and r.json() == {"error": "body too large"}


@pytest.mark.parametrize("hold", ["emergency", "manual_stop"])
def test_a_held_restart_restarts_nothing_and_is_audited_as_rejected(
        parts: Parts, hold: str) -> None:
    sup, remediator, modes = parts
    if hold == "emergency":
        modes.emergency = True
    else:
        sup.components["web"].manual_stop = True
    manual = Manual(sup, remediator, modes)  # type: ignore[arg-type]
    done = asyncio.run(manual.restart("web", None, False))
    assert done.held == manual.held_reason("web") != ""
    assert sup.calls == [] and remediator.audited == [("web", "restart", "rejected", done.held, "cli")]


def test_a_held_restart_answers_409_with_the_reason(
        client: TestClient, parts: Parts) -> None:
    sup, _, _ = parts
    sup.components["web"].manual_stop = True
    r = client.post("/api/v1/components/web/restart")
    assert r.status_code == 409 and r.json() == {
        "error": "component 'web' is stopped by hand; `agent start web` starts it", "component": "web"}


def test_autonomy_and_the_emergency_stop(client: TestClient, parts: Parts) -> None:
    sup, remediator, modes = parts
    assert client.get("/api/v1/autonomy").json() == {"autonomy": "on", "emergency_stop": False}
    assert client.post("/api/v1/autonomy", json={"mode": "dry-run"}).json() == {
        "autonomy": "dry-run", "emergency_stop": False}
    r = client.post("/api/v1/emergency-stop")
    assert r.status_code == 200 and r.json()["emergency_stop"] is True and "deferred" not in r.json()
    assert sup.calls == [("emergency_stop",)] and modes.emergency and modes.autonomy is Autonomy.OFF
    assert [a for _, a, *_ in remediator.audited] == ["autonomy", "emergency_stop"]


def test_a_refusing_agent_answers_503_and_does_nothing(
        client: TestClient, parts: Parts) -> None:
    sup, _, modes = parts
    modes.closing = True
    r = client.post("/api/v1/components/web/restart")
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and r.json() == {"error": "shutting down; retry"}
    assert sup.calls == []


def test_without_the_control_token_nothing_is_done(
        client: TestClient, parts: Parts) -> None:
    sup, _, _ = parts
    r = client.post("/api/v1/components/web/restart", headers={"Authorization": "Bearer " + "x" * 32})
    assert r.status_code == 401 and sup.calls == []
