"""Config reload on a running agent: each kind of change, all-or-nothing, triggers, and signal storms.

PIDs prove what a reload replaced and what it kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.config.changes import config_hash, plan_reload
from agent.config.loader import build_config, load_config
from tests.helpers import AgentProcess, pid_alive, running_agent, wait_for

ROOT = Path(__file__).resolve().parent.parent


def sleeper(seconds: int = 1000, **extra: Any) -> dict[str, Any]:
    return {"command": ["sleep", str(seconds)], "stop": {"grace": 2}, **extra}


def base_config() -> dict[str, Any]:
    return {
        "agent": {"resources": {"interval": 0.5}},
        "components": {
            "keep": sleeper(),
            "cmd": sleeper(replicas={"min": 2, "max": 2}),
            "probe": sleeper(),
            "bounds": sleeper(replicas={"min": 1, "max": 4}),
            "gone": sleeper(),
        },
    }


def write(agent: AgentProcess, config: dict[str, Any]) -> None:
    agent_settings = {"listen": f"127.0.0.1:{agent.port}", "state_dir": str(agent.state_dir),
                      "log_dir": str(agent.log_dir)}
    doc = json.loads(json.dumps(config))
    doc.setdefault("agent", {}).update({k: v for k, v in agent_settings.items() if k not in doc["agent"]})
    tmp = agent.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, agent.config_path)


def cli(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args, "-c", str(agent.config_path)],
                          cwd=agent.dir, capture_output=True, text=True, timeout=120)


def pids(agent: AgentProcess) -> dict[str, list[int]]:
    return {name: sorted(c["pids"]) for name, c in agent.status().items()}


def metric(agent: AgentProcess, name: str) -> float:
    for line in httpx.get(agent.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def running(agent: AgentProcess, expected: dict[str, int]) -> bool:
    st = agent.status()
    return set(st) == set(expected) and all(len(st[n]["pids"]) == k for n, k in expected.items())


# --- the plan, as data ---------------------------------------------------------------------------------

def test_plan_sorts_every_kind_of_change() -> None:
    old = build_config(base_config())
    new_doc = base_config()
    new_doc["components"].pop("gone")
    new_doc["components"]["added"] = sleeper(depends_on=["keep"])
    new_doc["components"]["cmd"]["command"] = ["sleep", "1001"]
    new_doc["components"]["probe"]["probe"] = {"exec": {"command": ["true"]}, "interval": 0.2}
    new_doc["components"]["bounds"]["replicas"]["max"] = 2
    new_doc["agent"]["resources"]["interval"] = 1.0
    plan = plan_reload(old, build_config(new_doc))
    assert plan.added == ["added"] and plan.removed == ["gone"]
    assert plan.replaced == {"cmd": ["command"]}
    assert set(plan.updated) == {"probe", "bounds"} and plan.updated["bounds"] == ["replicas.max"]
    assert plan.unchanged == ["keep"]
    assert plan.agent == ["resources.interval"] and not plan.refused and not plan.backlog
    assert plan.hash == config_hash(build_config(new_doc)) != config_hash(old)


def test_plan_refuses_listen_state_dir_and_containment_naming_the_field() -> None:
    old = build_config(base_config())
    doc = base_config()
    doc["agent"].update(listen="127.0.0.1:1", state_dir="/elsewhere", containment="tracking")
    plan = plan_reload(old, build_config(doc))
    assert len(plan.refused) == 3
    for field, message in zip(("containment", "listen", "state_dir"), sorted(plan.refused), strict=True):
        assert message.startswith(f"agent.{field} changed")
        assert ("agent reexec" in message) == (field != "containment") and "restart the agent" in message


def test_hash_ignores_key_order_and_formatting() -> None:
    doc = base_config()
    reordered = {"components": dict(reversed(list(doc["components"].items()))), "agent": doc["agent"]}
    assert config_hash(build_config(doc)) == config_hash(build_config(reordered))


# --- a real agent --------------------------------------------------------------------------------------

def test_reload_applies_each_kind_of_change_and_pids_prove_it(tmp_path: Path) -> None:
    config = base_config()
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: running(agent, {"keep": 1, "cmd": 2, "probe": 1, "bounds": 1, "gone": 1}), 10)
        agent.api("POST", "/api/v1/components/bounds/scale", {"replicas": 3})  # a run-time desired count
        wait_for(lambda: len(agent.status()["bounds"]["pids"]) == 3, 10)
        before = pids(agent)
        hash_before = metric(agent, "orchestrator_config_hash")

        new = base_config()
        new["components"].pop("gone")
        new["components"]["added"] = sleeper(depends_on=["keep"])
        new["components"]["cmd"]["command"] = ["sleep", "1001"]
        new["components"]["probe"]["probe"] = {"exec": {"command": ["true"]}, "interval": 0.2}
        new["components"]["bounds"]["replicas"]["max"] = 2
        write(agent, new)

        dry = cli(agent, "reload", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["status"] == "dry-run"
        assert pids(agent) == before  # a dry run changes nothing

        out = cli(agent, "reload")
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith("applied: ") and "replaced  cmd: command" in out.stdout

        after = pids(agent)
        assert after["keep"] == before["keep"]  # unchanged: same PID
        assert after["probe"] == before["probe"]  # probe only: applied live
        assert after["bounds"] == before["bounds"][:2]  # desired 3 clamped to the new max 2: one stopped
        assert agent.status()["bounds"]["desired"] == 2
        assert not set(after["cmd"]) & set(before["cmd"]) and len(after["cmd"]) == 2  # replaced
        assert "gone" not in after and not any(pid_alive(p) for p in before["gone"])  # removed, stopped
        assert len(after["added"]) == 1  # added, started
        for pid in after["cmd"]:
            assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1] == b"1001"
        # The probe now runs on the kept process.
        wait_for(lambda: agent.status()["probe"]["healthy"] == 1 and 'component="probe"' in
                 httpx.get(agent.url + "/metrics").text.split("orchestrator_component_probe_success")[-1], 10)
        assert metric(agent, "orchestrator_config_last_reload_successful") == 1
        assert metric(agent, "orchestrator_config_hash") != hash_before
        assert agent.state()["components"].keys() == {"keep", "cmd", "probe", "bounds", "added"}

        # The same file again: nothing to do, nothing touched.
        again = cli(agent, "reload")
        assert again.returncode == 0 and again.stdout.startswith("nothing to apply")
        assert pids(agent) == after


def test_invalid_config_changes_nothing_by_every_trigger(tmp_path: Path) -> None:
    with running_agent(tmp_path, base_config()) as agent:
        wait_for(lambda: running(agent, {"keep": 1, "cmd": 2, "probe": 1, "bounds": 1, "gone": 1}), 10)
        before = pids(agent)
        bad = base_config()
        bad["components"]["cmd"]["replicas"] = {"min": 3, "max": 1}
        bad["components"]["keep"]["restart"] = {"policy": "sometimes"}
        write(agent, bad)

        out = cli(agent, "reload")
        assert out.returncode == 2, out.stdout + out.stderr
        assert "invalid config, nothing changed" in out.stderr
        assert "components.keep.restart.policy" in out.stderr and "components.cmd.replicas" in out.stderr
        assert metric(agent, "orchestrator_config_last_reload_successful") == 0

        response = httpx.post(agent.url + "/-/reload", headers={
            "Authorization": "Bearer " + (agent.state_dir / "control.token").read_text().strip()})
        assert response.status_code == 422 and response.json()["status"] == "invalid"
        assert httpx.post(agent.url + "/-/reload").status_code == 401  # the control token is required

        agent.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: sum("config reload (SIGHUP) invalid config" in r.get("msg", "")
                             for r in agent.log_records()) == 1, 10)
        assert agent.healthy() and pids(agent) == before
        assert metric(agent, "orchestrator_config_last_reload_successful") == 0

        write(agent, base_config())  # fixed: the metric recovers
        assert cli(agent, "reload").returncode == 0
        assert metric(agent, "orchestrator_config_last_reload_successful") == 1
        assert pids(agent) == before


def test_listen_change_is_refused_and_points_to_reexec(tmp_path: Path) -> None:
    with running_agent(tmp_path, base_config()) as agent:
        wait_for(lambda: running(agent, {"keep": 1, "cmd": 2, "probe": 1, "bounds": 1, "gone": 1}), 10)
        moved = base_config()
        moved["agent"]["listen"] = "127.0.0.1:1"
        write(agent, moved)
        out = subprocess.run([sys.executable, "-m", "agent", "reload", "--url", agent.url, "--token-file",
                              str(agent.state_dir / "control.token")], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "agent.listen changed" in out.stderr and "agent reexec" in out.stderr
        assert metric(agent, "orchestrator_config_last_reload_successful") == 0


def test_ten_sighups_in_a_second_with_edits_end_in_the_last_file(tmp_path: Path) -> None:
    with running_agent(tmp_path, {"components": {"w": sleeper(replicas={"min": 1, "max": 10})}}) as agent:
        wait_for(lambda: running(agent, {"w": 1}), 10)
        for i in range(10):
            components = {"w": sleeper(replicas={"min": i + 1, "max": 10})}
            if i % 2:
                components[f"extra{i}"] = sleeper()
            write(agent, {"components": components})
            agent.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        # The last file: w at min 10, extra9.
        wait_for(lambda: running(agent, {"w": 10, "extra9": 1}), 20, 0.1)
        assert agent.healthy()
        assert metric(agent, "orchestrator_config_last_reload_successful") == 1
        expected = load_config(agent.config_path)  # paths resolved as the agent resolves them
        assert metric(agent, "orchestrator_config_hash") == float(int(config_hash(expected)[:13], 16))


def test_rotated_control_token_needs_no_restart(tmp_path: Path) -> None:
    token_file = tmp_path / "control.token"
    token_file.write_text("a" * 32 + "\n")
    token_file.chmod(0o600)
    config = {"agent": {"control_token_file": str(token_file)}, "components": {"keep": sleeper()}}
    with running_agent(tmp_path, config) as agent:
        def call(token: str) -> int:
            return httpx.get(agent.url + "/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code

        assert call("a" * 32) == 200
        token_file.write_text("b" * 32 + "\n")
        assert call("b" * 32) == 401  # not re-read until a reload
        response = httpx.post(agent.url + "/-/reload", headers={"Authorization": "Bearer " + "a" * 32})
        assert response.status_code == 200 and response.json()["status"] == "unchanged"
        assert call("b" * 32) == 200 and call("a" * 32) == 401


def test_autonomy_in_the_file_applies_when_changed_and_never_lifts_an_emergency_stop(tmp_path: Path) -> None:
    config = {"agent": {"autonomy": "on"}, "components": {"keep": sleeper()}}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: running(agent, {"keep": 1}), 10)
        write(agent, {"agent": {"autonomy": "dry-run"}, "components": {"keep": sleeper()}})
        assert cli(agent, "reload").returncode == 0
        assert agent.api("GET", "/api/v1/autonomy")["autonomy"] == "dry-run"
        agent.api("POST", "/api/v1/autonomy", {"mode": "off"})  # set at run time: an unchanged file keeps it
        assert cli(agent, "reload").returncode == 0
        assert agent.api("GET", "/api/v1/autonomy")["autonomy"] == "off"

        agent.api("POST", "/api/v1/emergency-stop")
        wait_for(lambda: running(agent, {"keep": 0}), 10)
        write(agent, {"agent": {"autonomy": "on"}, "components": {"keep": sleeper(), "new": sleeper()}})
        assert cli(agent, "reload").returncode == 0
        doc = agent.api("GET", "/api/v1/autonomy")
        assert doc == {"autonomy": "off", "emergency_stop": True}
        assert running(agent, {"keep": 0, "new": 0})  # an added component stays stopped too


def test_a_reload_during_a_rolling_restart_takes_over_after_the_replica_in_hand(tmp_path: Path) -> None:
    """The manual roll finishes replica 0, the reload's plan replaces the rest; never more than three."""
    import threading

    import psutil

    def component(seconds: int) -> dict[str, Any]:
        return sleeper(seconds, replicas={"min": 3, "max": 3}, ready_after=1.0)

    with running_agent(tmp_path, {"components": {"w": component(1000)}}) as agent:
        wait_for(lambda: agent.status()["w"]["healthy"] == 3, 15)
        before = {i: pid for i, pid in enumerate(agent.status()["w"]["pids"])}
        answers: list[Any] = []
        restart = threading.Thread(target=lambda: answers.append(
            agent.api("POST", "/api/v1/components/w/restart", {}, timeout=60)))
        most = [0]
        done = threading.Event()

        def sample() -> None:  # every 5 ms until the test ends
            parent = psutil.Process(agent.proc.pid)  # type: ignore[union-attr]
            while not done.wait(0.005):
                alive = 0
                for child in parent.children():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        alive += child.name() == "sleep" and child.status() != "zombie"
                most[0] = max(most[0], alive)

        sampler = threading.Thread(target=sample)
        sampler.start()
        restart.start()
        try:
            wait_for(lambda: before[0] not in agent.status()["w"]["pids"], 10)  # replica 0 in hand
            write(agent, {"components": {"w": component(1001)}})
            out = cli(agent, "reload")
            assert out.returncode == 0, out.stdout + out.stderr
            restart.join(60)
        finally:
            done.set()
            sampler.join(10)
        assert answers and answers[0]["restarted"] == 1 and answers[0]["not_restarted"] == [1, 2]
        final = agent.status()["w"]
        assert final["healthy"] == 3 and not set(final["pids"]) & set(before.values())
        for pid in final["pids"]:
            assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1] == b"1001"
        assert most[0] <= 3, f"{most[0]} replicas ran at once"
