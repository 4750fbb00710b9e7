"""One bench.scale stack: the agent supervising the demo's todo_worker, Prometheus and Alertmanager with
the shipped files (or the baseline's), each on its own ports and in its own directory.

Only what ties the files to this machine changes: scrape targets, rule_files, the webhook url and its
token file. Every timing stays as shipped (Prometheus scrapes and evaluates every 15 s), except that
Alertmanager's mute and active time intervals are dropped: they follow the wall clock, so a run at 10:00
on a weekday would differ from one on Sunday night.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.config.component import RemediationSettings
from agent.todos.store import open_store
from bench.ports import free_port
from bench.waiting import Timeout, wait_for

ROOT = Path(__file__).resolve().parent.parent
BASELINE = Path(__file__).resolve().parent / "scale_baseline"
COMPONENT = "todo_worker"
READY_SECONDS = 120.0  # the first scrape and rule evaluation come up to 15 s after Prometheus starts
SETTLE_SECONDS = 300.0
QUIET_SECONDS = 60.0  # four rule evaluations at the shipped 15 s


@dataclass(frozen=True)
class Files:
    """Which rules, Alertmanager config and todo_worker remediation a stack runs with."""

    label: str  # "new" or "old"
    rules: list[Path]
    alertmanager: Path
    remediation: dict[str, Any]


def demo_config() -> dict[str, Any]:
    """The embedded demo config as shipped (agent/demo/default.yaml), unsubstituted."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "agent" / "demo" / "default.yaml").read_text())
    return doc


def accepted_remediation(remediation: dict[str, Any]) -> dict[str, Any]:
    """`remediation` without keys the agent's config model does not have (max_step_percent before it)."""
    return {k: v for k, v in remediation.items() if k in RemediationSettings.model_fields}


def new_files() -> Files:
    """The working tree's files, read now."""
    remediation = demo_config()["components"][COMPONENT]["remediation"]
    return Files("new", sorted((ROOT / "rules").glob("*.yml")), ROOT / "prometheus" / "alertmanager.yml",
                 accepted_remediation(remediation))


def old_files() -> Files:
    """The baseline (bench/scale_baseline/README.md): the rules before issue 28."""
    remediation = yaml.safe_load((BASELINE / "remediation.yaml").read_text())
    return Files("old", sorted((BASELINE / "rules").glob("*.yml")), BASELINE / "alertmanager.yml",
                 accepted_remediation(remediation))


def prometheus_config(rules: Path, agent: int, prom: int, am: int) -> dict[str, Any]:
    """prometheus/prometheus.yml with its targets on these ports and its rules from `rules`."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    doc["rule_files"] = [str(rules / "*.yml")]
    doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{am}"]
    ports = {"orchestrator-agent": agent, "prometheus": prom, "alertmanager": am}
    for job in doc["scrape_configs"]:
        if job["job_name"] not in ports:
            raise ValueError(f"prometheus.yml: unknown scrape job {job['job_name']!r} (known: {sorted(ports)})")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    return doc


def alertmanager_config(source: Path, agent: int, token: Path, receiver: int) -> dict[str, Any]:
    """`source` with the agent's webhook on `agent` (its token file `token`), every other webhook on the
    receiver, and no time intervals (they depend on the wall clock)."""
    doc: dict[str, Any] = copy.deepcopy(yaml.safe_load(source.read_text()))

    def walk(route: dict[str, Any]) -> None:
        route.pop("mute_time_intervals", None)
        route.pop("active_time_intervals", None)
        for child in route.get("routes", []):
            walk(child)

    walk(doc["route"])
    doc.pop("time_intervals", None)
    doc.pop("mute_time_intervals", None)
    for receiver_doc in doc.get("receivers", []):
        for hook in receiver_doc.get("webhook_configs", []):
            if "/webhook/alertmanager" in hook["url"]:
                hook["url"] = f"http://127.0.0.1:{agent}/webhook/alertmanager"
                auth = hook.get("http_config", {}).get("authorization")
                if auth is not None:
                    auth["credentials_file"] = str(token)
            else:
                hook["url"] = f"http://127.0.0.1:{receiver}/webhook"
    return doc


def agent_config(tmp: Path, port: int, db: Path, remediation: dict[str, Any]) -> dict[str, Any]:
    """The demo's agent intervals and its todo_worker (its command on `db`, no dependency), alone."""
    demo = demo_config()
    worker = copy.deepcopy(demo["components"][COMPONENT])
    worker.pop("depends_on", None)
    worker["command"] = [str(db) if arg == "todos.db" else arg for arg in worker["command"]]
    worker["remediation"] = dict(remediation)
    (source,) = [s for s in demo["backlog"]["sources"] if s["kind"] == "sqlite"]
    return {
        "agent": {"listen": f"127.0.0.1:{port}", "node": "bench", "autonomy": "on", "state_dir": str(tmp / "state"),
                  "log_dir": str(tmp / "logs"), "resources": demo["agent"]["resources"]},
        "components": {COMPONENT: worker},
        "backlog": {"sources": [dict(source, path=str(db), name="todos")]},
    }


def binary(*names: str) -> str:
    """The first of `names` on PATH (RuntimeError naming the Debian package otherwise)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(f"none of {', '.join(names)} is on PATH (apt-get install prometheus prometheus-alertmanager)")


class Stack:
    """The processes of one scenario; `stop()` ends each by its pid."""

    def __init__(self, tmp: Path, files: Files) -> None:
        self.tmp = tmp
        self.files = files
        self.db = tmp / "todos.db"
        self.agent_port, self.prom_port, self.am_port, self.receiver_port = (free_port() for _ in range(4))
        self.agent_url = f"http://127.0.0.1:{self.agent_port}"
        self.prom_url = f"http://127.0.0.1:{self.prom_port}"
        self.am_url = f"http://127.0.0.1:{self.am_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(timeout=5)

    def _start(self, name: str, argv: list[str]) -> None:
        with open(self.tmp / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(argv, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        """RuntimeError naming the first process that exited, with the tail of its log."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.tmp / f"{name}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def _get(self, url: str, **params: str) -> httpx.Response | None:
        self.check_alive()
        try:
            return self.http.get(url, params=params)
        except httpx.HTTPError:
            return None

    def start(self) -> None:
        """Write the configs, start everything and wait until a rule evaluation has seen the worker."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        rules = self.tmp / "rules"
        rules.mkdir()
        for path in self.files.rules:
            shutil.copy(path, rules / path.name)
        open_store(str(self.db)).counters()  # the schema, before the agent's source and the worker read it
        (self.tmp / "agent.yaml").write_text(yaml.safe_dump(
            agent_config(self.tmp, self.agent_port, self.db, self.files.remediation)))
        token = self.tmp / "state" / "webhook.token"
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(
            prometheus_config(rules, self.agent_port, self.prom_port, self.am_port)))
        (self.tmp / "alertmanager.yml").write_text(yaml.safe_dump(
            alertmanager_config(self.files.alertmanager, self.agent_port, token, self.receiver_port)))
        self._start("agent", [sys.executable, "-m", "agent", "run", "--config", str(self.tmp / "agent.yaml")])
        wait_for(lambda: (r := self._get(self.agent_url + "/-/ready")) is not None and r.status_code == 200,
                 60, 0.2, "the agent to be ready")
        self._start("receiver", [sys.executable, "-m", "agent.demo.alert_receiver", "--port", str(self.receiver_port)])
        self._start("prometheus", [binary("prometheus"), f"--config.file={self.tmp / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={self.tmp / 'prom'}",
                                   f"--web.listen-address=127.0.0.1:{self.prom_port}", "--log.level=warn"])
        self._start("alertmanager", [binary("prometheus-alertmanager", "alertmanager"),
                                     f"--config.file={self.tmp / 'alertmanager.yml'}",
                                     f"--storage.path={self.tmp / 'am'}",
                                     f"--web.listen-address=127.0.0.1:{self.am_port}", "--cluster.listen-address=",
                                     "--log.level=warn"])
        wait_for(lambda: self.replicas()[1] == 1, 30, 0.2, "one todo_worker replica running")
        wait_for(lambda: (r := self._get(self.am_url + "/-/ready")) is not None and r.status_code == 200,
                 30, 0.2, "Alertmanager to be ready")
        wait_for(self._scraped_and_evaluated, READY_SECONDS, 0.5,
                 "Prometheus to scrape the agent and evaluate every rule group")

    def _scraped_and_evaluated(self) -> bool:
        r = self._get(self.prom_url + "/api/v1/query", query='up{job="orchestrator-agent"} == 1')
        if r is None or r.status_code != 200 or not r.json()["data"]["result"]:
            return False
        r = self._get(self.prom_url + "/api/v1/rules")
        if r is None or r.status_code != 200:
            return False
        groups = r.json()["data"]["groups"]
        # A group evaluated after the first scrape has its lastEvaluation set (Go's zero time before).
        return bool(groups) and all(not g["lastEvaluation"].startswith("0001-") for g in groups)

    def _quiet(self) -> bool:
        """No alert with an `action` label is pending or firing in Prometheus."""
        r = self._get(self.prom_url + "/api/v1/alerts")
        if r is None or r.status_code != 200:
            return False
        return not any(a["labels"].get("action") for a in r.json()["data"]["alerts"])

    def settle(self, quiet_seconds: float = QUIET_SECONDS) -> bool:
        """Wait until no alert asks the agent to act for `quiet_seconds` on end (the idle state the rules lead
        to, such as a scale-down to min, reached before t=0: rates need a few scrapes before such an alert
        can fire); False when that does not come within SETTLE_SECONDS."""
        since: list[float] = []

        def quiet() -> bool:
            if not self._quiet():
                since.clear()
                return False
            if not since:
                since.append(time.monotonic())
            return time.monotonic() - since[0] >= quiet_seconds

        try:
            wait_for(quiet, SETTLE_SECONDS, 0.5, f"no alert with an action for {quiet_seconds:g} s")
        except Timeout:
            return False
        return True

    def replicas(self) -> tuple[int | None, int | None]:
        """(desired, running) of todo_worker from the agent's /metrics; None where not read."""
        r = self._get(self.agent_url + "/metrics")
        if r is None or r.status_code != 200:
            return None, None
        found: dict[str, int] = {}
        wanted = f'component="{COMPONENT}"'
        for line in r.text.splitlines():
            name, _, rest = line.partition("{")
            if name in ("orchestrator_component_desired_replicas", "orchestrator_component_replicas") \
                    and wanted in rest:
                found[name] = int(float(line.rsplit(" ", 1)[1]))
        return found.get("orchestrator_component_desired_replicas"), found.get("orchestrator_component_replicas")

    def history(self) -> list[dict[str, Any]]:
        """The agent's remediation history of todo_worker (GET /api/v1/history)."""
        token = (self.tmp / "state" / "control.token").read_text().strip()
        r = self.http.get(self.agent_url + "/api/v1/history", params={"component": COMPONENT, "limit": "10000"},
                          headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        entries: list[dict[str, Any]] = r.json()["history"]
        return entries

    def stop(self) -> None:
        """SIGTERM each process we started (the agent stops its workers), then SIGKILL what is left, by pid."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        self.http.close()


def work_seconds() -> float:
    """The demo todo_worker's seconds per todo: its command's --work-seconds, else demo_worker's default."""
    from agent.demo.demo_worker import build_parser

    command = demo_config()["components"][COMPONENT]["command"]
    args, _ = build_parser().parse_known_args(command[command.index("agent.demo.demo_worker") + 1:])
    return float(args.work_seconds)
