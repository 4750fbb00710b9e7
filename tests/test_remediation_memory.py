"""The remediation's memory survives an agent restart: the scale-down stabilisation window and the restart
cooldown still hold, and `agent history` still shows what happened; bad files are set aside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers import AgentProcess, wait_for
from tests.webhookutil import alert
from tests.webhookutil import deliver as send

CONFIG: dict[str, Any] = {"components": {"w": {
    "command": ["sleep", "1000"], "replicas": {"min": 1, "max": 3, "initial": 1},
    "remediation": {"cooldown": 300, "scale_down_stabilization": 300},
}}}


def history(agent: AgentProcess) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = agent.api("GET", "/api/v1/history")["history"]
    return entries


def scaled_up_and_restarted(tmp_path: Path) -> list[dict[str, Any]]:
    """An agent scales `w` up and restarts it on alerts, then stops; returns its history."""
    agent = AgentProcess(tmp_path, json.loads(json.dumps(CONFIG))).start()
    try:
        up = send(agent, alert({"component": "w", "action": "scale_up"}))
        assert up[0]["result"] == "accepted"
        wait_for(lambda: agent.status()["w"]["desired"] == 2, 10, what="scaled up to 2")
        wait_for(lambda: [e["action"] for e in history(agent)] == ["scale_up"], 10)
        assert send(agent, alert({"component": "w", "action": "restart"}))[0]["result"] == "accepted"
        wait_for(lambda: len(history(agent)) == 2, 10, what="the restart recorded")
        return history(agent)
    finally:
        assert agent.stop() == 0


def test_no_scale_down_inside_the_stabilisation_window_after_an_agent_restart(tmp_path: Path) -> None:
    scaled_up_and_restarted(tmp_path)
    again = AgentProcess(tmp_path, json.loads(json.dumps(CONFIG))).start()
    try:
        assert again.status()["w"]["desired"] == 2
        down = send(again, alert({"component": "w", "action": "scale_down"}))
        assert down[0]["result"] == "cooldown", down
        assert "scale-down stabilisation 300s" in down[0]["reason"]
        restart = send(again, alert({"component": "w", "action": "restart"}))
        assert restart[0]["result"] == "cooldown" and "cooldown 300s" in restart[0]["reason"], restart
        assert again.status()["w"]["desired"] == 2
    finally:
        again.stop()


def test_the_history_survives_an_agent_restart(tmp_path: Path) -> None:
    before = scaled_up_and_restarted(tmp_path)
    again = AgentProcess(tmp_path, json.loads(json.dumps(CONFIG))).start()
    try:
        assert history(again) == before  # `agent history` still shows what happened
        send(again, alert({"component": "w", "action": "scale_down"}))
        assert [e["result"] for e in history(again)] == ["executed", "executed", "cooldown"]
    finally:
        again.stop()


def test_bad_memory_files_are_set_aside_and_the_agent_starts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "remediation.json").write_text('{"last_scale_up": {"w": "yesterday"}}')
    good = {"ts": 1.0, "alertname": "A", "component": "w", "action": "restart", "result": "executed",
            "reason": "r", "fingerprint": "f", "status": "firing", "trace_id": "", "source": "webhook",
            "target": None, "extra": {}}
    (state / "history.jsonl").write_text(json.dumps(good) + "\n" + '{"ts": "torn' + "\n")
    agent = AgentProcess(tmp_path, json.loads(json.dumps(CONFIG))).start()
    try:
        assert (state / "remediation.json.corrupt").exists() and (state / "history.jsonl.corrupt").exists()
        text = agent.log_text()
        assert "state file" in text and "remediation.json is corrupt (last_scale_up.w" in text
        assert "history.jsonl: 1 unreadable line(s) (first: line 2" in text
        assert [e["alertname"] for e in history(agent)] == ["A"]  # the readable entry kept
        # No stabilisation left from the bad file: a scale-down acts at once.
        agent.api("POST", "/api/v1/components/w/scale", {"replicas": 2})
        assert send(agent, alert({"component": "w", "action": "scale_down"}))[0]["result"] == "accepted"
        wait_for(lambda: agent.status()["w"]["desired"] == 1, 10)
    finally:
        agent.stop()


def test_the_history_file_stays_bounded_and_reads_back_the_newest(tmp_path: Path) -> None:
    from agent.act.history import AuditEntry, History

    path = tmp_path / "history.jsonl"

    def entry(i: int) -> AuditEntry:
        return AuditEntry(ts=float(i), alertname=f"a{i}", component="w", action="restart", result="executed",
                          reason="", fingerprint="", status="firing", trace_id="")

    log = History(path, max_entries=10)
    for i in range(35):
        log.append(entry(i))
    log.close()
    assert len(path.read_text().splitlines()) < 20  # compacted at twice the bound
    back = History(path, max_entries=10)
    assert [e.alertname for e in back] == [f"a{i}" for i in range(25, 35)]
    back.append(entry(35))
    back.close()
    assert [e.alertname for e in History(path, max_entries=10)][-2:] == ["a34", "a35"]
