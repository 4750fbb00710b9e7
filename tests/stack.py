"""The whole loop on loopback, natively: the agent supervises a real Prometheus and Alertmanager.

The configs are the project's own (prometheus/*.yml, rules/), re-pointed at free ports, with every
minute of the rules made a second (scripts/gen_stack.py's fast clock) and Alertmanager's waits shortened.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from scripts.gen_stack import write_fast_rules
from tests.helpers import ROOT, AgentProcess, free_port, http_ok, wait_for
from tests.stackbin import require_binary

# The drain target on the fast clock: a surge of 400 todos at 0.25 s a todo wants 0.25 x 400 / 10 = 10
# replicas (before W is measured: 6 x 400 / 10), more than todo_worker's max 8.
THRESHOLDS: dict[str, float] = {"orchestrator:backlog_drain_target_seconds": 10}


def uncomment_tls(text: str, tls: Path, default_dir: str = "../tls") -> str:
    """The shipped config with its `# >>> TLS` ... `# <<< TLS` block uncommented, its files in `tls`."""
    out, inside = [], False
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("# >>> TLS"):
            inside = True
            continue
        if stripped.startswith("# <<< TLS"):
            inside = False
            continue
        if inside and stripped.startswith("#"):
            indent = line[:len(line) - len(stripped)]
            line = indent + stripped[2:] if stripped.startswith("# ") else indent + stripped[1:]
            if line.strip().startswith("#"):
                continue  # a comment inside the block (about client certificates), or its prose
        out.append(line.replace(default_dir, str(tls)))
    return "\n".join(out) + "\n"


def prometheus_config(rules: Path, agent_port: int, prom_port: int, am_port: int,
                      tls: Path | None = None) -> dict[str, Any]:
    text = (ROOT / "prometheus" / "prometheus.yml").read_text()
    doc = yaml.safe_load(uncomment_tls(text, tls) if tls is not None else text)
    doc["global"].update(scrape_interval="1s", evaluation_interval="1s")
    doc["rule_files"] = [str(rules / "*.yml")]
    doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{am_port}"]
    ports = {"orchestrator-agent": agent_port, "prometheus": prom_port, "alertmanager": am_port}
    for job in doc["scrape_configs"]:
        job["static_configs"][0]["targets"] = [f"127.0.0.1:{ports[job['job_name']]}"]
    return doc


def alertmanager_config(agent_port: int, token: Path, receiver_port: int, tls: Path | None = None) -> dict[str, Any]:
    text = (ROOT / "prometheus" / "alertmanager.yml").read_text()
    doc = yaml.safe_load(uncomment_tls(text, tls) if tls is not None else text)
    route = doc["route"]
    route.update(group_wait="1s", group_interval="1s", repeat_interval="3s")

    def walk(r: dict[str, Any]) -> None:
        for child in r.get("routes", []):
            for key in ("group_wait", "group_interval"):
                if key in child:
                    child[key] = "1s"
            if "repeat_interval" in child:
                child["repeat_interval"] = "3s"
            # Peak hours and maintenance windows depend on the wall clock: not in a test of the loop.
            child.pop("mute_time_intervals", None)
            walk(child)

    walk(route)
    receivers = {r["name"]: r for r in doc["receivers"]}
    for hook in receivers["agent-webhook"]["webhook_configs"]:
        hook["url"] = f"{'https://localhost' if tls else 'http://127.0.0.1'}:{agent_port}/webhook/alertmanager"
        hook["http_config"]["authorization"]["credentials_file"] = str(token)
    # The demo's alert receiver (a component below), where alerts for people land.
    (hook,) = receivers["human"]["webhook_configs"]
    hook["url"] = f"http://127.0.0.1:{receiver_port}/webhook"
    return doc


@dataclass
class Stack:
    tmp: Path
    agent: AgentProcess
    prom: str
    am: str
    demo_port: int
    db: Path
    receiver: str
    timeline: list[str] = field(default_factory=list)

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(self.prom + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        alerts = httpx.get(self.prom + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"].get("alertname") == alertname and a["state"] == "firing"
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def am_alerts(self, alertname: str) -> list[dict[str, Any]]:
        r = httpx.get(self.am + "/api/v2/alerts", params={"filter": f'alertname="{alertname}"'}, timeout=10)
        r.raise_for_status()
        alerts: list[dict[str, Any]] = r.json()
        return alerts

    def received(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        """Alerts the human receiver (agent/demo/alert_receiver.py) got, newest first."""
        alerts: list[dict[str, Any]] = httpx.get(self.receiver + "/alerts", timeout=10).json()["alerts"]
        return [a for a in alerts if a["labels"].get("alertname") == alertname
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def note(self, text: str) -> None:
        self.timeline.append(f"{time.strftime('%H:%M:%S')} {text}")
        print(self.timeline[-1], flush=True)


def components(prom_bin: str, am_bin: str, tmp: Path, prom_port: int, am_port: int, demo_port: int,
               db: Path, receiver_port: int) -> dict[str, Any]:
    py = sys.executable
    return {
        "prometheus": {
            "command": [prom_bin, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'prom'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                        f"--web.external-url=http://127.0.0.1:{prom_port}/", "--log.level=warn",
                        # The fast clock for sending too: a firing alert goes to Alertmanager again after 1 s,
                        # not 1 m, so one that fired before Alertmanager was up (OrchestratorWatchdog at
                        # start) reaches it within a second of it coming up.
                        "--rules.alert.resend-delay=1s"],
            "probe": {"http": {"url": f"http://127.0.0.1:{prom_port}/-/ready"}, "interval": 1,
                      "startup_grace": 60},
            "remediation": {"allowed_actions": []},
        },
        "alertmanager": {
            "command": [am_bin, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'am'}",
                        f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
                        "--log.level=warn"],
            "probe": {"http": {"url": f"http://127.0.0.1:{am_port}/-/ready"}, "interval": 1, "startup_grace": 60},
            "remediation": {"allowed_actions": []},
        },
        "alert_receiver": {
            "command": [py, "-m", "agent.demo.alert_receiver", "--port", str(receiver_port)],
            "probe": {"http": {"url": f"http://127.0.0.1:{receiver_port}/health"}, "interval": 1},
        },
        # Its probe only marks it unhealthy: the restart must come through rule -> Alertmanager -> webhook.
        "hungry": {
            "command": [py, "-m", "agent.demo.demo_service", "--port", str(demo_port)],
            "essential": True,
            "probe": {"http": {"url": f"http://127.0.0.1:{demo_port}/health"}, "interval": 0.5, "timeout": 0.5,
                      "failure_threshold": 2, "startup_grace": 0, "restart": False},
            "stop": {"grace": 1},
            "remediation": {"cooldown": 0},
        },
        "crashy": {
            "command": ["sh", "-c", "exit 1"],
            "restart": {"max_restarts": 3, "window": 60, "circuit_cooldown": 600, "backoff": {"initial": 0.05}},
        },
        "todo_worker": {
            "command": [py, "-m", "agent.demo.demo_worker", "--db", str(db), "--work-seconds", "0.25",
                        "--idle-poll", "0.2"],
            "capabilities": ["todo_processing"],
            "replicas": {"min": 1, "max": 8, "initial": 1},
            "stop": {"grace": 3},
            # The demo's step policy. Its stabilisation (5 min) is 5 drain targets (60 s): 5 x 10 s here.
            "remediation": {"cooldown": 0, "scale_down_stabilization": 50, "max_step": 4, "max_step_percent": 100},
        },
    }


def start_stack(tmp: Path, agent: dict[str, Any] | None = None, only: set[str] | None = None,
                extra: dict[str, Any] | None = None, sources: list[dict[str, Any]] | None = None) -> Stack:
    """The stack, started; `agent` is merged into the agent's settings, `only` keeps those components
    besides prometheus, alertmanager and alert_receiver (default: every one above); `extra` components
    are added (whatever `only` says) and `sources` are backlog sources read besides the sqlite one."""
    prom_bin = require_binary("prometheus")
    am_bin = require_binary("prometheus-alertmanager", "alertmanager")
    agent_port, prom_port, am_port, demo_port, receiver_port = (free_port() for _ in range(5))
    rules = tmp / "rules"
    write_fast_rules(rules, THRESHOLDS)
    state = tmp / "state"
    db = tmp / "todos.db"
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(rules, agent_port, prom_port, am_port)))
    am_config = alertmanager_config(agent_port, state / "webhook.token", receiver_port)
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    comps = components(prom_bin, am_bin, tmp, prom_port, am_port, demo_port, db, receiver_port)
    if only is not None:
        keep = only | {"prometheus", "alertmanager", "alert_receiver"}
        comps = {name: spec for name, spec in comps.items() if name in keep}
    comps.update(extra or {})
    cfg = {
        "agent": {"listen": f"127.0.0.1:{agent_port}", "node": "e2e", "resources": {"interval": 1},
                  **(agent or {})},
        "components": comps,
        "backlog": {"sources": [{"kind": "sqlite", "path": str(db), "interval": 0.5, "name": "todos"},
                                *(sources or [])]},
    }
    process = AgentProcess(tmp, cfg).start()
    stack = Stack(tmp, process, f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}", demo_port, db,
                  f"http://127.0.0.1:{receiver_port}")
    try:
        wait_for(lambda: httpx.get(process.url + "/-/ready").status_code == 200, 60, 0.2, "the stack to be ready")
        # Prometheus answers its API with 503 "Service Unavailable" until its TSDB is open (a loaded CI
        # machine: the query below failed to parse that as JSON).
        wait_for(lambda: http_ok(stack.prom + "/-/ready"), 60, 0.2, "Prometheus to be ready")
        wait_for(lambda: stack.scalar('up{job="orchestrator-agent"}') == 1, 30, 0.2, "Prometheus to scrape the agent")
        # One rule evaluation done before any fault is injected.
        wait_for(lambda: stack.query("component:orchestrator_component_automation_allowed:bool"), 30, 0.2,
                 "a rule evaluation")
    except BaseException:
        process.stop()
        raise
    return stack


@contextlib.contextmanager
def running_stack(tmp: Path, agent: dict[str, Any] | None = None, only: set[str] | None = None,
                  extra: dict[str, Any] | None = None, sources: list[dict[str, Any]] | None = None) -> Iterator[Stack]:
    """start_stack, then the agent stopped (it stops Prometheus and Alertmanager with it) and the timeline
    printed; the agent must stop cleanly."""
    stack = start_stack(tmp, agent, only, extra, sources)
    try:
        yield stack
    finally:
        code = stack.agent.stop(timeout=60)
        print("\n".join(["timeline:", *stack.timeline]))
        assert code == 0
