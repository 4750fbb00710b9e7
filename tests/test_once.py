"""`agent --once`: each exit code from a situation built for it, JSON against the documented schema."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from agent.config.loader import build_config
from agent.config.sources import BacklogSource
from agent.export.once import Status, judge, overall
from agent.observe.backlog import BacklogMonitor
from agent.observe.httpclient import HttpClient
from agent.observe.probes import ProbeResult
from agent.observe.resources import HostUsage
from tests.helpers import free_port, running_agent, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "once.schema.json").read_text())


@pytest.fixture
def service(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agent.demo.demo_service", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 10)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def once(tmp_path: Path, cfg: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "agent", "--once", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


def probe(port: int, essential: bool) -> dict[str, Any]:
    return {"command": ["x"], "essential": essential,
            "probe": {"http": {"url": f"http://127.0.0.1:{port}/health"}, "timeout": 1}}


def test_ok(tmp_path: Path, service: int) -> None:
    db = tmp_path / "t.db"
    from agent.todos import transactions as todos
    todos.add(db, "a", "high", ["x"])
    out = once(tmp_path, {"components": {"web": probe(service, True)},
                          "backlog": {"sources": [{"kind": "sqlite", "path": str(db)}]}}, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["status"] == "OK" and doc["components"]["web"]["ok"] is True
    assert {"status": "pending", "priority": "high", "capability": "x", "count": 1} in doc["backlog"]["counts"]


def test_warning_when_a_non_essential_component_is_down(tmp_path: Path, service: int) -> None:
    out = once(tmp_path, {"components": {"web": probe(service, True), "extra": probe(free_port(), False)}},
               "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["components"]["extra"]["reason"] == "connect"


def test_critical_when_an_essential_component_is_down(tmp_path: Path) -> None:
    out = once(tmp_path, {"components": {"core": probe(free_port(), True)}}, "--json")
    assert out.returncode == 2
    jsonschema.validate(json.loads(out.stdout), SCHEMA)


def test_unknown_when_nothing_can_be_checked(tmp_path: Path) -> None:
    out = once(tmp_path, {"components": {"a": {"command": ["x"]}}}, "--json")
    assert out.returncode == 3
    doc = json.loads(out.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["components"] == {"a": None}


def test_unknown_when_the_config_is_invalid(tmp_path: Path) -> None:
    out = once(tmp_path, {"components": {"a": {"bogus": 1}}})
    assert out.returncode == 3
    assert "UNKNOWN: invalid config" in out.stderr


def test_table_and_textfile_formats(tmp_path: Path) -> None:
    cfg = {"components": {"core": probe(free_port(), True)}}
    table = once(tmp_path, cfg)
    assert table.returncode == 2 and "CRITICAL" in table.stdout
    text = once(tmp_path, cfg, "--format", "prometheus")
    assert "orchestrator_check_status 2.0" in text.stdout
    assert 'orchestrator_component_probe_success{component="core",replica="0"} 0.0' in text.stdout


def test_textfile_families_have_the_help_and_type_of_the_live_metrics(tmp_path: Path) -> None:
    """A series means the same in both outputs, so its HELP and TYPE must be the same too."""
    from prometheus_client.parser import text_string_to_metric_families

    from agent.todos import transactions as todos

    db = tmp_path / "t.db"
    todos.add(db, "a", "high", ["x"])
    port = free_port()
    # The component's probe is the agent's own port: it passes for the agent and for --once alike.
    cfg: dict[str, Any] = {
        "agent": {"listen": f"127.0.0.1:{port}"},
        "components": {"core": {"command": ["sleep", "100"], "capabilities": ["x"],
                                "probe": {"tcp": {"port": port}}}},
        "backlog": {"sources": [{"kind": "sqlite", "path": str(db)}]},
    }
    once = [sys.executable, "-m", "agent", "--once", "--format", "prometheus"]
    with running_agent(tmp_path, cfg) as agent:
        import httpx

        live = {f.name: (f.documentation, f.type)
                for f in text_string_to_metric_families(httpx.get(agent.url + "/metrics", timeout=5).text)}
        out = subprocess.run([*once, "--config", str(agent.config_path)], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path)
    # The agent answered: the report is its view, and --once probed nothing.
    assert out.returncode == 0, out.stdout + out.stderr
    textfile = {f.name: (f.documentation, f.type) for f in text_string_to_metric_families(out.stdout)}
    own = {"orchestrator_check_status", "orchestrator_check_timestamp_seconds", "orchestrator_check_source"}
    shared = set(textfile) - own
    assert shared == {"orchestrator_host_memory_available_bytes", "orchestrator_host_disk_free_bytes",
                      "orchestrator_todo_backlog", "orchestrator_todo_source_up"}
    assert {n: textfile[n] for n in shared} == {n: live.get(n) for n in shared}
    # Stopped cleanly: --once probes the component itself (it fails now), in the live family's terms.
    out = subprocess.run([*once, "--config", str(agent.config_path)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert 'orchestrator_check_source{source="direct"} 1.0' in out.stdout, out.stdout + out.stderr
    textfile = {f.name: (f.documentation, f.type) for f in text_string_to_metric_families(out.stdout)}
    assert textfile["orchestrator_component_probe_success"] == live["orchestrator_component_probe_success"]


def _monitor(up: bool) -> BacklogMonitor:
    m = BacklogMonitor([BacklogSource(kind="json", path=Path("x.json"))], HttpClient())
    next(iter(m.sources.values())).up = up
    return m


@pytest.mark.parametrize(
    ("mem_free", "disk_free", "expected"),
    [(0.5, 0.5, Status.OK), (0.08, 0.5, Status.WARNING), (0.5, 0.04, Status.CRITICAL)],
)
def test_resource_thresholds(mem_free: float, disk_free: float, expected: Status) -> None:
    config = build_config({}, env={})
    host = HostUsage(memory_available=int(mem_free * 100), memory_total=100,
                     disk_free={"/": int(disk_free * 100)}, disk_total={"/": 100})
    assert overall(judge(config, {}, host, _monitor(True)), True) is expected


def test_source_down_is_a_warning() -> None:
    config = build_config({"components": {"a": {"command": ["x"], "essential": True}}}, env={})
    checks = judge(config, {"a": ProbeResult(True, "none", "ok", 0.01)}, HostUsage(), _monitor(False))
    assert overall(checks, True) is Status.WARNING
