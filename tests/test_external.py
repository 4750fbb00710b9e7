"""External components (no `command`): probed, exported and alerted on, never spawned; actions on them
are rejected. The seed's `config/autonomous_config.json` runs verbatim. A long resource interval still
shows figures soon after the start."""

from __future__ import annotations

import contextlib
import errno
import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.act.payload import Alert
from agent.act.plan import ComponentView, Result, plan_alert
from agent.config.changes import plan_reload
from agent.config.loader import build_config
from agent.config.settings import Autonomy
from tests.helpers import ROOT, AgentProcess, free_port, missing, wait_for
from tests.metricsutil import scrape, value
from tests.webhookutil import alert, payload

SEED_JSON = ROOT / "examples" / "seed.json"


class Health:
    """A health endpoint on 127.0.0.1:`port` whose status code the test sets; counts the probes."""

    def __init__(self, port: int) -> None:
        self.code = 200
        self.hits = 0
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                health.hits += 1
                self.send_response(health.code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def health_server(port: int) -> Iterator[Health]:
    server = Health(port)
    try:
        yield server
    finally:
        server.close()


def control(agent: AgentProcess, name: str, verb: str, body: Any = None) -> httpx.Response:
    token = (agent.state_dir / "control.token").read_text().strip()
    return httpx.post(f"{agent.url}/api/v1/components/{name}/{verb}", json=body or {}, timeout=10,
                      headers={"Authorization": f"Bearer {token}"})


def test_the_seed_json_runs_verbatim_with_its_external_components_probed_and_exported(tmp_path: Path) -> None:
    # The seed's health URL is fixed at 127.0.0.1:5005: the test serves it there.
    try:
        health = Health(5005)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        missing("127.0.0.1:5005 (the seed JSON's fixed health URL) is in use: cannot serve it here")
    home = tmp_path / "config"
    home.mkdir()
    seed = home / "autonomous_config.json"
    shutil.copyfile(SEED_JSON, seed)  # verbatim
    # The seed's file names no listen address: a second layer picks a free port (the file is untouched).
    agent = AgentProcess(tmp_path, {})
    listen = tmp_path / "listen.yaml"
    listen.write_text(yaml.safe_dump({"agent": {"listen": f"127.0.0.1:{agent.port}"}}))
    agent.config_path, agent.extra_args = seed, ("--config", str(listen))
    agent.state_dir = home / ".agent"  # the default state_dir, in the (first) config file's directory
    try:
        agent.start()
        wait_for(lambda: agent.status()["mcp_server"]["healthy"] == 1, 15, 0.05, "mcp_server's probe to pass")
        status = agent.status()
        assert health.hits >= 1
        for name in ("mcp_server", "unified_todo_agent"):
            assert status[name]["external"] is True and status[name]["state"] == "external"
            assert status[name]["pids"] == []
        assert status["mcp_server"]["desired"] == 1 and status["mcp_server"]["replicas"] == 1
        assert status["unified_todo_agent"]["desired"] == 0  # no health URL: nothing to watch

        samples = scrape(agent.url)
        assert value(samples, "orchestrator_component_up", component="mcp_server") == 1
        assert value(samples, "orchestrator_component_probe_success", component="mcp_server", replica="0") == 1
        assert value(samples, "orchestrator_component_state", component="mcp_server", state="external") == 1
        assert value(samples, "orchestrator_component_desired_replicas", component="mcp_server") == 1
        assert value(samples, "orchestrator_component_info", component="unified_todo_agent", kind="worker",
                     essential="false") == 1
        assert (value(samples, "orchestrator_probe_duration_seconds_count", component="mcp_server",
                      probe="http") or 0) >= 1

        # Actions are rejected with the reason: the control API (409) and the webhook (history).
        for verb in ("restart", "stop", "start"):
            answer = control(agent, "mcp_server", verb)
            assert answer.status_code == 409 and "external" in answer.json()["error"], answer.text
        answer = control(agent, "mcp_server", "scale", {"replicas": 1})
        assert answer.status_code == 409 and "external" in answer.json()["error"]
        token = (agent.state_dir / "webhook.token").read_text().strip()
        sent = httpx.post(agent.url + "/webhook/alertmanager", timeout=10, headers={"Authorization": f"Bearer {token}"},
                          json=payload(alert({"alertname": "OrchestratorComponentDown", "component": "mcp_server",
                                              "action": "restart"})))
        assert sent.status_code == 200
        (result,) = sent.json()["results"]
        assert result["result"] == "rejected" and result["reason"].startswith("external"), result
        history = agent.api("GET", "/api/v1/history")["history"]
        assert any(e["component"] == "mcp_server" and e["result"] == "rejected" and e["reason"].startswith("external")
                   for e in history)
        assert agent.status()["mcp_server"]["pids"] == []
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()
        health.close()


def test_an_external_dependency_gates_its_dependents_and_its_health_is_exported(tmp_path: Path) -> None:
    port = free_port()
    with health_server(port) as health:
        health.code = 503
        config = {
            "agent": {"resources": {"interval": "300s"}},
            "components": {
                "db": {"probe": {"http": {"url": f"http://127.0.0.1:{port}/health"}, "interval": "0.1s",
                                 "failure_threshold": 1, "startup_grace": "60s"}},
                "app": {"command": ["python", "-c", "import time; x = bytearray(8 << 20); time.sleep(600)"],
                        "depends_on": ["db"]},
            },
        }
        agent = AgentProcess(tmp_path, config)
        try:
            agent.start()
            wait_for(lambda: health.hits >= 5, 10, 0.02, "db to be probed")
            assert agent.status()["app"]["pids"] == []  # waits for its external dependency to be up
            assert value(scrape(agent.url), "orchestrator_component_up", component="db") == 0
            health.code = 200
            wait_for(lambda: agent.status()["app"]["pids"], 15, 0.05, "app to start once db is up")
            assert value(scrape(agent.url), "orchestrator_component_up", component="db") == 1
            # The resource interval is 300 s: the figures come from an early pass, not five minutes later.
            wait_for(lambda: agent.status()["app"]["rss_bytes"] > 8 << 20, 10, 0.1, "app's first resource sample")

            health.code = 500
            wait_for(lambda: value(scrape(agent.url), "orchestrator_component_up", component="db") == 0, 10, 0.05)
            samples = scrape(agent.url)
            assert value(samples, "orchestrator_component_probe_error", component="db", reason="status") == 1
            assert value(samples, "orchestrator_component_replicas", component="db") == 0
            status = agent.status()
            assert status["db"]["state"] == "external" and status["db"]["healthy"] == 0
            assert status["app"]["pids"]  # the agent leaves what depends on it alone

            # An emergency stop stops what the agent runs; the external one is still watched.
            agent.api("POST", "/api/v1/emergency-stop")
            wait_for(lambda: not agent.status()["app"]["pids"], 15, 0.05)
            health.code = 200
            wait_for(lambda: agent.status()["db"]["healthy"] == 1, 10, 0.05, "db still probed")
        finally:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.stop()


def test_check_and_status_name_external_components_from_the_cli(tmp_path: Path) -> None:
    conf = tmp_path / "agent.yaml"
    conf.write_text(yaml.safe_dump({"components": {"db": {"probe": {"tcp": {"port": 1}}}}}))
    out = subprocess.run([sys.executable, "-m", "agent", "check-config", str(conf)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "external (probed and exported, never started by the agent): db" in out.stdout


def view(**overrides: Any) -> ComponentView:
    base: dict[str, Any] = dict(desired=1, minimum=0, maximum=1, allowed=("restart", "start", "scale_up"),
                                cooldown=0.0, stabilization=0.0, max_step=1, max_step_percent=0, last_restart=0.0,
                                last_scale_up=0.0, manual_stop=False, circuit_open=False, external=True)
    base.update(overrides)
    return ComponentView(**base)


@pytest.mark.parametrize("action", ["restart", "start", "scale_up"])
def test_the_plan_rejects_every_action_on_an_external_component(action: str) -> None:
    a = Alert.model_validate(alert({"component": "db", "action": action}))
    plan = plan_alert(a, node="n", components={"db": view()}, autonomy=Autonomy.ON, emergency=False,
                      seen=lambda key: False, now=1e9)
    assert plan.result is Result.REJECTED and plan.reason.startswith("external:")
    assert plan_alert(a, node="n", components={"db": view(external=False, maximum=2)}, autonomy=Autonomy.ON,
                      emergency=False, seen=lambda key: False, now=1e9).acts


def test_becoming_external_or_getting_a_command_is_a_remove_and_add() -> None:
    external = build_config({"components": {"db": {"probe": {"tcp": {"port": 5}}}, "x": {"command": ["a"]}}}, env={})
    run = build_config({"components": {"db": {"command": ["a"]}, "x": {"command": ["a"], "env": {"A": "1"}}}}, env={})
    plan = plan_reload(external, run)
    assert plan.removed == ["db"] and plan.added == ["db"] and list(plan.replaced) == ["x"]
    back = plan_reload(run, external)
    assert back.removed == ["db"] and back.added == ["db"]


def test_an_external_component_cannot_be_a_replica_set_or_a_shell() -> None:
    from agent.config.loader import ConfigError

    with pytest.raises(ConfigError, match=r"replicas\.max must be 0 or 1"):
        build_config({"components": {"db": {"replicas": {"max": 3}}}}, env={})
    with pytest.raises(ConfigError, match="shell: true needs a command"):
        build_config({"components": {"db": {"shell": True}}}, env={})

