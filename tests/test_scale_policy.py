"""Scaling by alerts on a live agent: the step bound per delivery (max_step, max_step_percent), and when a
scale-down is next allowed (orchestrator_component_scale_down_not_before_timestamp_seconds)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import AgentProcess, running_agent, wait_for
from tests.metricsutil import scrape, value
from tests.webhookutil import alert
from tests.webhookutil import deliver as send

NOT_BEFORE = "orchestrator_component_scale_down_not_before_timestamp_seconds"

SLEEP = ["sleep", "1000"]


def running(agent: AgentProcess, name: str) -> tuple[int, int]:
    """(desired, replicas with a pid) of a component."""
    c = agent.status()[name]
    return c["desired"], len(c["pids"])


def test_scale_to_eight_takes_two_deliveries_with_the_default_step_bound(tmp_path: Path) -> None:
    # The default remediation settings: max_step 4, max_step_percent 100.
    config = {"agent": {"node": "node-a"}, "components": {
        "worker": {"command": SLEEP, "replicas": {"min": 0, "max": 8, "initial": 1}}}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: (agent.state_dir / "webhook.token").exists() and running(agent, "worker") == (1, 1), 10)
        to8 = alert({"action": "scale_to", "component": "worker"}, annotations={"desired_replicas": "8"})
        first = send(agent, to8)[0]
        assert (first["result"], first["target"]) == ("accepted", 5), first  # 1 + max(4, 1)
        wait_for(lambda: running(agent, "worker") == (5, 5), 10, what="5 replicas after the first delivery")
        second = send(agent, to8)[0]  # Alertmanager's repeat of the same still-firing alert
        assert (second["result"], second["target"]) == ("accepted", 8), second  # 5 + max(4, 5)
        wait_for(lambda: running(agent, "worker") == (8, 8), 10, what="8 replicas after the second delivery")
        third = send(agent, to8)[0]
        assert third["result"] == "ignored" and "already at 8" in third["reason"], third


def not_before(agent: AgentProcess) -> dict[str, float]:
    """The gauge by component, from /metrics as prometheus_client parses it."""
    return {dict(labels)["component"]: v for (name, labels), v in scrape(agent.url).items() if name == NOT_BEFORE}


def test_scale_down_not_before_follows_scale_ups_reloads_and_restarts(tmp_path: Path) -> None:
    def components(stabilisation: str) -> dict[str, Any]:
        return {
            "worker": {"command": SLEEP, "replicas": {"min": 1, "max": 8, "initial": 1},
                       "remediation": {"scale_down_stabilization": stabilisation}},
            "spare": {"command": SLEEP, "replicas": {"min": 0, "max": 2, "initial": 1},
                      "remediation": {"allowed_actions": ["scale_down"], "scale_down_stabilization": "2m"}},
            # No series: nothing an alert can lower (no room between the bounds, no scale-down action, no command).
            "single": {"command": SLEEP},
            "restart_only": {"command": SLEEP, "replicas": {"min": 1, "max": 4},
                             "remediation": {"allowed_actions": ["restart", "scale_up"]}},
            "db": {"probe": {"tcp": {"port": 1}, "interval": 60}},
        }

    config = {"agent": {"node": "node-a"}, "components": components("5m")}
    agent = AgentProcess(tmp_path, config).start()
    try:
        wait_for(lambda: (agent.state_dir / "webhook.token").exists(), 10)
        # Never scaled up by an alert: 0 + the window, so `time() >= gauge` holds from the start.
        assert not_before(agent) == {"worker": 300.0, "spare": 120.0}

        before = time.time()
        sent = send(agent, alert({"action": "scale_to", "component": "worker"}, annotations={"desired_replicas": "3"}))
        assert sent[0]["result"] == "accepted", sent
        scaled = wait_for(lambda: (v := not_before(agent)["worker"]) > 300 and v, 10, what="the scale-up stamped")
        after = time.time()
        assert before + 300 <= scaled <= after + 300
        assert agent.status()["worker"]["desired"] == 3

        # A reload: the new window applies to the same scale-up time; a removed component's series goes.
        reloaded = dict(config, components={k: v for k, v in components("1m").items() if k != "spare"})
        agent.config_path.write_text(yaml.safe_dump(reloaded))
        r = httpx.post(agent.url + "/-/reload", timeout=30, headers={
            "Authorization": "Bearer " + (agent.state_dir / "control.token").read_text().strip()})
        assert r.status_code == 200, r.text
        assert not_before(agent) == {"worker": pytest.approx(scaled - 300 + 60, abs=1e-3)}
        assert value(scrape(agent.url), "orchestrator_config_last_reload_successful") == 1
    finally:
        agent.stop()

    # A new agent on the same state dir reads the scale-up time back (remediation.json).
    again = AgentProcess(tmp_path, reloaded).start()
    try:
        assert not_before(again) == {"worker": pytest.approx(scaled - 300 + 60, abs=1e-3)}
    finally:
        again.stop()


def test_a_scale_down_that_a_surge_overtook_is_not_acted_on(tmp_path: Path) -> None:
    """OrchestratorBacklogLow computed its count for 0 pending todos; 30 landed before it arrived: the agent
    keeps its replicas, says why, and acts on a delivery whose count was computed for what waits."""
    from agent.todos import transactions as todos

    db = tmp_path / "todos.db"
    config = {"agent": {"node": "node-a"},
              "backlog": {"sources": [{"kind": "sqlite", "path": str(db), "interval": 0.2, "name": "todos"}]},
              "components": {"worker": {"command": SLEEP, "capabilities": ["todo_processing"],
                                        "replicas": {"min": 1, "max": 8, "initial": 4}}}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: (agent.state_dir / "webhook.token").exists() and running(agent, "worker") == (4, 4), 10)
        for i in range(30):
            todos.add(db, f"t{i}", "normal", ["todo_processing"] if i % 2 else [])  # half need none: "any"
        wait_for(lambda: sum(v for (name, labels), v in scrape(agent.url).items()
                             if name == "orchestrator_todo_backlog" and dict(labels)["status"] == "pending") == 30,
                 10, what="the agent to read 30 pending todos")
        low = {"alertname": "OrchestratorBacklogLow", "action": "scale_to", "direction": "down", "component": "worker"}
        stale = send(agent, alert(low, annotations={"desired_replicas": "1", "pending_todos": "0"}))[0]
        assert stale["result"] == "ignored", stale
        assert stale["reason"] == ("stale: 30 todos pending now, 0 when the rule decided; "
                                   "the next evaluation decides again")
        assert running(agent, "worker") == (4, 4)
        assert value(scrape(agent.url), "orchestrator_remediation_actions_total", component="worker",
                     action="scale_to", result="ignored") == 1
        fresh = send(agent, alert(low, annotations={"desired_replicas": "1", "pending_todos": "30"}))[0]
        assert (fresh["result"], fresh["target"]) == ("accepted", 1), fresh
        wait_for(lambda: running(agent, "worker") == (1, 1), 15, what="the scale-down the fresh count allows")
