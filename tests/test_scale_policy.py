"""Scaling by alerts on a live agent: the step bound per delivery (max_step, max_step_percent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.helpers import AgentProcess, running_agent, wait_for
from tests.webhookutil import alert, payload

SLEEP = ["sleep", "1000"]


def send(agent: AgentProcess, *alerts: dict[str, Any]) -> list[dict[str, Any]]:
    token = (agent.state_dir / "webhook.token").read_text().strip()
    r = httpx.post(agent.url + "/webhook/alertmanager", json=payload(*alerts), timeout=10,
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    return results


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
