"""Hostile request bodies, unsafe secret files and an exposed listen address, on a real agent."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import AgentProcess, free_port, wait_for
from tests.metricsutil import scrape, value

SLEEP = ["sleep", "1000"]
DEEP = b"[" * 200_000  # 200 KB of nested arrays: under max_body_bytes, over json's recursion limit


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = AgentProcess(tmp_path_factory.mktemp("hostile"), {"components": {"web": {"command": SLEEP}}})
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _token(agent: AgentProcess, name: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + (agent.state_dir / name).read_text().strip()}


def _webhook_count(agent: AgentProcess, code: str) -> float:
    return value(scrape(agent.url), "orchestrator_webhook_requests_total", code=code) or 0.0


@pytest.mark.parametrize(("path", "token"), [
    ("/webhook/alertmanager", "webhook.token"),
    ("/api/v1/simulate", "control.token"),
    ("/api/v1/components/web/scale", "control.token"),
    ("/api/v1/autonomy", "control.token"),
])
def test_deeply_nested_json_is_a_400_with_a_message(agent: AgentProcess, path: str, token: str) -> None:
    before = _webhook_count(agent, "400")
    r = httpx.post(agent.url + path, content=DEEP, headers=_token(agent, token), timeout=10)
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["error"]
    if path == "/webhook/alertmanager":
        assert _webhook_count(agent, "400") == before + 1
    assert "RecursionError" not in agent.log_text()
    assert httpx.get(agent.url + "/-/healthy", timeout=5).status_code == 200


def test_a_webhook_client_gone_before_its_body_is_counted(agent: AgentProcess) -> None:
    before = _webhook_count(agent, "499")
    head = (f"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: {_token(agent, 'webhook.token')['Authorization']}\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", agent.port)) as sock:
        sock.sendall(head.encode() + b'{"alerts": [')
    wait_for(lambda: _webhook_count(agent, "499") == before + 1, 5, 0.02, "the 499 to be counted")
    assert "Exception in ASGI application" not in agent.log_text()


# --- secret files ----------------------------------------------------------------------------------------


def _refused(tmp_path: Path, config: dict[str, Any]) -> tuple[int, str]:
    proc = AgentProcess(tmp_path, config)
    proc.start(wait=False)
    assert proc.proc is not None
    code = proc.proc.wait(15)
    proc.stderr.close()
    return code, proc.log_text()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=["0644", "0640", "0604"])
def test_a_control_token_others_may_read_stops_the_start(tmp_path: Path, mode: int) -> None:
    token = tmp_path / "control.token"
    token.write_text("x" * 40 + "\n")
    token.chmod(mode)
    code, log = _refused(tmp_path, {"agent": {"control_token_file": str(token)},
                                    "components": {"web": {"command": SLEEP}}})
    assert code == 2, log
    assert f"chmod 600 {token}" in log
    assert "component web replica 0 started" not in log


def test_a_short_webhook_token_stops_the_start(tmp_path: Path) -> None:
    token = tmp_path / "hook.token"
    token.write_text("short\n")
    token.chmod(0o600)
    code, log = _refused(tmp_path, {"agent": {"webhook": {"bearer_token_file": str(token)}},
                                    "components": {"web": {"command": SLEEP}}})
    assert code == 2, log
    message = next(json.loads(line)["msg"] for line in log.splitlines() if "refusing" in line)
    assert str(token) in message and "5 characters, fewer than 16" in message
    assert "token_urlsafe" in message and "delete the file" in message


def test_a_safe_token_file_is_used(tmp_path: Path) -> None:
    token = tmp_path / "control.token"
    token.write_text("a-long-enough-control-token\n")
    token.chmod(0o600)
    agent = AgentProcess(tmp_path, {"agent": {"control_token_file": str(token)}})
    agent.start()
    try:
        r = httpx.get(agent.url + "/api/v1/status", headers={"Authorization": "Bearer a-long-enough-control-token"})
        assert r.status_code == 200
    finally:
        agent.stop()


# --- listen address ---------------------------------------------------------------------------------------


def _warnings(agent: AgentProcess) -> list[str]:
    return [r["msg"] for r in agent.log_records() if r["level"] == "warning" and "off loopback" in r["msg"]]


def test_listening_off_loopback_warns_at_start(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"agent": {"listen": f"0.0.0.0:{free_port()}"}})
    agent.start()
    try:
        (warning,) = _warnings(agent)
        assert "without TLS and authentication: anyone who can reach it reads /metrics" in warning
        assert "orchestrator_insecure_listener 1.0" in httpx.get(agent.url + "/metrics").text
    finally:
        agent.stop()


def test_an_acknowledged_insecure_listener_neither_warns_nor_sets_the_metric(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"agent": {"listen": f"0.0.0.0:{free_port()}",
                                              "acknowledge_insecure_listener": True}})
    agent.start()
    try:
        assert _warnings(agent) == []
        assert "orchestrator_insecure_listener 0.0" in httpx.get(agent.url + "/metrics").text
    finally:
        agent.stop()


def test_listening_on_loopback_does_not_warn(agent: AgentProcess) -> None:
    assert _warnings(agent) == []
