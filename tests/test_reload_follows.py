"""Every part that keeps per-component state follows a reload that adds, removes or replaces components.

Real agents: the config file is rewritten and `POST /-/reload` (control token) applies it; the answer
comes once the plan is applied. Each test names the part it proves; docs/operations.md ("Reloads and
per-component state") lists them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.supervise.cgroup import CgroupContainment
from agent.supervise.choice import choose
from tests.helpers import AgentProcess, pid_alive, running_agent, wait_for
from tests.webhookutil import alert, payload

# Waits for a file, then holds ~120 MB resident (every page touched) until killed.
HOG = ("import os, sys, time\n"
       "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
       "x = bytearray(120 * 2**20); x[::4096] = b'x' * len(x[::4096])\n"
       "time.sleep(1000)\n")


def sleeper(**extra: Any) -> dict[str, Any]:
    return {"command": ["sleep", "1000"], "stop": {"grace": 2}, **extra}


def reload(agent: AgentProcess, config: dict[str, Any]) -> dict[str, Any]:
    """Write `config` as the agent's file and apply it; returns the reload's answer (status applied)."""
    doc = json.loads(json.dumps(config))
    doc.setdefault("agent", {}).update(listen=f"127.0.0.1:{agent.port}", state_dir=str(agent.state_dir),
                                       log_dir=doc.get("agent", {}).get("log_dir", str(agent.log_dir)))
    tmp = agent.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, agent.config_path)
    outcome: dict[str, Any] = agent.api("POST", "/-/reload", {}, timeout=60)
    assert outcome["status"] == "applied", outcome
    return outcome


def series(agent: AgentProcess) -> dict[str, float]:
    """Every sample of /metrics as {'name{labels}': value}."""
    out = {}
    for line in httpx.get(agent.url + "/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def failures(agent: AgentProcess, text: str) -> list[str]:
    return [r["msg"] for r in agent.log_records() if text in r.get("msg", "")]


# --- resources and memory limits -----------------------------------------------------------------------

def test_memory_limit_holds_after_a_reload_adds_a_component(tmp_path: Path) -> None:
    """A 120 MB process over its 60 MiB limit is restarted after a reload added another component, and
    the added one gets CPU and RSS figures (on 4d6e534 every pass raised KeyError: no limit held)."""
    go = tmp_path / "allocate"
    config = {"agent": {"resources": {"interval": 0.3}},
              "components": {"hog": {"command": ["python", "-c", HOG, str(go)], "limits": {"memory_bytes": "60Mi"},
                                     "stop": {"grace": 2}, "restart": {"backoff": {"initial": 0.1}}}}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: agent.status()["hog"]["pids"], 10, what="the hog to run")
        added = json.loads(json.dumps(config))
        added["components"]["added"] = sleeper()
        reload(agent, added)
        wait_for(lambda: agent.status()["added"]["pids"], 10, what="the added component to run")
        hog = agent.status()["hog"]["pids"][0]
        go.touch()
        wait_for(lambda: agent.status()["hog"]["last_reason"] == "resource", 20,
                 what=lambda: f"the hog restarted for its memory limit: {agent.status()['hog']}")
        assert hog not in agent.status()["hog"]["pids"]
        assert series(agent)['orchestrator_component_restarts_total{component="hog",reason="resource"}'] >= 1
        wait_for(lambda: (agent.status()["added"]["rss_bytes"] or 0) > 0, 10, what="the added component's RSS")
        assert 'orchestrator_component_resident_memory_bytes{component="added"}' in series(agent)
        assert not failures(agent, "resource sampling failed")


# --- probes --------------------------------------------------------------------------------------------

def probed(command: str) -> dict[str, Any]:
    return sleeper(probe={"exec": {"command": [command]}, "interval": 0.2, "failure_threshold": 1,
                          "restart": False})


def test_a_component_added_again_has_no_probe_error_of_the_removed_one(tmp_path: Path) -> None:
    """The probe runner forgets a removed component: added again under its name, `agent status` shows no
    last probe error of the old one (on 4d6e534 the removed one's error stayed, shown as the new one's)."""
    config = {"components": {"keep": sleeper(), "flaky": probed("false")}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: agent.status()["flaky"]["last_probe_error"], 10, what="the failing probe recorded")
        reload(agent, {"components": {"keep": sleeper()}})
        assert "flaky" not in agent.status()
        reload(agent, {"components": {"keep": sleeper(), "flaky": probed("true")}})
        wait_for(lambda: agent.status()["flaky"]["healthy"] == 1, 10, what="the added component's probe to pass")
        assert agent.status()["flaky"]["last_probe_error"] is None
        assert series(agent)['orchestrator_component_probe_error{component="flaky",reason="none"}'] == 1


# --- metrics -------------------------------------------------------------------------------------------

def test_probe_histogram_follows_a_changed_or_removed_probe(tmp_path: Path) -> None:
    """A reload that changes a component's probe kind or removes its probe takes the old probe's
    duration histogram off /metrics (on 4d6e534 only a removed component's went: the old kind stayed)."""
    config = {"components": {"kind": probed("true"), "dropped": probed("true")}}
    with running_agent(tmp_path, config) as agent:
        exec_count = 'orchestrator_probe_duration_seconds_count{component="%s",probe="exec"}'
        wait_for(lambda: all(series(agent).get(exec_count % n, 0) >= 1 for n in ("kind", "dropped")), 10,
                 what="both probes timed")
        reload(agent, {"components": {  # a tcp probe of the agent's own port
            "kind": sleeper(probe={"tcp": {"host": "127.0.0.1", "port": agent.port}, "interval": 0.2}),
            "dropped": sleeper()}})
        tcp_count = 'orchestrator_probe_duration_seconds_count{component="kind",probe="tcp"}'
        wait_for(lambda: series(agent).get(tcp_count, 0) >= 1, 10, what="the tcp probe timed")
        names = series(agent)
        assert exec_count % "kind" not in names and exec_count % "dropped" not in names
        assert not [k for k in names if k.startswith("orchestrator_probe_duration_seconds")
                    and 'component="dropped"' in k]


# --- log rotation --------------------------------------------------------------------------------------

# Writes about 200 KB/s to stdout (and stderr), until killed.
WRITER = ("import sys, time\n"
          "while True:\n"
          "    sys.stdout.write('o' * 1000 + '\\n'); sys.stdout.flush()\n"
          "    sys.stderr.write('e' * 1000 + '\\n'); sys.stderr.flush()\n"
          "    time.sleep(0.005)\n")


def test_logs_a_replica_still_writes_are_rotated_after_a_reload_moves_log_dir(tmp_path: Path) -> None:
    """After a reload changes `log_dir`, the log and stderr file a running replica still writes (in the
    old dir, until its next start) stay rotated, and a replica started since is rotated in the new dir
    (on 4d6e534 rotation looked only in the new dir: the old files grew without bound)."""
    old_dir, new_dir = tmp_path / "logs", tmp_path / "logs2"
    limit = 64 * 1024

    def config(log_dir: Path) -> dict[str, Any]:
        return {"agent": {"log_dir": str(log_dir), "log_max_bytes": limit, "log_backups": 1},
                "components": {"writer": {"command": ["python", "-c", WRITER], "stderr": "file",
                                          "stop": {"grace": 2}},
                               "other": sleeper()}}

    def rotated_since(path: Path, when: float) -> bool:
        backup = path.with_name(path.name + ".1")
        return backup.exists() and backup.stat().st_mtime > when

    with running_agent(tmp_path, config(old_dir)) as agent:
        out, err = old_dir / "writer.log", old_dir / "writer.err.log"
        wait_for(lambda: rotated_since(out, 0) and rotated_since(err, 0), 15, what="the first rotations")
        writer = agent.status()["writer"]["pids"]
        reload(agent, config(new_dir))
        applied = time.time()
        assert agent.status()["writer"]["pids"] == writer  # log_dir is applied live: same process, old dir
        wait_for(lambda: rotated_since(out, applied) and rotated_since(err, applied), 15,
                 what=lambda: f"the old dir's logs rotated after the reload: {os.stat(out).st_size} bytes")
        assert out.stat().st_size < 8 * limit and err.stat().st_size < 8 * limit
        agent.api("POST", "/api/v1/components/writer/restart", {})  # its next start writes in the new dir
        moved = new_dir / "writer.log"
        wait_for(lambda: rotated_since(moved, 0) and rotated_since(new_dir / "writer.err.log", 0), 15,
                 what="the new dir's logs rotated")


# --- containment ---------------------------------------------------------------------------------------

def test_a_released_slot_is_forgotten(containment: str) -> None:
    """A replica slot that a reload (or a scale-down) ended leaves its containment: the next slot of that
    name is a fresh one (on 4d6e534 every slot ever made was kept, for the agent's life)."""
    mechanism = choose(containment, set)
    try:
        scope = mechanism.scope("gone", 0)
        with scope.spawning() as env:
            proc = subprocess.Popen(["sleep", "1000"], env={**os.environ, **env})
        scope.adopt(proc.pid)
        if isinstance(mechanism, CgroupContainment):
            mechanism.flush()
            assert (mechanism.base / "gone.0" / "cgroup.procs").read_text().split() == [str(proc.pid)]
        assert scope.members(proc.pid) == [proc.pid]
        scope.kill(proc.pid)
        proc.wait(10)
        scope.release()
        assert mechanism.scope("gone", 0) is not scope
        if isinstance(mechanism, CgroupContainment):
            assert not (mechanism.base / "gone.0").exists()
    finally:
        mechanism.close()
    assert not pid_alive(proc.pid)


# --- remediation ---------------------------------------------------------------------------------------

def send(agent: AgentProcess, labels: dict[str, str]) -> dict[str, Any]:
    token = (agent.state_dir / "webhook.token").read_text().strip()
    r = httpx.post(agent.url + "/webhook/alertmanager", json=payload(alert(labels)), timeout=10,
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["results"][0]
    return result


def test_a_component_added_again_is_not_held_by_the_removed_ones_cooldown(tmp_path: Path) -> None:
    """The remediation's timestamps of a component a reload removed go (from memory and remediation.json):
    one added again under its name is restarted by its first alert (on 4d6e534 the removed one's
    cooldown held it, and remediation.json kept every name ever acted on)."""
    svc = sleeper(remediation={"cooldown": 300})
    with running_agent(tmp_path, {"components": {"keep": sleeper(), "svc": svc}}) as agent:
        first = agent.status()["svc"]["pids"]
        assert send(agent, {"component": "svc", "action": "restart"})["result"] == "accepted"
        wait_for(lambda: agent.status()["svc"]["pids"] not in ([], first), 10, what="the alert's restart")
        stamps = agent.state_dir / "remediation.json"
        wait_for(lambda: "svc" in json.loads(stamps.read_text())["last_alert_restart"], 10)
        reload(agent, {"components": {"keep": sleeper()}})
        wait_for(lambda: "svc" not in json.loads(stamps.read_text())["last_alert_restart"], 10,
                 what="the removed component's timestamp gone from remediation.json")
        reload(agent, {"components": {"keep": sleeper(), "svc": svc}})
        added = wait_for(lambda: agent.status()["svc"]["pids"], 10, what="svc added again")
        result = send(agent, {"component": "svc", "action": "restart"})
        assert result["result"] == "accepted", result
        wait_for(lambda: agent.status()["svc"]["pids"] not in ([], added), 10, what="the new alert's restart")


# --- the parts already right, in one agent ---------------------------------------------------------------

# About a fifth of a core, until killed: a CPU counter that moves.
BURNER = ("import sys, time\n"
          "while True:\n"
          "    t = time.monotonic()\n"
          "    while time.monotonic() - t < 0.01: pass\n"
          "    time.sleep(0.04)\n")


def test_a_reload_that_adds_removes_and_replaces_composes(tmp_path: Path) -> None:
    """One reload adds, removes and replaces components: /metrics, the backlog's capability map, the
    status API and page, and containment all follow it; a replaced component's counters go on."""
    def config(burn_arg: str, components: dict[str, Any], grafana: str) -> dict[str, Any]:
        return {"agent": {"resources": {"interval": 0.2}, "containment": "cgroup",
                          "status_page": {"grafana_url": grafana}},
                "components": {"burn": {"command": ["python", "-c", BURNER, burn_arg], "stop": {"grace": 2}},
                               **components}}

    before = config("v1", {"gone": sleeper(capabilities=["oldcap"])}, "https://grafana.example/d/before")
    after = config("v2", {"added": sleeper(capabilities=["newcap"])}, "https://grafana.example/d/after")
    cpu = 'orchestrator_component_cpu_seconds_total{component="burn"}'
    with running_agent(tmp_path, before) as agent:
        wait_for(lambda: series(agent).get(cpu, 0) > 0.05, 15, what="the burner's CPU counted")
        gone = agent.status()["gone"]["pids"]
        base = Path(agent.api("GET", "/api/v1/status")["containment"]["detail"])
        wait_for(lambda: (base / "gone.0" / "cgroup.procs").exists(), 10, what="gone's cgroup slot")
        burner = agent.status()["burn"]["pids"]
        reload(agent, after)
        readings = []

        def replaced_and_counted() -> bool:
            readings.append(series(agent)[cpu])
            pids = agent.status()["burn"]["pids"]
            return bool(pids) and pids != burner and readings[-1] > readings[0] + 0.05
        wait_for(replaced_and_counted, 20, what="the burner replaced and its CPU counted on")
        assert readings == sorted(readings), readings  # the counter never went back across the roll
        names = series(agent)
        assert names['orchestrator_component_restarts_total{component="burn",reason="reload"}'] == 1
        assert not [k for k in names if 'component="gone"' in k or 'capability="oldcap"' in k]
        wait_for(lambda: 'orchestrator_component_resident_memory_bytes{component="added"}' in series(agent)
                 and series(agent)['orchestrator_component_resident_memory_bytes{component="added"}'] > 0, 10)
        # The new capability's backlog is exported (its pending/normal zero: docs/metrics.md).
        assert names['orchestrator_todo_backlog{status="pending",priority="normal",capability="newcap"}'] == 0
        assert names['orchestrator_component_capability{component="added",capability="newcap"}'] == 1
        assert set(agent.status()) == {"burn", "added"}
        assert not any(pid_alive(p) for p in gone) and not (base / "gone.0").exists()
        token = (agent.state_dir / "control.token").read_text().strip()
        with httpx.Client(base_url=agent.url, follow_redirects=True, timeout=10) as browser:
            page = browser.get("/", params={"token": token})
            assert page.status_code == 200 and "https://grafana.example/d/after" in page.text
