"""Import what a config uses, when it uses it (issue 20): a real agent whose config has no http or mcp
probe, no http backlog source and no trace export never imports httpx or the OpenTelemetry SDK; the
first http probe (at start or added by a reload) imports httpx. `GET /api/v1/status` lists the optional
modules loaded (`optional_imports`); bench/memory.py says what each costs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import AgentProcess, free_port, running_agent, wait_for
from tests.webhookutil import alert, payload

HEAVY = ("httpx", "opentelemetry.sdk", "mcp", "sqlite3", "bcrypt", "redis")
# Verbs whose parser every invocation builds, but whose code only their own invocation needs.
VERBS = ("agent.cli.backtest_report", "agent.backtest.run", "agent.backtest.rules", "agent.backtest.alertmanager")


@pytest.fixture(autouse=True)
def _no_trace_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)


@pytest.fixture
def listener() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them from the backlog): a tcp probe's target."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def optional_imports(agent: AgentProcess) -> list[str]:
    loaded: list[str] = agent.api("GET", "/api/v1/status")["optional_imports"]
    return loaded


def lean_config(tmp: Path, tcp_port: int) -> dict[str, Any]:
    """Every probe and source kind that needs no HTTP client: tcp and exec probes, a json backlog."""
    (tmp / "todos.json").write_text(json.dumps([{"status": "pending", "priority": "high"}]))
    return {
        "agent": {"listen": f"127.0.0.1:{free_port()}", "resources": {"interval": 0.2}},
        "components": {
            "plain": {"command": ["sleep", "100000"]},
            "exec_probed": {"command": ["sleep", "100000"], "probe": {"exec": {"command": ["true"]}, "interval": 0.1}},
            "tcp_probed": {"command": ["sleep", "100000"], "probe": {"tcp": {"port": tcp_port}, "interval": 0.1}},
        },
        "backlog": {"sources": [{"kind": "json", "path": str(tmp / "todos.json"), "interval": 0.2}]},
    }


def healthy(agent: AgentProcess, *names: str) -> bool:
    status = agent.status()
    return all(name in status and status[name]["healthy"] == 1 for name in names)


def test_without_http_probes_sources_or_trace_export_neither_httpx_nor_the_sdk_is_imported(
        tmp_path: Path, listener: int) -> None:
    with running_agent(tmp_path, lean_config(tmp_path, listener)) as agent:
        wait_for(lambda: healthy(agent, "exec_probed", "tcp_probed"), 10, 0.02, "the exec and tcp probes to pass")
        # What the agent does on its own, and what clients ask of it: scrapes, a webhook that acts.
        wait_for(lambda: any(line.startswith("orchestrator_todo_source_up{") and line.endswith(" 1.0")
                             for line in httpx.get(agent.url + "/metrics", timeout=10).text.splitlines()),
                 10, 0.05, "the json backlog source to be read")
        token = (agent.state_dir / "webhook.token").read_text().strip()
        answer = httpx.post(agent.url + "/webhook/alertmanager", headers={"Authorization": f"Bearer {token}"},
                            json=payload(alert({"action": "restart", "component": "plain"})), timeout=10).json()
        assert answer["results"][0]["result"] == "accepted", answer
        assert len(answer["trace_id"]) == 32 and int(answer["trace_id"], 16)  # a trace id, made without the SDK
        wait_for(lambda: agent.status()["plain"]["restarts"] == 1, 10, 0.02, "the restart to be carried out")
        history = agent.api("GET", "/api/v1/history")["history"]
        assert [e["trace_id"] for e in history if e["component"] == "plain"] == [answer["trace_id"]]

        assert not [name for name in optional_imports(agent) if name in HEAVY]


def test_the_first_http_probe_imports_httpx_also_when_a_reload_adds_it(tmp_path: Path, listener: int) -> None:
    config = lean_config(tmp_path, listener)
    with running_agent(tmp_path, config) as agent:
        assert "httpx" not in optional_imports(agent)
        config["components"]["http_probed"] = {"command": ["sleep", "100000"],
                                               "probe": {"http": {"url": f"{agent.url}/-/healthy"}, "interval": 0.1}}
        agent.config_path.write_text(yaml.safe_dump(config))
        # A control verb: the command line imports httpx only when it sends its request.
        done = subprocess.run([sys.executable, "-m", "agent", "reload", "-c", str(agent.config_path)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: healthy(agent, "http_probed"), 10, 0.02, "the http probe added by the reload to pass")
        assert "httpx" in optional_imports(agent)


def test_a_sqlite_backlog_source_loads_sqlite3_and_is_read(tmp_path: Path, listener: int) -> None:
    config = lean_config(tmp_path, listener)
    config["backlog"]["sources"] = [{"kind": "sqlite", "path": str(tmp_path / "todos.db"), "interval": 0.2}]
    with running_agent(tmp_path, config) as agent:
        assert (tmp_path / "todos.db").exists()  # the agent creates its embedded store when missing
        wait_for(lambda: any(line.startswith("orchestrator_todo_source_up{") and line.endswith(" 1.0")
                             for line in httpx.get(agent.url + "/metrics", timeout=10).text.splitlines()),
                 10, 0.05, "the sqlite backlog source to be read")
        assert "sqlite3" in optional_imports(agent)


def test_an_agent_started_with_an_http_probe_imports_httpx(tmp_path: Path, listener: int) -> None:
    config = lean_config(tmp_path, listener)
    config["components"]["http_probed"] = {"command": ["sleep", "100000"], "probe": {
        "http": {"url": f"http://{config['agent']['listen']}/-/healthy"}, "interval": 0.1}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: healthy(agent, "http_probed"), 10, 0.02, "the http probe to pass")
        assert "httpx" in optional_imports(agent)


def test_the_command_line_loads_no_http_client_until_a_verb_sends_a_request() -> None:
    """`agent run` builds the whole command line (every verb's parser) before the daemon starts: that
    loads neither an HTTP client nor the backtest's replay."""
    code = ("import sys, agent.cli.main, agent.daemon.app; agent.cli.main.build_parser(); "
            f"print([name for name in {HEAVY + VERBS!r} if name in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
