"""The agent's own restarts and circuit changes in `agent history`, beside the alert actions: each with its
reason, bounded by the circuit breaker, not counted as remediation; and resolved deliveries counted but
listed only on request (`?all=1`, `agent history --all`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers import AgentProcess, running_agent, wait_for
from tests.metricsutil import scrape, value
from tests.webhookutil import alert, deliver

SLEEP = ["sleep", "1000"]


def cli(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args, "-c", str(agent.config_path)],
                          capture_output=True, text=True, timeout=60, cwd=agent.dir)


def own(agent: AgentProcess, component: str | None = None) -> list[dict[str, Any]]:
    """The supervisor's entries of the history (all of them, resolved or not)."""
    query = "?all=1&limit=1000" + (f"&component={component}" if component else "")
    return [e for e in agent.api("GET", "/api/v1/history" + query)["history"] if e["source"] == "supervisor"]


def remediation_count(agent: AgentProcess) -> float:
    return sum(v for (name, _), v in scrape(agent.url).items() if name == "orchestrator_remediation_actions_total")


def test_a_killed_component_restart_is_in_history_with_its_reason(tmp_path: Path) -> None:
    config = {"components": {"web": {"command": SLEEP}}}
    with running_agent(tmp_path, config) as agent:
        [pid] = wait_for(lambda: agent.status()["web"]["pids"], 10, 0.05, "web to run")
        os.kill(pid, signal.SIGKILL)
        [entry] = wait_for(lambda: own(agent, "web"), 10, 0.05, "the restart in the history")
        assert (entry["alertname"], entry["action"], entry["result"], entry["extra"]) == \
            ("restart", "restart", "executed", {"reason": "exit"})
        assert entry["reason"].startswith("exit: replica 0 ended (killed by SIGKILL) after ")
        assert entry["status"] == "" and entry["component"] == "web"
        out = cli(agent, "history")
        assert out.returncode == 0 and "supervisor\trestart\tweb\trestart\texecuted\texit: replica 0 ended" \
            in out.stdout, out.stdout
        # Counted as restarts, as before, and not as remediation decisions.
        samples = scrape(agent.url)
        assert value(samples, "orchestrator_component_restarts_total", component="web", reason="exit") == 1
        assert remediation_count(agent) == 0


def test_a_probe_restart_is_in_history_with_the_probe_error(tmp_path: Path) -> None:
    probe = {"exec": {"command": ["sh", "-c", "echo refused >&2; exit 3"]}, "interval": 0.1, "startup_grace": 0,
             "failure_threshold": 2}
    config = {"components": {"web": {"command": SLEEP, "probe": probe,
                                     "restart": {"max_restarts": 100, "backoff": {"initial": 5}}}}}
    with running_agent(tmp_path, config) as agent:
        entry = wait_for(lambda: own(agent, "web"), 10, 0.05, "the probe restart in the history")[0]
        assert entry["extra"] == {"reason": "probe"} and entry["alertname"] == "restart"
        assert entry["reason"].startswith("probe: replica 0 failed 2 exec probes in a row (")
        assert "starts again in" in entry["reason"]


def test_a_memory_limit_restart_is_in_history_with_the_limit(tmp_path: Path) -> None:
    hog = "b = bytearray(80 * 2**20)\nimport time\nwhile True: time.sleep(1)"
    config = {"agent": {"resources": {"interval": 0.1}},
              "components": {"hog": {"command": [sys.executable, "-c", hog], "limits": {"memory_bytes": "50Mi"},
                                     "restart": {"max_restarts": 100}}}}
    with running_agent(tmp_path, config) as agent:
        # Sampling runs while the figures are read: the status document reads them.
        entry = wait_for(lambda: agent.status() and own(agent, "hog"), 20, 0.1, "the resource restart")[0]
        assert entry["extra"] == {"reason": "resource"}
        assert entry["reason"].startswith("resource: replica 0 used ")
        assert f"over its memory limit {50 * 2**20}, in two samples; started again" in entry["reason"]


def test_memory_limit_restarts_are_bounded_by_the_circuit_breaker(tmp_path: Path) -> None:
    # Over its limit soon after every start: it used to be restarted every two samples, for ever, each restart
    # a history entry. A resource restart counts like an exit: after max_restarts of them the circuit opens.
    hog = "b = bytearray(80 * 2**20)\nimport time\nwhile True: time.sleep(1)"
    config = {"agent": {"resources": {"interval": 0.1}},
              "components": {"hog": {"command": [sys.executable, "-c", hog], "limits": {"memory_bytes": "50Mi"},
                                     "restart": {"max_restarts": 2, "window": 300, "circuit_cooldown": 600}}}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: agent.status()["hog"]["circuit"] == "open", 30, 0.1, "the circuit to open")
        entries = own(agent, "hog")
        assert [e["alertname"] for e in entries] == ["restart", "restart", "circuit_open"], entries
        assert all(e["extra"] == {"reason": "resource"} for e in entries[:2])
        opened = entries[-1]["reason"]
        assert opened.startswith("2 restarts within 300s; replica 0 used ") and "over its memory limit" in opened
        # It stays down: stopped, not restarted, and no more entries while the sampling goes on.
        status = wait_for(lambda: (s := agent.status()["hog"])["pids"] == [] and s, 10, 0.1, "the hog stopped")
        assert status["replicas"] == 0 and status["circuit"] == "open"
        assert value(scrape(agent.url), "orchestrator_component_restarts_total", component="hog",
                     reason="resource") == 2
        assert len(own(agent, "hog")) == 3


def test_circuit_until_is_null_while_the_circuit_is_half_open(tmp_path: Path) -> None:
    # The trial start is under way: no cooldown end to show (it used to show the past one).
    config = {"components": {"once": {"command": SLEEP, "restart": {
        "max_restarts": 0, "circuit_cooldown": 0.2, "backoff": {"reset_after": 600}}}}}
    with running_agent(tmp_path, config) as agent:
        [pid] = wait_for(lambda: agent.status()["once"]["pids"], 10, 0.05, "once to run")
        os.kill(pid, signal.SIGKILL)
        status = wait_for(lambda: (s := agent.status()["once"])["circuit"] == "half_open" and s, 10, 0.05,
                          "the trial start")
        assert status["circuit_until"] is None


def test_a_crash_loop_gives_max_restarts_entries_then_one_circuit_open_and_a_start_closes_it(
        tmp_path: Path) -> None:
    config = {"components": {"crash": {"command": ["sh", "-c", "exit 4"], "restart": {
        "max_restarts": 3, "window": 300, "circuit_cooldown": 600, "backoff": {"initial": 0.01}}}}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: agent.status()["crash"]["circuit"] == "open", 15, 0.05, "the circuit to open")
        status = agent.status()["crash"]
        entries = own(agent, "crash")
        assert [e["alertname"] for e in entries] == ["restart"] * 3 + ["circuit_open"]
        assert all(e["reason"].startswith("exit: replica 0 ended (exit code 4)") for e in entries[:3])
        opened = entries[-1]
        assert opened["result"] == "failed" and opened["reason"].startswith("3 restarts within 300s; no restarts")
        assert status["circuit_until"] is not None and status["circuit_until"] > opened["ts"] + 590
        assert remediation_count(agent) == 0
        shown = cli(agent, "status", "crash").stdout
        due = time.strftime("%H:%M:%S", time.localtime(status["circuit_until"]))
        assert f"circuit open (trial start due {due})" in shown and "circuit_open" in shown, shown

        assert cli(agent, "start", "crash").returncode == 0
        closed = wait_for(lambda: [e for e in own(agent, "crash") if e["alertname"] == "circuit_closed"], 10, 0.05,
                          "the circuit to close")
        assert closed[0]["reason"] == "started by hand" and closed[0]["result"] == "executed"
        # And it goes on crashing: bounded again by max_restarts before the circuit opens once more.
        wait_for(lambda: agent.status()["crash"]["circuit"] == "open", 15, 0.05, "the circuit to open again")
        assert [e["alertname"] for e in own(agent, "crash")][-4:] == ["restart"] * 3 + ["circuit_open"]


def test_a_trial_that_runs_closes_the_circuit_in_the_history(tmp_path: Path) -> None:
    # Fails three times, then runs: the third failure opens the circuit, the trial start runs and closes it.
    counter = tmp_path / "runs"
    script = (f'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; '
              '[ "$n" -ge 3 ] && exec sleep 1000; exit 1')
    config = {"components": {"flaky": {"command": script, "shell": True, "restart": {
        "max_restarts": 2, "window": 300, "circuit_cooldown": 0.5, "backoff": {"initial": 0.01, "reset_after": 0.5}}}}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: [e for e in own(agent, "flaky") if e["alertname"] == "circuit_closed"], 20, 0.05,
                 "the trial to close the circuit")
        names = [e["alertname"] for e in own(agent, "flaky")]
        assert names == ["restart", "restart", "circuit_open", "circuit_closed"]
        assert own(agent, "flaky")[-1]["reason"] == "trial ran 0.5s"
        assert agent.status()["flaky"]["circuit_until"] is None


def test_a_spawn_failure_restart_is_in_history(tmp_path: Path) -> None:
    config = {"components": {"ghost": {"command": [str(tmp_path / "no-such-binary")], "restart": {
        "max_restarts": 1, "circuit_cooldown": 600, "backoff": {"initial": 0.01}}}}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: agent.status()["ghost"]["circuit"] == "open", 15, 0.05, "the circuit to open")
        first = own(agent, "ghost")[0]
        assert first["extra"] == {"reason": "spawn"}
        assert first["reason"].startswith(f"spawn: replica 0 cannot start {tmp_path / 'no-such-binary'}: ")


def test_resolved_deliveries_are_counted_and_listed_only_with_all(tmp_path: Path) -> None:
    config = {"components": {"web": {"command": SLEEP}}}
    with running_agent(tmp_path, config) as agent:
        labels = {"alertname": "OrchestratorComponentDown", "component": "web", "action": "restart"}
        firing = alert(labels, fingerprint="a1b2c3d4e5f60718")
        resolved = alert(labels, status="resolved", fingerprint="a1b2c3d4e5f60718")
        deliver(agent, firing)
        deliver(agent, resolved)
        deliver(agent, alert({"alertname": "Other"}, status="resolved"))
        doc = agent.api("GET", "/api/v1/history")
        assert [e["status"] for e in doc["history"]] == ["firing"] and doc["hidden_resolved"] == 2
        every = agent.api("GET", "/api/v1/history?all=1")
        assert [e["status"] for e in every["history"]] == ["firing", "resolved", "resolved"]
        assert every["hidden_resolved"] == 0
        assert agent.api("GET", "/api/v1/history?component=web")["hidden_resolved"] == 1
        # Counted as they were: ignored decisions.
        samples = scrape(agent.url)
        assert value(samples, "orchestrator_remediation_actions_total", component="web", action="restart",
                     result="ignored") == 1

        out = cli(agent, "history")
        assert out.stdout.rstrip().endswith("2 resolved deliveries not shown (agent history --all)"), out.stdout
        assert "resolved" not in out.stdout.splitlines()[1]
        listed = cli(agent, "history", "--all")
        assert "not shown" not in listed.stdout and listed.stdout.count("\tignored\t") == 2, listed.stdout
