"""Stopping a component with running dependents, and starting one with stopped dependencies, through the
control API of a real agent: `with_dependents` stops them first (reverse dependency order), without it
the answer names them; a start brings up its stopped dependencies first, each ready before the next."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import AgentProcess, running_agent, wait_for

SLEEP = ["sleep", "1000"]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    config = {"components": {
        "db": {"command": SLEEP, "ready_after": 0.4},
        "api": {"command": SLEEP, "depends_on": ["db"], "ready_after": 0.2},
        "web": {"command": SLEEP, "depends_on": ["api"]},
        "other": {"command": SLEEP},
    }}
    with running_agent(tmp_path, config) as running:
        wait_for(lambda: all(c["pids"] for c in running.status().values()), 10, what="everything running")
        yield running


def running(agent: AgentProcess) -> set[str]:
    return {name for name, c in agent.status().items() if c["pids"]}


def logged(agent: AgentProcess, suffix: str) -> list[tuple[str, float]]:
    """(component, when) of the agent's log lines `component NAME replica 0 ... <suffix>`, in order."""
    out = []
    for record in agent.log_records():
        msg = record.get("msg", "")
        if msg.startswith("component ") and suffix in msg:
            when = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
            out.append((msg.split()[1], when))
    return out


def test_stop_names_the_dependents_left_running(agent: AgentProcess) -> None:
    answer = agent.api("POST", "/api/v1/components/db/stop")
    assert answer == {"component": "db", "stopped": True, "dependents_running": ["web", "api"]}
    assert running(agent) == {"api", "web", "other"}
    history = agent.api("GET", "/api/v1/history")["history"]
    assert history[-1]["component"] == "db"
    assert history[-1]["reason"] == "stopped by hand; still running on it: web, api"
    # A leaf has no dependents.
    assert agent.api("POST", "/api/v1/components/web/stop")["dependents_running"] == []


def test_stop_with_dependents_stops_them_first_in_reverse_order(agent: AgentProcess) -> None:
    before = len(logged(agent, ") stopped"))
    answer = agent.api("POST", "/api/v1/components/db/stop", {"with_dependents": True})
    assert answer == {"component": "db", "stopped": True, "stopped_dependents": ["web", "api"]}
    assert running(agent) == {"other"}
    assert [name for name, _ in logged(agent, ") stopped")[before:]] == ["web", "api", "db"]
    status = agent.status()
    assert all(status[n]["manual_stop"] for n in ("db", "api", "web")) and not status["other"]["manual_stop"]
    assert agent.state()["components"]["api"]["manual_stop"] is True  # held over an agent restart, as a stop
    token = (agent.state_dir / "control.token").read_text().strip()
    bad = httpx.post(agent.url + "/api/v1/components/db/stop", json={"with_dependents": "yes"}, timeout=10,
                     headers={"Authorization": f"Bearer {token}"})
    assert bad.status_code == 422 and "with_dependents" in bad.json()["error"]


def test_start_starts_stopped_dependencies_first_each_ready_before_the_next(agent: AgentProcess) -> None:
    agent.api("POST", "/api/v1/components/db/stop", {"with_dependents": True})
    assert running(agent) == {"other"}
    before = len(logged(agent, " started (pid"))
    answer = agent.api("POST", "/api/v1/components/web/start", timeout=30)
    assert answer == {"component": "web", "desired": 1, "started_dependencies": ["db", "api"]}
    wait_for(lambda: running(agent) == {"db", "api", "web", "other"}, 10)
    started = logged(agent, " started (pid")[before:]
    assert [name for name, _ in started] == ["db", "api", "web"]
    when = dict(started)
    # Each dependency was ready (its ready_after) before the next one started.
    assert when["api"] - when["db"] >= 0.4 - 0.01 and when["web"] - when["api"] >= 0.2 - 0.01, started
    assert not any(c["manual_stop"] for c in agent.status().values())
    # Dependencies already running are left alone.
    pids = {n: c["pids"] for n, c in agent.status().items()}
    agent.api("POST", "/api/v1/components/web/stop")
    assert agent.api("POST", "/api/v1/components/web/start")["started_dependencies"] == []
    after = agent.status()
    assert after["db"]["pids"] == pids["db"] and after["api"]["pids"] == pids["api"]


def test_dependency_walks_are_transitive_and_ordered(tmp_path: Path) -> None:
    from agent.config.models import Config
    from agent.supervise.state import StateStore
    from agent.supervise.supervisor import Supervisor

    spec: dict[str, Any] = {"command": SLEEP}
    config = Config.model_validate({"agent": {"state_dir": str(tmp_path)}, "components": {
        "a": spec, "b": {**spec, "depends_on": ["a"]}, "c": {**spec, "depends_on": ["a"]},
        "d": {**spec, "depends_on": ["b", "c"]}, "e": spec}})

    class NoReaper:
        def running(self) -> list[int]:
            return []

    sup = Supervisor(config, NoReaper(), StateStore(tmp_path))  # type: ignore[arg-type]
    assert sup.dependents("a") == ["d", "c", "b"] and sup.dependents("d") == [] and sup.dependents("e") == []
    assert sup.dependencies("d") == ["a", "b", "c"] and sup.dependencies("a") == []
