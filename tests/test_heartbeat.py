"""The alert pipeline's heartbeat on a live agent: a firing alert with heartbeat="true" is recorded and
counted, never acted on or listed; `orchestrator_alert_pipeline_up` says whether one came within
agent.webhook.heartbeat_timeout; the status document and `agent status` say since when it is silent; the
last heartbeat survives a reexec and a restart; a reload sets and unsets the timeout."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.act.pipeline import HEARTBEAT_REASON, RESOLVED_REASON, AlertPipeline
from agent.config.units import clock
from agent.export.collectors import PipelineCollector
from tests.helpers import AgentProcess, never, run_async, running_agent, until, wait_for
from tests.metricsutil import scrape, value
from tests.webhookutil import alert, deliver, fixture

SLEEP = ["sleep", "1000"]
WATCHDOG = {"alertname": "OrchestratorWatchdog", "heartbeat": "true", "severity": "none"}
UP = "orchestrator_alert_pipeline_up"
LAST = "orchestrator_alert_pipeline_last_heartbeat_timestamp_seconds"
BEATS = "orchestrator_alert_pipeline_heartbeats_total"


def config(timeout: str | None = None) -> dict[str, Any]:
    agent: dict[str, Any] = {"webhook": {"heartbeat_timeout": timeout}} if timeout else {}
    return {"agent": agent, "components": {"web": {"command": SLEEP, "remediation": {"cooldown": 0}}}}


def beat(agent: AgentProcess, status: str = "firing") -> dict[str, Any]:
    """Deliver one heartbeat as Alertmanager does (its own group: no component, no action)."""
    [result] = deliver(agent, alert(WATCHDOG, status=status, fingerprint="8f0c2b5d6a1e4f37"))
    return result


def pipeline(agent: AgentProcess) -> Any:
    return agent.api("GET", "/api/v1/status")["alert_pipeline"]


def cli(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args, "-c", str(agent.config_path)],
                          capture_output=True, text=True, timeout=120, cwd=agent.dir)


def reload_with(agent: AgentProcess, timeout: str | None) -> None:
    doc = yaml.safe_load(agent.config_path.read_text())
    webhook = doc["agent"].setdefault("webhook", {})
    if timeout is None:
        webhook.pop("heartbeat_timeout", None)
    else:
        webhook["heartbeat_timeout"] = timeout
    agent.config_path.write_text(yaml.safe_dump(doc))
    out = cli(agent, "reload")
    assert out.returncode == 0, out.stderr


def warnings(agent: AgentProcess, text: str) -> list[dict[str, Any]]:
    return [r for r in agent.log_records() if r.get("logger") == "agent.pipeline" and text in r.get("msg", "")]


def test_heartbeats_keep_the_pipeline_up_silence_turns_it_to_zero_and_a_heartbeat_brings_it_back(
        tmp_path: Path) -> None:
    with running_agent(tmp_path, config("2s")) as agent:
        first = beat(agent)
        assert (first["result"], first["component"], first["action"]) == ("heartbeat", "", "")
        got = pipeline(agent)
        assert got["up"] is True and got["silent_since"] is None and got["heartbeats"] == 1
        assert got["timeout_seconds"] == 2.0
        last = got["last_heartbeat"]
        samples = scrape(agent.url)
        assert value(samples, UP) == 1 and value(samples, LAST) == last and value(samples, BEATS) == 1
        # A second heartbeat within the timeout moves the deadline: still up past the first one's.
        wait_for(lambda: time.time() > last + 1.2, 5, 0.05, "1.2 s after the first heartbeat")
        second = beat(agent)["result"]
        wait_for(lambda: time.time() > last + 2.5, 5, 0.05, "past the first heartbeat's deadline")
        assert second == "heartbeat" and value(scrape(agent.url), UP) == 1

        # No heartbeat within the timeout: 0, and the status document says since when.
        wait_for(lambda: value(scrape(agent.url), UP) == 0, 10, 0.05, "the pipeline to go silent")
        silent = pipeline(agent)
        assert silent["up"] is False and silent["silent_since"] == silent["last_heartbeat"] > last
        assert value(scrape(agent.url), "orchestrator_alert_pipeline_silences_total") == 1
        wait_for(lambda: warnings(agent, "alert pipeline SILENT"), 5, 0.05, "the silence in the log")
        human = cli(agent, "status")
        assert "alert pipeline: SILENT since " + clock(silent["silent_since"]) in human.stdout, human.stdout
        as_json = json.loads(cli(agent, "status", "--json").stdout)
        assert as_json["alert_pipeline"]["silent_since"] == silent["silent_since"]

        beat(agent)
        back = pipeline(agent)
        assert back["up"] is True and back["silent_since"] is None and back["heartbeats"] == 3
        assert value(scrape(agent.url), UP) == 1
        assert "alert pipeline: OK (last heartbeat" in cli(agent, "status").stdout
        wait_for(lambda: warnings(agent, "alert pipeline up again"), 5, 0.05, "the recovery in the log")
    # Once each: the silence and the recovery, not a line per scrape or per check. (On a loaded machine the
    # `agent status` runs above may outlast the 2 s after the last heartbeat: a later silence, logged too.)
    said = [r["msg"].split(":")[0] for r in agent.log_records() if r.get("logger") == "agent.pipeline"]
    assert said[:2] == ["alert pipeline SILENT", "alert pipeline up again"], said
    assert all(a != b for a, b in itertools.pairwise(said)), said


def test_before_any_heartbeat_the_silence_counts_from_the_agents_start(tmp_path: Path) -> None:
    with running_agent(tmp_path, config("1s")) as agent:
        start = agent.api("GET", "/api/v1/status")["start_time"]
        wait_for(lambda: pipeline(agent)["up"] is False, 10, 0.05, "the pipeline to go silent")
        got = pipeline(agent)
        assert got["last_heartbeat"] is None and got["heartbeats"] == 0
        assert start <= got["silent_since"] <= start + 1
        assert value(scrape(agent.url), LAST) == 0


def test_a_heartbeat_acts_on_nothing_and_is_not_in_history_in_any_mode(tmp_path: Path) -> None:
    with running_agent(tmp_path, config("1m")) as agent:
        wait_for(lambda: agent.status()["web"]["pids"], 10, 0.05, "web to run")
        pids = agent.status()["web"]["pids"]
        token = (agent.state_dir / "webhook.token").read_text().strip()
        # Mixed in one delivery with an ordinary alert (group_by may put them together); one heartbeat even
        # carries an action: only the ordinary alert is planned.
        restart = alert({"alertname": "OrchestratorComponentDown", "component": "web", "action": "restart"})
        loud = alert({**WATCHDOG, "component": "web", "action": "restart"})
        body = {**fixture("alertmanager-0.25-webhook-firing.json"), "alerts": [alert(WATCHDOG), restart, loud]}
        for mode in ("off", "emergency"):
            if mode == "off":
                assert cli(agent, "autonomy", "off").returncode == 0
            else:
                assert cli(agent, "emergency-stop", "--yes").returncode == 0
            r = httpx.post(agent.url + "/webhook/alertmanager", json=body, timeout=10,
                           headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            results = [x["result"] for x in r.json()["results"]]
            assert results == ["heartbeat", "ignored" if mode == "off" else "rejected", "heartbeat"]
        assert pipeline(agent)["heartbeats"] == 4
        history = agent.api("GET", "/api/v1/history?all=1")["history"]
        assert [e["alertname"] for e in history if e["source"] == "webhook"] == ["OrchestratorComponentDown"] * 2
        samples = scrape(agent.url)
        acted = {dict(labels).get("result"): v for (name, labels), v in samples.items()
                 if name == "orchestrator_remediation_actions_total"}
        assert acted == {"ignored": 1, "rejected": 1}  # the ordinary alert only
        assert value(samples, BEATS) == 4
        assert cli(agent, "autonomy", "on").returncode == 0
        assert agent.status()["web"]["pids"] in ([], pids)  # stopped by the emergency stop, never restarted


def test_a_resolved_heartbeat_is_counted_apart_and_is_not_a_heartbeat(tmp_path: Path) -> None:
    with running_agent(tmp_path, config("1m")) as agent:
        result = beat(agent, "resolved")
        assert result["result"] == "heartbeat_resolved"
        samples = scrape(agent.url)
        assert value(samples, "orchestrator_alert_pipeline_heartbeats_resolved_total") == 1
        assert value(samples, BEATS) == 0 and value(samples, LAST) == 0
        assert agent.api("GET", "/api/v1/history?all=1")["history"] == []
        wait_for(lambda: warnings(agent, "delivered as resolved"), 5, 0.05, "the resolved heartbeat in the log")


def test_without_a_timeout_neither_gauge_is_exported_and_a_reload_sets_and_unsets_it(tmp_path: Path) -> None:
    with running_agent(tmp_path, config()) as agent:
        assert beat(agent)["result"] == "heartbeat"  # recorded and counted even with no timeout
        samples = scrape(agent.url)
        assert value(samples, BEATS) == 1
        assert value(samples, UP) is None and value(samples, LAST) is None
        assert pipeline(agent) is None
        assert "alert pipeline" not in cli(agent, "status").stdout

        reload_with(agent, "1m")
        samples = scrape(agent.url)
        assert value(samples, UP) == 1 and value(samples, LAST) == pipeline(agent)["last_heartbeat"] > 0
        assert pipeline(agent)["timeout_seconds"] == 60.0

        reload_with(agent, None)
        samples = scrape(agent.url)
        assert value(samples, UP) is None and value(samples, LAST) is None and value(samples, BEATS) == 1
        assert pipeline(agent) is None


def test_the_last_heartbeat_and_the_silence_survive_a_reexec_and_the_last_heartbeat_a_restart(
        tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, config("1s")).start()
    try:
        beat(agent)
        wait_for(lambda: pipeline(agent)["up"] is False, 10, 0.05, "the pipeline to go silent")
        before = pipeline(agent)
        out = cli(agent, "reexec", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        after = pipeline(agent)
        # The same silence, not a fresh grace: same start, counts carried, not logged again.
        assert after == before
        samples = scrape(agent.url)
        assert value(samples, LAST) == before["last_heartbeat"] and value(samples, UP) == 0
        assert value(samples, BEATS) == 1 and value(samples, "orchestrator_alert_pipeline_silences_total") == 1
        assert len(warnings(agent, "alert pipeline SILENT")) == 1
    finally:
        agent.stop()
    with running_agent(tmp_path, yaml.safe_load(agent.config_path.read_text())) as again:
        got = pipeline(again)
        assert got["last_heartbeat"] == before["last_heartbeat"] and got["heartbeats"] == 0
        assert value(scrape(again.url), LAST) == before["last_heartbeat"]


def test_simulate_names_a_heartbeat(tmp_path: Path) -> None:
    with running_agent(tmp_path, config("1m")) as agent:
        body = {**fixture("alertmanager-0.25-webhook-firing.json"), "alerts": [alert(WATCHDOG)]}
        [result] = agent.api("POST", "/api/v1/simulate", body)["results"]
        assert (result["would"], result["component"], result["action"]) == ("heartbeat", "", "")
        assert pipeline(agent)["heartbeats"] == 0  # simulated: nothing recorded
        # The same words as a delivery's answer.
        assert result["reason"] == beat(agent)["reason"] == HEARTBEAT_REASON
        # A resolved one: simulate and a delivery say alike that it is not a heartbeat.
        resolved = {**body, "alerts": [alert(WATCHDOG, status="resolved")]}
        [result] = agent.api("POST", "/api/v1/simulate", resolved)["results"]
        delivered = beat(agent, status="resolved")
        assert result["would"] == delivered["result"] == "heartbeat_resolved"
        assert result["reason"] == delivered["reason"] == RESOLVED_REASON


# --- in process: the tracker and its collector ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_tracker_is_up_within_the_timeout_of_the_last_heartbeat_or_of_the_watchs_start() -> None:
    clock = Clock()
    saved: list[float] = []
    tracker = AlertPipeline(10.0, last=900.0, save=saved.append, clock=clock)
    # A heartbeat remembered from before the start does not make the start silent: the watch starts now.
    assert tracker.up() and tracker.reference() == 1000.0
    clock.now = 1010.5
    assert not tracker.up()
    assert tracker.document() == {"up": False, "timeout_seconds": 10.0, "last_heartbeat": 900.0,
                                  "silent_since": 1000.0, "heartbeats": 0}
    tracker.last = 1010.5  # as a heartbeat leaves it (heartbeat() itself needs a loop for its timer)
    clock.now = 1020.0
    doc = tracker.document()
    assert tracker.up() and doc is not None and doc["silent_since"] is None
    tracker.configure(None)
    assert tracker.up() and tracker.document() is None


def test_the_tracker_logs_a_silence_once_and_the_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        tracker = AlertPipeline(0.05)
        tracker.start()
        await until(lambda: tracker.silent, 5, what="the silence")
        await never(lambda: tracker.silences > 1, 0.2)
        tracker.heartbeat()
        assert not tracker.silent and tracker.up()
        await until(lambda: tracker.silences == 2, 5, what="the second silence")
        tracker.configure(60.0)  # a reload that raises the timeout past the silence ends it
        assert not tracker.silent and tracker.up()
        tracker.close()

    with caplog.at_level(logging.INFO, "agent.pipeline"):
        run_async(body())
    said = [r.getMessage() for r in caplog.records if r.name == "agent.pipeline"]
    assert [m.split(":")[0] for m in said] == ["alert pipeline SILENT", "alert pipeline up again",
                                             "alert pipeline SILENT", "alert pipeline up again"]


def test_the_collector_exports_the_gauges_only_while_a_timeout_is_set() -> None:
    clock = Clock()
    tracker = AlertPipeline(None, clock=clock)
    names = {f.name for f in PipelineCollector(tracker).families()}
    assert names == {"orchestrator_alert_pipeline_heartbeats", "orchestrator_alert_pipeline_heartbeats_resolved",
                     "orchestrator_alert_pipeline_silences"}
    tracker.timeout = 5.0
    families = {f.name: f for f in PipelineCollector(tracker).families()}
    assert families["orchestrator_alert_pipeline_up"].rows == [((), 1)]
    assert families["orchestrator_alert_pipeline_last_heartbeat_timestamp_seconds"].rows == [((), 0.0)]
    clock.now += 6
    assert {f.name: f for f in PipelineCollector(tracker).families()}["orchestrator_alert_pipeline_up"].rows \
        == [((), 0)]


def test_a_resumed_document_of_another_shape_is_ignored() -> None:
    clock = Clock()
    tracker = AlertPipeline(5.0, clock=clock)
    tracker.resume({"heartbeats": "3", "silences": -1, "resolved": True, "timeout": 5.0, "watch_since": 5000.0,
                    "silent": 1})
    assert (tracker.heartbeats, tracker.silences, tracker.resolved, tracker.watch_since, tracker.silent) == \
        (0, 0, 0, 1000.0, False)
    for timeout in (True, "5", 0, -1.0):  # not a timeout: the watch does not go on
        tracker.resume({"timeout": timeout, "watch_since": 400.0, "silent": True})
        assert (tracker.watch_since, tracker.silent) == (1000.0, False), timeout
    tracker.resume({"heartbeats": 3, "silences": 1, "resolved": 2, "timeout": 5.0, "watch_since": 400.0,
                    "silent": True})
    assert (tracker.heartbeats, tracker.silences, tracker.resolved, tracker.watch_since, tracker.silent) == \
        (3, 1, 2, 400.0, True)


def test_a_reexec_that_turns_the_timeout_on_starts_the_watch_at_the_new_images_start() -> None:
    clock = Clock()
    old = AlertPipeline(None, clock=clock)  # the old image watched nothing from 1000 on
    clock.now = 2000.0
    new = AlertPipeline(10.0, clock=clock)  # the new image's start, as agent/daemon/parts.py sets it
    new.resume(old.hand_over())
    # As a reload that turns it on: the silence counts from the start of the watch, not from 1000.
    assert new.watch_since == 2000.0 and new.up() and not new.silent
    clock.now = 2010.5
    assert not new.up() and (new.document() or {})["silent_since"] == 2000.0


def test_a_reexec_that_raises_the_timeout_past_a_silence_ends_it(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    old = AlertPipeline(10.0, last=995.0, clock=clock)
    old.silent, old.silences = True, 1  # as its timer left it at 1011
    clock.now = 1011.0
    new = AlertPipeline(60.0, last=995.0, clock=clock)
    with caplog.at_level(logging.INFO, "agent.pipeline"):
        new.resume(old.hand_over())
    assert new.watch_since == 1000.0 and new.up() and not new.silent and new.silences == 1
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["alert pipeline up again"]


def test_a_silence_is_not_carried_into_an_image_without_a_timeout_nor_holds_back_the_next_one(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        old = AlertPipeline(0.05)
        old.start()
        await until(lambda: old.silent, 5, what="the old image's silence")
        old.close()
        new = AlertPipeline(None)  # a reexec into a config without heartbeat_timeout
        new.resume(old.hand_over())
        assert not new.silent and new.silences == 1 and new.watch_since != old.watch_since
        new.configure(0.05)  # a later reload turns it on again: its silence is warned of and counted
        await until(lambda: new.silences == 2, 5, what="the new watch's silence to be counted")
        assert new.silent
        new.close()

    with caplog.at_level(logging.INFO, "agent.pipeline"):
        run_async(body())
    said = [r.getMessage().split(":")[0] for r in caplog.records if r.name == "agent.pipeline"]
    assert said == ["alert pipeline SILENT", "alert pipeline SILENT"]


def test_a_reload_that_turns_the_timeout_on_starts_a_watch_without_an_old_silence() -> None:
    clock = Clock()
    tracker = AlertPipeline(None, clock=clock)
    tracker.silent = True  # however it came there, a watch turned on from off starts without it
    clock.now = 1500.0

    async def body() -> None:
        tracker.configure(30.0)
        tracker.close()

    run_async(body())
    assert tracker.watch_since == 1500.0 and not tracker.silent
