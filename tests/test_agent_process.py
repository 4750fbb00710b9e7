"""The agent as a real process: signals, orphans, port in use, state across restarts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import AgentProcess, pid_alive, running_agent, wait_for


def config(tmp: Path, **components: dict[str, Any]) -> dict[str, Any]:
    return {"agent": {"resources": {"interval": 0.5}}, "components": components}


def forker(tmp: Path, name: str) -> dict[str, Any]:
    """A component with a grandchild; both pids land in files."""
    return {"command": f"sleep 1000 & echo $! > {tmp / name}.gc; echo $$ > {tmp / name}.pid; wait", "shell": True}


def test_sigkilled_agent_leaves_no_process_behind(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, config(tmp_path, a=forker(tmp_path, "a"), b=forker(tmp_path, "b"),
                                          c={"command": ["sleep", "1000"], "replicas": {"min": 3, "max": 3}}))
    agent.start()
    try:
        wait_for(lambda: all((tmp_path / f"{n}.gc").exists() and (tmp_path / f"{n}.gc").read_text()
                             for n in "ab"), 5)
        started = agent.descendants()
        assert len(started) >= 2 + 2 + 3 + 1  # two shells, two grandchildren, three sleeps, the guardian
        agent.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        agent.proc.wait(5)  # type: ignore[union-attr]
        t0 = time.monotonic()
        wait_for(lambda: not any(pid_alive(p) for p in started), 2.0,
                 what=f"all of {started} to be gone")
        print(f"all {len(started)} descendants gone {time.monotonic() - t0:.3f}s after SIGKILL")
    finally:
        agent.stderr.close()


def test_sigterm_stops_everything_kills_the_stubborn_and_exits_0(tmp_path: Path) -> None:
    marker = tmp_path / "trapped"
    agent = AgentProcess(tmp_path, config(
        tmp_path,
        polite={"command": ["sleep", "1000"], "replicas": {"min": 2, "max": 2}},
        stubborn={"command": f"trap '' TERM; touch {marker}; while :; do sleep 0.2; done", "shell": True,
                  "stop": {"grace": 0.5}},
    ))
    agent.start()
    wait_for(marker.exists, 5)
    started = agent.descendants()
    t0 = time.monotonic()
    code = agent.stop(signal.SIGTERM)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert 0.5 <= elapsed < 5
    assert not any(pid_alive(p) for p in started)
    text = agent.log_text()
    assert "ignored SIGTERM for 0.5s; sending SIGKILL" in text
    assert "agent stopped" in text


def test_no_zombies_while_components_crash(tmp_path: Path) -> None:
    with running_agent(tmp_path, config(tmp_path, crashy={
        "command": "sleep 0.05 & exit 1", "shell": True,
        "restart": {"max_restarts": 1000, "backoff": {"initial": 0.01, "max": 0.02}},
    })) as agent:
        proc = psutil.Process(agent.proc.pid)  # type: ignore[union-attr]
        wait_for(lambda: agent.log_text().count("exit code 1") >= 20, 10)
        # A child seen as a zombie is reaped within moments, never left behind.
        seen: set[int] = set()
        for _ in range(50):
            for child in proc.children(recursive=True):
                try:
                    if child.status() == psutil.STATUS_ZOMBIE:
                        seen.add(child.pid)
                except psutil.NoSuchProcess:
                    pass
        for pid in seen:
            wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), 1.0, what=f"zombie {pid} to be reaped")


def test_port_in_use_is_a_clear_error_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        marker = tmp_path / "started"
        cfg = {"agent": {"listen": f"127.0.0.1:{port}"},
               "components": {"a": {"command": f"touch {marker}; sleep 100", "shell": True}}}
        agent = AgentProcess(tmp_path, cfg)
        agent.start(wait=False)
        code = agent.proc.wait(15)  # type: ignore[union-attr]
        agent.stderr.close()
    assert code == 3
    assert f"cannot listen on 127.0.0.1:{port}" in agent.log_text()
    assert "nothing started" in agent.log_text()
    assert not marker.exists()


def test_scaled_stopped_and_open_circuit_survive_an_agent_restart(tmp_path: Path) -> None:
    comps = {
        "w": {"command": ["sleep", "1000"], "replicas": {"min": 1, "max": 4, "initial": 1}},
        "held": {"command": ["sleep", "1000"]},
        "crash": {"command": ["sh", "-c", "exit 1"],
                  "restart": {"max_restarts": 2, "circuit_cooldown": 600, "backoff": {"initial": 0.01}}},
    }

    def agent_cli(agent: AgentProcess, *args: str) -> None:
        out = subprocess.run([sys.executable, "-m", "agent", *args, "--config", str(agent.config_path)],
                             capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert out.returncode == 0, out.stderr

    with running_agent(tmp_path, config(tmp_path, **comps)) as agent:
        wait_for(lambda: "circuit open" in agent.log_text(), 5)
        agent_cli(agent, "scale", "w", "3")
        agent_cli(agent, "stop", "held")
    (tmp_path / "agent.stderr").unlink()
    with running_agent(tmp_path, config(tmp_path, **comps)) as agent:
        wait_for(lambda: agent.log_text().count("component w replica") >= 3, 5)
        text = agent.log_text()
        assert "component crash: circuit open (restored)" in text
        assert "component crash replica 0 started" not in text
        assert "component held stays stopped" in text
        assert "component held replica 0 started" not in text


def test_corrupt_state_does_not_crash_the_agent(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_bytes(b"\x00\xff garbage")
    with running_agent(tmp_path, config(tmp_path, a={"command": ["sleep", "1000"]})) as agent:
        wait_for(lambda: "component a replica 0 started" in agent.log_text(), 5)
        assert "is corrupt" in agent.log_text()


def test_help_explains_the_verbs() -> None:
    out = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for verb in ("run", "check-config", "todo", "--once"):
        assert verb in out.stdout
    assert "exit codes" in out.stdout
    assert os.path.exists(Path(__file__).parent.parent / "agent" / "demo" / "default.yaml")
