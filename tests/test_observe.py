"""Observe and export: /metrics on a live agent, probes restarting hung replicas, backlog counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.cli.main import main as cli
from tests.helpers import free_port, http_ok, running_agent, wait_for
from tests.metricsutil import parse, scrape, value

PY = sys.executable


def demo(port: int, *extra: str) -> dict[str, Any]:
    return {"command": [PY, "-m", "agent.demo.demo_service", "--port", str(port), *extra]}


def test_promtool_finds_nothing_wrong_with_a_live_scrape(tmp_path: Path) -> None:
    from tests.stackbin import require_binary

    promtool = require_binary("promtool")
    port = free_port()
    db = tmp_path / "todos.db"
    cli(["todo", "--db", str(db), "add", "x", "-p", "high", "--capability", "todo_processing"])
    cfg = {"agent": {"resources": {"interval": 0.2}},
           "components": {"web": {**demo(port), "capabilities": ["web"], "essential": True,
                                  "probe": {"http": {"url": f"http://127.0.0.1:{port}/health"}, "interval": 0.2},
                                  "limits": {"memory_bytes": "256Mi"}},
                          "w": {"command": ["sleep", "100"], "replicas": {"min": 0, "max": 3, "initial": 2},
                                "capabilities": ["todo_processing"]}},
           "backlog": {"sources": [{"kind": "sqlite", "path": str(db), "interval": 0.2}]}}
    with running_agent(tmp_path, cfg) as agent:
        wait_for(lambda: httpx.get(agent.url + "/-/ready").status_code == 200, 10)
        wait_for(lambda: value(scrape(agent.url), "orchestrator_todo_source_up", source=f"sqlite:{db}") == 1, 5)
        text = httpx.get(agent.url + "/metrics").text
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.strip() == "" and check.stderr.strip() == ""
        om = httpx.get(agent.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")


def test_metrics_are_gzipped_when_the_scraper_asks_as_prometheus_does(tmp_path: Path) -> None:
    cfg = {"components": {f"c{i}": {"command": ["sleep", "100"], "capabilities": ["x"]} for i in range(20)}}
    with running_agent(tmp_path, cfg) as agent, httpx.Client(timeout=10) as client:
        url = agent.url + "/metrics"
        plain = client.get(url, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and plain.headers["vary"] == "Accept-Encoding"
        zipped = client.get(url, headers={"Accept-Encoding": "gzip"})  # what Prometheus sends
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.num_bytes_downloaded * 4 < len(zipped.content)  # httpx decompressed it
        assert set(parse(zipped.text)) == set(parse(plain.text))  # the same series
        refused = client.get(url, headers={"Accept-Encoding": "gzip;q=0, identity"})
        assert "content-encoding" not in refused.headers


def test_every_series_exists_from_the_first_scrape(tmp_path: Path) -> None:
    cfg = {"components": {"a": {"command": ["sleep", "100"], "capabilities": ["x"]},
                          "b": {"command": ["sleep", "100"], "replicas": {"min": 0, "max": 2}}}}
    with running_agent(tmp_path, cfg) as agent:
        s = scrape(agent.url)
    for comp in ("a", "b"):
        # The reason the rules alert on for a component without probe or memory limit; the others
        # appear at their first restart (docs/metrics.md, "Series per component").
        assert value(s, "orchestrator_component_restarts_total", component=comp, reason="exit") == 0
        for reason in ("probe", "alert", "manual", "resource", "spawn", "reload"):
            assert value(s, "orchestrator_component_restarts_total", component=comp, reason=reason) is None
        states = {dict(labels)["state"]: v for (name, labels), v in s.items()
                  if name == "orchestrator_component_state" and ("component", comp) in labels}
        assert list(states.values()) == [1], states  # the current state only
        assert value(s, "orchestrator_remediation_actions_total", component=comp, action="restart",
                     result="executed") is None
        assert value(s, "orchestrator_component_manual_stop", component=comp) is None
        assert value(s, "orchestrator_component_min_replicas", component=comp) is not None
    assert value(s, "orchestrator_component_capability", component="a", capability="x") == 1
    assert value(s, "orchestrator_component_up", component="b") == 1  # nothing desired, nothing missing
    # The backlog's zero per capability a component works on is its pending/normal series only
    # (docs/metrics.md, "Backlog series per capability").
    assert value(s, "orchestrator_todo_backlog", status="pending", priority="normal", capability="x") == 0
    assert value(s, "orchestrator_todo_backlog", status="pending", priority="critical", capability="x") is None
    assert value(s, "orchestrator_autonomy_mode", mode="on") == 1
    assert value(s, "orchestrator_webhook_requests_total", code="401") == 0


def test_hung_replica_is_restarted_with_reason_probe(tmp_path: Path) -> None:
    port = free_port()
    interval, timeout, threshold = 0.3, 0.3, 2
    cfg = {"components": {"web": {**demo(port), "probe": {
        "http": {"url": f"http://127.0.0.1:{port}/health"}, "interval": interval, "timeout": timeout,
        "failure_threshold": threshold}, "stop": {"grace": 1}, "restart": {"backoff": {"initial": 0}}}}}
    bound = interval * threshold + timeout + interval
    with running_agent(tmp_path, cfg) as agent:
        def probe_restarts() -> float | None:
            return value(scrape(agent.url), "orchestrator_component_restarts_total", component="web", reason="probe")

        def ready() -> bool:
            return value(scrape(agent.url), "orchestrator_component_probe_success", component="web",
                         replica="0") == 1

        for detection in (1, 2):
            wait_for(ready, 10, 0.05, "a healthy replica")
            assert httpx.post(f"http://127.0.0.1:{port}/hang", timeout=2).status_code == 200
            hung = time.monotonic()
            wait_for(lambda n=detection: probe_restarts() == n, 10, 0.02, f"probe restart #{detection}")
            detected = time.monotonic() - hung
            # The stop itself takes up to the grace; the detection must fit the probe settings.
            assert detected <= bound + 1.0 + 0.5, f"took {detected:.2f}s, bound {bound:.2f}s (+grace)"
        wait_for(ready, 10, 0.05, "the restarted replica to pass")
        # Healthy again: no further probe restarts over several intervals.
        deadline = time.monotonic() + interval * 4
        while time.monotonic() < deadline:
            assert probe_restarts() == 2
        records = agent.log_records()
        assert any("failed 2 probes in a row" in r["msg"] for r in records)


def test_mcp_probe_passes_on_mcp_and_fails_clearly_on_plain_http(tmp_path: Path) -> None:
    from agent.config.loader import build_config
    from agent.observe.httpclient import HttpClient
    from agent.observe.probes import run_probe
    from tests.helpers import run_async

    port = free_port()
    spec = build_config({"components": {"m": {"command": ["x"], "probe": {
        "mcp": {"url": f"http://127.0.0.1:{port}/mcp"}, "timeout": 5}}}}, env={}).components["m"]

    def probe_once() -> Any:
        async def go() -> Any:
            async with HttpClient() as client:
                return await run_probe(spec, 0, client, None)
        return run_async(go())

    for module, expect_ok in (("agent.demo.mcp_server", True), ("agent.demo.demo_service", False)):
        env = dict(os.environ, TODO_DB=str(tmp_path / "t.db"))
        proc = subprocess.Popen([PY, "-m", module, "--port", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=tmp_path, env=env)
        try:
            health = "/health"
            wait_for(lambda h=health: http_ok(f"http://127.0.0.1:{port}{h}"), 15, 0.05, f"{module} to listen")
            result = probe_once()
            assert result.ok is expect_ok, result
            if expect_ok:
                assert "initialize+ping ok" in result.message
            else:
                assert result.reason == "protocol"
                assert f"127.0.0.1:{port}/mcp" in result.message
                assert len(result.message) < 400
        finally:
            proc.terminate()
            proc.wait(10)


def test_todo_counts_are_exact_and_a_broken_json_source_is_down(tmp_path: Path) -> None:
    db = tmp_path / "todos.db"
    bad = tmp_path / "seed-todos.json"
    bad.write_text('[{"status": "pending", "priority": "high"},\n {"status": "pending",, }]')
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"status": "todo", "priority": "urgent", "capabilities": ["gpu"]},
                                {"status": "completed", "priority": "medium"}]))
    expected: dict[tuple[str, str], int] = {}
    priorities = ["low", "normal", "high", "critical"]
    caps = ["todo_processing", "analysis", "gpu", ""]
    for i in range(100):
        p, c = priorities[i % 4], caps[(i // 4) % 4]
        args = ["todo", "--db", str(db), "add", f"todo {i}", "-p", p]
        if c:
            args += ["--capability", c]
        assert cli(args) == 0
        key = (p, {"": "any", "gpu": "_other"}.get(c, c))  # no component serves gpu
        expected[key] = expected.get(key, 0) + 1
    # The real console script works too.
    out = subprocess.run([PY, "-m", "agent", "todo", "--db", str(db), "--json", "list", "--status", "pending"],
                         capture_output=True, text=True, timeout=30)
    assert len(json.loads(out.stdout)) == 100
    cfg = {"components": {"w": {"command": ["sleep", "100"], "capabilities": ["todo_processing", "analysis"]}},
           "backlog": {"sources": [{"kind": "sqlite", "path": str(db), "interval": 0.2, "name": "main"},
                                   {"kind": "json", "path": str(bad), "interval": 0.2, "name": "broken"},
                                   {"kind": "json", "path": str(good), "interval": 0.2, "name": "seed"}]}}
    with running_agent(tmp_path, cfg) as agent:
        s = wait_for(lambda: (x := scrape(agent.url)) and value(x, "orchestrator_todo_source_up", source="main") == 1
                     and x, 10)
        for (p, c), n in expected.items():
            extra = 1 if (p, c) == ("critical", "_other") else 0  # from the good JSON file
            assert value(s, "orchestrator_todo_backlog", status="pending", priority=p, capability=c) == n + extra
        assert value(s, "orchestrator_todo_backlog", status="done", priority="normal", capability="any") == 1
        assert value(s, "orchestrator_todo_source_up", source="broken") == 0
        assert value(s, "orchestrator_todo_source_up", source="seed") == 1
        assert (value(s, "orchestrator_todo_oldest_pending_age_seconds", priority="low") or 0) > 0
        for _ in range(5):
            assert httpx.get(agent.url + "/metrics").status_code == 200
        down = [r["msg"] for r in agent.log_records() if "backlog source broken is down" in r["msg"]]
        assert len(down) == 1, "one log line, not one per read"
        assert str(bad) in down[0] and "line 2 column 23" in down[0]


def test_claim_and_done_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "t.db")
    cli(["todo", "--db", db, "add", "a", "-p", "low"])
    cli(["todo", "--db", db, "add", "b", "-p", "critical", "--capability", "gpu"])
    capsys.readouterr()
    assert cli(["todo", "--db", db, "--json", "claim", "--worker", "w1", "--capability", "cpu"]) == 0
    taken = json.loads(capsys.readouterr().out)
    assert taken["title"] == "a" and taken["claimed_by"] == "w1"  # the critical one needs a gpu
    assert cli(["todo", "--db", db, "--json", "claim", "--worker", "w2", "--capability", "gpu"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "b"
    assert cli(["todo", "--db", db, "claim", "--worker", "w3"]) == 1
    assert cli(["todo", "--db", db, "done", str(taken["id"])]) == 1  # claimed: only with the claim's token
    assert "pass the claim's --token" in capsys.readouterr().err
    assert cli(["todo", "--db", db, "done", str(taken["id"]), "--token", "not-it"]) == 1
    assert "completion rejected" in capsys.readouterr().err
    assert cli(["todo", "--db", db, "done", str(taken["id"]), "--token", taken["claim_token"]]) == 0
    assert cli(["todo", "--db", db, "done", "999"]) == 1


def test_readiness_waits_for_essential_probes(tmp_path: Path) -> None:
    port = free_port()
    gate = tmp_path / "gate"
    cfg = {"components": {"slow": {"command": f"while [ ! -f {gate} ]; do sleep 0.05; done; exec {PY} -m "
                                              f"agent.demo.demo_service --port {port}", "shell": True,
                                   "essential": True,
                                   "probe": {"http": {"url": f"http://127.0.0.1:{port}/health"}, "interval": 0.1}}}}
    with running_agent(tmp_path, cfg) as agent:
        r = httpx.get(agent.url + "/-/ready")
        assert r.status_code == 503 and r.json()["waiting_for"] == ["slow"]
        assert httpx.get(agent.url + "/-/healthy").status_code == 200
        gate.write_text("go")
        wait_for(lambda: httpx.get(agent.url + "/-/ready").status_code == 200, 10)


def test_parse_helper_reads_labels() -> None:
    s = parse('m_total{a="1"} 3\n')
    assert value(s, "m_total", a="1") == 3
