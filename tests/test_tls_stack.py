"""The shipped Prometheus and Alertmanager configs, their TLS blocks uncommented, against an agent that
serves TLS with basic auth: a real Prometheus scrapes it, a real Alertmanager delivers its webhook."""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

import httpx
import yaml

from agent.cli.tls_init import init
from scripts.gen_stack import write_fast_rules
from tests.helpers import AgentProcess, free_port, wait_for
from tests.stack import THRESHOLDS, alertmanager_config, prometheus_config
from tests.stackbin import require_binary


def test_prometheus_scrapes_and_alertmanager_delivers_over_tls(tmp_path: Path) -> None:
    prom_bin = require_binary("prometheus")
    am_bin = require_binary("prometheus-alertmanager", "alertmanager")
    tls = tmp_path / "tls"
    init(tls, ["localhost", "127.0.0.1"], days=2, user="prometheus")
    agent_port, prom_port, am_port = free_port(), free_port(), free_port()
    write_fast_rules(tmp_path / "rules", THRESHOLDS)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(
        prometheus_config(tmp_path / "rules", agent_port, prom_port, am_port, tls=tls)))
    am = alertmanager_config(agent_port, tmp_path / "state" / "webhook.token", free_port(), tls=tls)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am))
    hook = next(r for r in am["receivers"] if r["name"] == "agent-webhook")["webhook_configs"][0]
    assert hook["url"].startswith("https://") and hook["http_config"]["tls_config"]["ca_file"] == str(tls / "ca.crt")
    node = "tls-node"
    cfg = {
        "agent": {"listen": f"127.0.0.1:{agent_port}", "node": node, "web_config_file": str(tls / "web-config.yml"),
                  "client_tls": {"ca_file": str(tls / "ca.crt")}},
        "components": {
            "prometheus": {"command": [prom_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp_path / 'prom'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]},
            "alertmanager": {"command": [am_bin, f"--config.file={tmp_path / 'alertmanager.yml'}",
                                         f"--storage.path={tmp_path / 'am'}", "--cluster.listen-address=",
                                         f"--web.listen-address=127.0.0.1:{am_port}", "--log.level=warn"]},
            "worker": {"command": "sleep 100000", "shell": True},
        },
    }
    password = (tls / "metrics.password").read_text()
    agent = AgentProcess(tmp_path, cfg).use_tls(tls / "ca.crt", basic=("prometheus", password)).start()
    prom, alertmanager = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"
    try:
        def scraped() -> bool:
            try:
                result = httpx.get(prom + "/api/v1/query", params={"query": 'up{job="orchestrator-agent"}'},
                                   timeout=5).json()["data"]["result"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return bool(result) and result[0]["value"][1] == "1"
        wait_for(scraped, 60, 0.2, "Prometheus to scrape the agent over TLS with basic auth")
        build = httpx.get(prom + "/api/v1/query", params={"query": "orchestrator_build_info"}, timeout=5).json()
        assert build["data"]["result"], build

        (before,) = agent.status()["worker"]["pids"]
        now = datetime.datetime.now(datetime.UTC)
        alert = [{"labels": {"alertname": "OrchestratorTlsTest", "action": "restart", "component": "worker",
                             "node": node, "severity": "warning", "run": uuid.uuid4().hex},
                  "annotations": {"summary": "restart over TLS"},
                  "startsAt": now.isoformat(), "endsAt": (now + datetime.timedelta(minutes=5)).isoformat()}]
        wait_for(lambda: httpx.post(alertmanager + "/api/v2/alerts", json=alert, timeout=5).status_code == 200, 60,
                 0.2, "Alertmanager to take the alert")

        def restarted() -> bool:
            pids = agent.status()["worker"]["pids"]
            return bool(pids) and pids[0] != before
        wait_for(restarted, 60, 0.2, "the webhook, delivered over TLS, to restart the worker")
        history = agent.api("GET", "/api/v1/history")["history"]
        assert any(e["alertname"] == "OrchestratorTlsTest" and e["result"] == "executed" for e in history), history
    finally:
        agent.stop()
