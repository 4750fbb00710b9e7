"""`agent reexec` and SIGUSR2 on a real agent: the process image is replaced in place (same PID) and the
new image adopts every running component; a refused or failed reexec never loses or orphans one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.supervise.statelock import probe
from tests.diskutil import small_disk
from tests.helpers import AgentProcess, free_port, pid_alive, start_time, wait_for


def sleepers(n: int) -> dict[str, Any]:
    return {f"c{i:02d}": {"command": ["sleep", "1000"], "stop": {"grace": "5s"}} for i in range(n)}


def component_pids(agent: AgentProcess) -> dict[str, list[int]]:
    return {name: c["pids"] for name, c in agent.status().items()}


def all_running(agent: AgentProcess, n: int) -> dict[str, list[int]] | None:
    pids = component_pids(agent)
    return pids if len(pids) == n and all(len(p) == 1 for p in pids.values()) else None


def edit_config(agent: AgentProcess, change: Any) -> None:
    config = yaml.safe_load(agent.config_path.read_text())
    change(config)
    agent.config_path.write_text(yaml.safe_dump(config))


def signal_status(pid: int) -> dict[str, int]:
    """SigBlk, SigIgn, SigCgt of a process, as bit masks."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigBlk", "SigIgn", "SigCgt"):
            fields[key] = int(value.strip(), 16)
    return fields


def bit(sig: int) -> int:
    return 1 << (sig - 1)


def agent_cli(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args, "-c", str(agent.config_path)],
                          capture_output=True, text=True, timeout=120, cwd=agent.dir)


def test_reexec_keeps_20_components_and_serves_on_the_new_listen(tmp_path: Path, containment: str) -> None:
    agent = AgentProcess(tmp_path, {"agent": {"containment": containment}, "components": sleepers(20)}).start()
    try:
        before = wait_for(lambda: all_running(agent, 20), 30, 0.05, "20 components running")
        guardian = agent.api("GET", "/api/v1/status")["containment"]["guardian_pid"]
        old_url, first_start = agent.url, start_time(agent.url)
        assert first_start is not None
        new_port = free_port()
        edit_config(agent, lambda c: c["agent"].update(listen=f"127.0.0.1:{new_port}"))

        # The CLI reaches the agent where it runs now (--url) and finds the new image on the new address.
        out = agent_cli(agent, "reexec", "--url", old_url)
        assert out.returncode == 0, out.stdout + out.stderr + agent.log_text()
        assert f"http://127.0.0.1:{new_port}" in out.stdout

        assert agent.proc is not None and agent.proc.poll() is None  # the same process, never exited
        agent.url, agent.port = f"http://127.0.0.1:{new_port}", new_port
        after_start = start_time(agent.url)
        assert after_start is not None and after_start > first_start
        with pytest.raises(httpx.ConnectError):
            httpx.get(old_url + "/-/healthy", timeout=2)
        assert component_pids(agent) == before  # every component: the same pid, none restarted
        status = agent.api("GET", "/api/v1/status")
        assert status["containment"]["guardian_pid"] == guardian
        assert all(c["restarts"] == 0 for c in status["components"])
        assert "took over from agent" in agent.log_text()

        # The exec kept no signal blocked or ignored that the agent relies on.
        masks = signal_status(agent.proc.pid)
        assert masks["SigBlk"] == 0, hex(masks["SigBlk"])
        assert masks["SigCgt"] & bit(signal.SIGCHLD) and masks["SigCgt"] & bit(signal.SIGTERM)
        assert not masks["SigIgn"] & bit(signal.SIGCHLD)

        # Exits still reach the new image: a SIGKILLed component is restarted.
        victim = before["c07"][0]
        os.kill(victim, signal.SIGKILL)
        restarted = wait_for(lambda: (p := component_pids(agent)["c07"]) and p[0] != victim and p, 10, 0.02,
                             "c07 restarted after SIGKILL")
        assert pid_alive(restarted[0])
        assert {n: p for n, p in component_pids(agent).items() if n != "c07"} == \
            {n: p for n, p in before.items() if n != "c07"}
    finally:
        assert agent.stop() == 0
    # A clean stop of the new image leaves nothing behind.
    leftover = [p for pids in before.values() for p in pids if pid_alive(p)]
    assert not leftover and not pid_alive(guardian)


def test_a_reexec_onto_a_new_state_dir_is_reported_done_with_the_new_token(tmp_path: Path) -> None:
    # The new image makes a new control token in its new state dir; the CLI must still see it serve.
    agent = AgentProcess(tmp_path, {"components": sleepers(2)}).start()
    try:
        before = wait_for(lambda: all_running(agent, 2), 15, 0.05, "2 components running")
        moved = tmp_path / "state2"
        edit_config(agent, lambda c: c["agent"].update(state_dir=str(moved)))
        refused = agent_cli(agent, "reexec")  # the config names a token that does not exist yet
        assert refused.returncode != 0 and "--token-file" in refused.stderr, refused.stderr
        old_token = str(agent.state_dir / "control.token")
        out = agent_cli(agent, "reexec", "--json", "--timeout", "20", "--token-file", old_token)
        assert out.returncode == 0, out.stdout + out.stderr + agent.log_text()
        assert (moved / "control.token").exists()
        agent.state_dir = moved
        assert component_pids(agent) == before
        status = agent_cli(agent, "status", "--json")
        assert status.returncode == 0, status.stderr
    finally:
        assert agent.stop() == 0


def test_sigusr2_reexecs_and_stops_a_component_the_file_no_longer_has(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"components": sleepers(3)}).start()
    try:
        before = wait_for(lambda: all_running(agent, 3), 20, 0.05, "3 components running")
        first_start = start_time(agent.url)
        assert first_start is not None and agent.proc is not None
        edit_config(agent, lambda c: c["components"].pop("c02"))
        agent.proc.send_signal(signal.SIGUSR2)
        wait_for(lambda: (s := start_time(agent.url)) is not None and s > first_start, 30, 0.05,
                 "the new image to serve")
        assert agent.proc.poll() is None
        pids = wait_for(lambda: all_running(agent, 2), 10, 0.05, "2 components")
        assert pids == {"c00": before["c00"], "c01": before["c01"]}
        wait_for(lambda: not pid_alive(before["c02"][0]), 10, 0.02, "the removed component's replica stopped")
        assert "reexec requested by SIGUSR2" in agent.log_text()
        assert "(no longer configured) replica 0" in agent.log_text()
    finally:
        assert agent.stop() == 0


def test_a_changed_command_is_replaced_one_replica_at_a_time_after_the_reexec(tmp_path: Path) -> None:
    config = {"components": {"same": sleepers(1)["c00"],
                             "new": {"command": ["sleep", "1000"], "replicas": {"min": 2, "max": 2}}}}
    agent = AgentProcess(tmp_path, config).start()
    try:
        wait_for(lambda: len(component_pids(agent)["new"]) == 2, 20, 0.05, "both replicas running")
        before = component_pids(agent)
        first_start = start_time(agent.url)
        assert first_start is not None and agent.proc is not None
        edit_config(agent, lambda c: c["components"]["new"].update(command=["sleep", "1001"]))
        agent.proc.send_signal(signal.SIGUSR2)
        wait_for(lambda: (s := start_time(agent.url)) is not None and s > first_start, 30, 0.05,
                 "the new image to serve")

        def replaced() -> bool:
            pids = component_pids(agent)["new"]
            return len(pids) == 2 and not set(pids) & set(before["new"])

        wait_for(replaced, 20, 0.05, "the stale replicas replaced")
        for pid in component_pids(agent)["new"]:
            assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1] == b"1001"
        assert component_pids(agent)["same"] == before["same"]  # launched as the file says: adopted as is
        assert agent.status()["new"]["restarts"] == 2  # reason reload, one at a time
    finally:
        assert agent.stop() == 0


def test_a_broken_config_refuses_the_reexec_and_everything_keeps_running(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"components": sleepers(3)}).start()
    try:
        before = wait_for(lambda: all_running(agent, 3), 20, 0.05, "3 components running")
        first_start = start_time(agent.url)
        good = agent.config_path.read_text()
        edit_config(agent, lambda c: c["components"]["c01"].update(restart={"policy": "sometimes"}))

        # The CLI cannot read the file either (it finds the token through it): exit 2 with the errors.
        out = agent_cli(agent, "reexec", "--url", agent.url)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "components.c01.restart.policy" in out.stderr
        # Told where the token is, it asks the agent, whose preflight refuses: exit 2 with the errors.
        out = agent_cli(agent, "reexec", "--url", agent.url, "--token-file", str(agent.state_dir / "control.token"))
        assert out.returncode == 2, out.stdout + out.stderr
        assert "reexec refused (422), nothing changed" in out.stderr
        assert "components.c01.restart.policy" in out.stderr

        # The same by API: 422 with the errors.
        token = (agent.state_dir / "control.token").read_text().strip()
        r = httpx.post(agent.url + "/-/reexec", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert r.status_code == 422 and any("components.c01.restart.policy" in e for e in r.json()["errors"])
        assert httpx.post(agent.url + "/-/reexec", timeout=10).status_code == 401

        # And by SIGUSR2: logged, nothing changed.
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGUSR2)
        wait_for(lambda: "reexec (SIGUSR2) refused" in agent.log_text(), 30, 0.05, "the refusal logged")
        assert start_time(agent.url) == first_start
        assert component_pids(agent) == before

        # Fixed: the next reexec goes through.
        agent.config_path.write_text(good)
        out = agent_cli(agent, "reexec", "--url", agent.url, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert component_pids(agent) == before
    finally:
        assert agent.stop() == 0


def test_a_new_listen_in_use_keeps_the_previous_config(tmp_path: Path) -> None:
    # The preflight passes (the file is valid), but the new image cannot bind the new address: it runs
    # on the previous image's config, on the previous address, with the same components.
    agent = AgentProcess(tmp_path, {"components": sleepers(3)}).start()
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy_port = taken.getsockname()[1]
        before = wait_for(lambda: all_running(agent, 3), 20, 0.05, "3 components running")
        first_start = start_time(agent.url)
        assert first_start is not None
        edit_config(agent, lambda c: c["agent"].update(listen=f"127.0.0.1:{busy_port}"))
        assert agent.api("POST", "/-/reexec", timeout=60)["listen"] == f"127.0.0.1:{busy_port}"
        wait_for(lambda: (s := start_time(agent.url)) is not None and s > first_start, 30, 0.05,
                 "the new image on the previous address")
        assert component_pids(agent) == before
        assert "running on the previous image's config instead" in agent.log_text()
    finally:
        taken.close()
        assert agent.stop() == 0


def test_a_new_image_that_cannot_serve_stops_the_components_cleanly(tmp_path: Path) -> None:
    # A new state_dir on a read-only disk passes `check-config` (it exists), but the new image cannot
    # create its control token there, after the adoption: it stops every component with its stop signal
    # and grace, and exits; nothing is orphaned.
    marks = tmp_path / "terms"
    trap = f"trap 'echo $AGENT_COMPONENT >> {marks}; exit 0' TERM; while :; do sleep 0.05; done"
    components = {name: {"command": ["sh", "-c", trap], "stop": {"grace": "5s"}} for name in ("a", "b")}
    agent = AgentProcess(tmp_path, {"components": components}).start()
    before = wait_for(lambda: all_running(agent, 2), 20, 0.05, "2 components running")
    guardian = agent.api("GET", "/api/v1/status")["containment"]["guardian_pid"]
    with small_disk(tmp_path / "disk") as disk:
        (disk.path / "state").mkdir(mode=0o700)
        (disk.path / "state" / "lock").touch()  # lockable read-only: the new image gets as far as its tokens
        disk.read_only()
        edit_config(agent, lambda c: c["agent"].update(state_dir=str(disk.path / "state")))
        agent.api("POST", "/-/reexec", timeout=60)
        assert agent.proc is not None
        code = agent.proc.wait(60)
        agent.stderr.close()
        disk.writable()
    assert code == 3, agent.log_text()
    assert sorted(marks.read_text().split()) == ["a", "b"]  # each got its stop signal
    assert not [p for pids in before.values() for p in pids if pid_alive(p)]
    assert not pid_alive(guardian)
    assert f"cannot create the token file {disk.path / 'state' / 'webhook.token'}: Read-only" in agent.log_text()


def test_a_failed_exec_leaves_no_clean_stop_mark(tmp_path: Path) -> None:
    # The hand-over cannot be written (a directory where reexec.json goes): the agent stops its components
    # and exits 1. That is no clean stop: the lock file must not say one, or `agent --once` reports a
    # stopped agent (OK) instead of CRITICAL.
    agent = AgentProcess(tmp_path, {"components": sleepers(1)}).start()
    wait_for(lambda: all_running(agent, 1), 20, 0.05, "1 component running")
    (agent.state_dir / "reexec.json" / "in-the-way").mkdir(parents=True)
    agent.api("POST", "/-/reexec", timeout=60)
    assert agent.proc is not None
    code = agent.proc.wait(60)
    agent.stderr.close()
    assert code == 1, agent.log_text()
    assert "reexec failed (cannot write" in agent.log_text()
    seen = probe(agent.state_dir)
    assert (seen.held, seen.pid, seen.stopped_at) == (False, agent.proc.pid, None)


def test_a_token_file_the_new_image_would_refuse_refuses_the_reexec(tmp_path: Path) -> None:
    # It once passed the preflight (`check-config` did not read token files), and the new image, refusing
    # it, stopped every component. Now check-config reads it as the agent does: 422, nothing changes.
    agent = AgentProcess(tmp_path, {"components": sleepers(1)}).start()
    before = wait_for(lambda: all_running(agent, 1), 20, 0.05, "1 component running")
    token = tmp_path / "webhook.token"
    token.write_text("x" * 40 + "\n")
    token.chmod(0o644)
    edit_config(agent, lambda c: c["agent"].update(webhook={"bearer_token_file": str(token)}))
    control = (agent.state_dir / "control.token").read_text().strip()
    refused = httpx.post(agent.url + "/-/reexec", headers={"Authorization": f"Bearer {control}"}, timeout=60)
    assert refused.status_code == 422, refused.text
    assert any("run: chmod 600" in e for e in refused.json()["errors"]), refused.json()
    assert component_pids(agent) == before
    assert agent.stop() == 0


def test_a_sigterm_during_the_exec_is_held_for_the_new_image(tmp_path: Path) -> None:
    # SIGTERM sent while the new image is still loading (its handlers not yet installed) would kill it
    # with the default action; held across the exec, it reaches the new image's graceful shutdown.
    agent = AgentProcess(tmp_path, {"components": sleepers(2)}).start()
    before = wait_for(lambda: all_running(agent, 2), 20, 0.05, "2 components running")
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: "re-executing" in agent.log_text(), 30, 0.002, "the exec")
    agent.proc.send_signal(signal.SIGTERM)
    try:
        code = agent.proc.wait(60)
    except subprocess.TimeoutExpired:  # the SIGTERM was lost: say where the agent was
        raise AssertionError(f"the agent did not stop within 60 s of the SIGTERM:\n{agent.log_text()}") from None
    assert code == 0, agent.log_text()
    agent.stderr.close()
    text = agent.log_text()
    # The new image takes the held SIGTERM off before it unblocks signals and handles it itself.
    assert text.index("re-executing") < text.index("SIGTERM held across the exec: handled now")
    assert text.index("re-executing") < text.rindex("shutdown requested") < text.rindex("agent stopped")
    assert "took over from agent" in text
    assert not [p for pids in before.values() for p in pids if pid_alive(p)]


def test_a_sigterm_right_after_the_reexec_is_accepted_stops_the_agent(tmp_path: Path) -> None:
    # Before the exec, the old image stops serving (awaits): a SIGTERM handled there was taken by the old
    # image and never reached the new one, which then ran on, deaf to it. Now the stop wins over the reexec.
    agent = AgentProcess(tmp_path, {"components": sleepers(1)}).start()
    before = wait_for(lambda: all_running(agent, 1), 20, 0.05, "1 component running")
    token = (agent.state_dir / "control.token").read_text().strip()
    accepted = httpx.post(agent.url + "/-/reexec", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert accepted.status_code == 202, accepted.text
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGTERM)
    try:
        code = agent.proc.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the agent did not stop within 60 s of the SIGTERM:\n{agent.log_text()}") from None
    agent.stderr.close()
    assert code == 0, agent.log_text()
    assert "agent stopped" in agent.log_text()
    assert not [p for pids in before.values() for p in pids if pid_alive(p)]
