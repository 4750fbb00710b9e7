"""A state dir has one owner: `agent run` takes an exclusive flock on `<state_dir>/lock` before anything
starts, holds it across `agent reexec`, and a second agent on the same dir is refused (exit 4) having
started nothing. Real agent processes; components are counted by a marker unique to the test.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from agent.daemon.app import EXIT_OWNED
from agent.supervise.statelock import LOCK_FILE
from tests.helpers import AgentProcess, pid_alive, start_time, wait_for


def marked(marker: str) -> list[int]:
    """Live processes whose command line carries `marker` (the components of this test, and only them)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in (proc.info["cmdline"] or []) and pid_alive(proc.pid):
            found.append(proc.pid)
    return sorted(found)


def new_marker() -> str:
    """A sleep duration no other process has: `sleep` forks nothing, so one process per replica."""
    return f"1000.{uuid.uuid4().int % 10**15:015d}"


def workers(marker: str, initial: int = 1) -> dict[str, Any]:
    return {"components": {"w": {"command": ["sleep", marker], "replicas": {"min": 1, "max": 4, "initial": initial}}}}


def reexec(agent: AgentProcess) -> None:
    """POST /-/reexec and wait until the new image serves."""
    first = start_time(agent.url)
    assert first is not None
    agent.api("POST", "/-/reexec", timeout=60)
    wait_for(lambda: (s := start_time(agent.url)) is not None and s > first, 30, 0.05, "the new image to serve")


def files(state_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in state_dir.iterdir() if p.is_file()}


def locked_by_someone(path: Path) -> bool:
    """True when another open file description holds the flock on `path` (tried from a fresh one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases it too, when it was had
    return False


def open_files(pid: int) -> dict[str, str]:
    """The process's descriptors and what each names; one closed between the listing and its readlink
    (a backlog read's, a client's socket) is left out."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
    return found


def second_agent(tmp: Path, state_dir: Path, config: dict[str, Any]) -> AgentProcess:
    """Another `agent run` (its own listen address, log dir and config file) on `state_dir`."""
    tmp.mkdir()
    config = {**config, "agent": {**config.get("agent", {}), "state_dir": str(state_dir)}}
    return AgentProcess(tmp, config).start(wait=False)


def refused(agent: AgentProcess, marker: str) -> int:
    """The exit code of an agent that must be refused; fails (naming what runs) if it is not."""
    assert agent.proc is not None
    wait_for(lambda: agent.proc is not None and agent.proc.poll() is not None, 30, 0.02,
             lambda: f"the second agent to be refused; it runs, with {len(marked(marker))} marked process(es)")
    agent.stderr.close()
    return agent.proc.returncode


def test_a_second_agent_on_the_same_state_dir_is_refused_and_starts_nothing(tmp_path: Path) -> None:
    marker = new_marker()
    (tmp_path / "a").mkdir()
    first = AgentProcess(tmp_path / "a", workers(marker)).start()
    second: AgentProcess | None = None
    try:
        first.api("POST", "/api/v1/components/w/scale", {"replicas": 2})
        wait_for(lambda: len(marked(marker)) == 2, 15, 0.05, "2 replicas running")
        wait_for(lambda: first.state()["components"]["w"]["desired"] == 2, 10, 0.05, "state.json written")
        wait_for(lambda: b"scale_to" in files(first.state_dir).get("history.jsonl", b""), 10, 0.05,
                 "the scale in history.jsonl")
        pids, before = marked(marker), files(first.state_dir)

        second = second_agent(tmp_path / "b", first.state_dir, workers(marker))
        code = refused(second, marker)
        assert code == EXIT_OWNED, second.log_text()
        said = second.log_text()
        assert f"state dir {first.state_dir} is owned by another agent (pid {first.proc.pid} holds" in said, said
        assert "nothing started" in said
        assert marked(marker) == pids  # no component started by the second agent
        assert files(first.state_dir) == before  # state.json, containment.json, tokens: untouched
        assert first.healthy()

        # The same config file again (the same listen address too): the state dir is checked first.
        again = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(first.config_path)],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path / "a")
        assert again.returncode == EXIT_OWNED, again.stderr
        assert f"(pid {first.proc.pid} holds" in again.stderr
        assert marked(marker) == pids and files(first.state_dir) == before
    finally:
        if second is not None and second.proc is not None and second.proc.poll() is None:
            second.stop()
        assert first.stop() == 0
    assert not marked(marker)


class LockProber(threading.Thread):
    """Tries to take the lock from a fresh open file description, over and over, until stopped."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.tries, self.taken = path, 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.001):
            self.tries += 1
            self.taken += not locked_by_someone(self.path)


def test_the_lock_is_held_across_reexec_without_a_gap(tmp_path: Path) -> None:
    marker = new_marker()
    (tmp_path / "a").mkdir()
    agent = AgentProcess(tmp_path / "a", workers(marker)).start()
    lock = agent.state_dir / LOCK_FILE
    prober = LockProber(lock)
    try:
        pids = wait_for(lambda: marked(marker), 15, 0.05, "the replica running")
        assert agent.proc is not None and lock.read_text().strip() == str(agent.proc.pid)
        prober.start()
        wait_for(lambda: prober.tries >= 10, 10, what="the prober to try")
        reexec(agent)
        prober.done.set()
        prober.join(10)
        # Not once free, from before the exec until the new image served: the inherited descriptor
        # kept the lock (flock belongs to the open file description), it was not taken again.
        assert prober.taken == 0 and prober.tries > 10, (prober.taken, prober.tries)
        assert "took over from agent" in agent.log_text() and agent.proc.poll() is None
        assert marked(marker) == pids
        held = [fd for fd, target in open_files(agent.proc.pid).items() if target == str(lock)]
        assert len(held) == 1, held  # adopted, not opened a second time
        # Held read-only: a disk with a file open for writing cannot be remounted read-only (test_state_files).
        flags = Path(f"/proc/{agent.proc.pid}/fdinfo/{held[0]}").read_text().split("flags:")[1].split()[0]
        assert int(flags, 8) & os.O_ACCMODE == os.O_RDONLY, flags

        second = second_agent(tmp_path / "b", agent.state_dir, workers(marker))
        assert refused(second, marker) == EXIT_OWNED, second.log_text()
        assert f"(pid {agent.proc.pid} holds" in second.log_text()
        assert marked(marker) == pids
        # The components never inherit it: none of their descriptors is the lock file.
        for pid in pids:
            assert str(lock) not in open_files(pid).values()
    finally:
        prober.done.set()
        assert agent.stop() == 0
    assert not locked_by_someone(lock)  # released at the clean stop


def test_a_reexec_onto_a_state_dir_another_agent_owns_keeps_the_previous_config(tmp_path: Path) -> None:
    marker = new_marker()
    (tmp_path / "a").mkdir()
    agent = AgentProcess(tmp_path / "a", workers(marker, 2)).start()
    other = second_agent(tmp_path / "b", tmp_path / "b" / "state", {"components": {}})
    try:
        wait_for(other.healthy, 15, 0.02, "the other agent to serve")
        pids = wait_for(lambda: len(p := marked(marker)) == 2 and p, 15, 0.05, "2 replicas running")
        theirs = files(other.state_dir)
        config = yaml.safe_load(agent.config_path.read_text())
        config["agent"]["state_dir"] = str(other.state_dir)
        agent.config_path.write_text(yaml.safe_dump(config))

        reexec(agent)
        said = agent.log_text()
        assert other.proc is not None
        assert f"state dir {other.state_dir} is owned by another agent (pid {other.proc.pid} holds" in said, said
        assert "running on the previous image's config instead" in said
        assert agent.proc is not None and agent.proc.poll() is None
        assert marked(marker) == pids  # kept running, adopted on the old config
        assert agent.api("GET", "/api/v1/status")["components"][0]["pids"] == pids  # its own token, old dir
        assert locked_by_someone(agent.state_dir / LOCK_FILE)  # it still owns its own dir
        assert files(other.state_dir) == theirs and other.healthy()  # the other agent's dir: untouched
        os.kill(pids[0], signal.SIGKILL)  # and it supervises: a killed replica comes back
        wait_for(lambda: len(p := marked(marker)) == 2 and pids[0] not in p, 15, 0.05, "the replica restarted")
    finally:
        assert agent.stop() == 0
        assert other.stop() == 0


def test_a_reexec_onto_a_new_state_dir_moves_the_lock(tmp_path: Path) -> None:
    marker = new_marker()
    (tmp_path / "a").mkdir()
    agent = AgentProcess(tmp_path / "a", workers(marker)).start()
    old, moved = agent.state_dir, tmp_path / "a" / "moved"
    try:
        pids = wait_for(lambda: marked(marker), 15, 0.05, "the replica running")
        old_token = (old / "control.token").read_text().strip()
        config = yaml.safe_load(agent.config_path.read_text())
        config["agent"]["state_dir"] = str(moved)
        agent.config_path.write_text(yaml.safe_dump(config))
        first = start_time(agent.url)
        r = httpx.post(agent.url + "/-/reexec", headers={"Authorization": f"Bearer {old_token}"}, timeout=60)
        assert r.status_code == 202, r.text
        wait_for(lambda: (s := start_time(agent.url)) is not None and first is not None and s > first, 30, 0.05,
                 "the new image to serve")
        agent.state_dir = moved
        assert "state dir moved from" in agent.log_text() and marked(marker) == pids
        assert agent.proc is not None
        assert locked_by_someone(moved / LOCK_FILE)
        assert (moved / LOCK_FILE).read_text().strip() == str(agent.proc.pid)
        assert not locked_by_someone(old / LOCK_FILE)  # the old dir is free: another agent may have it
    finally:
        assert agent.stop() == 0


def test_a_sigkilled_agents_lock_file_does_not_block_the_next_start(tmp_path: Path) -> None:
    marker = new_marker()
    agent = AgentProcess(tmp_path, workers(marker)).start()
    wait_for(lambda: marked(marker), 15, 0.05, "the replica running")
    assert agent.proc is not None
    dead = agent.proc.pid
    agent.proc.kill()
    agent.proc.wait(10)
    agent.stderr.close()
    lock = agent.state_dir / LOCK_FILE
    assert lock.read_text().strip() == str(dead)  # the file stays, naming a pid that is gone
    wait_for(lambda: not locked_by_someone(lock), 10, 0.02, "the kernel to drop the dead agent's lock")
    try:
        agent.start()  # the same state dir: not refused
        assert agent.proc.pid != dead
        assert lock.read_text().strip() == str(agent.proc.pid)
        wait_for(lambda: len(marked(marker)) == 1, 15, 0.05, "its replica running")
    finally:
        assert agent.stop() == 0


def test_check_config_and_once_do_not_take_the_lock(tmp_path: Path) -> None:
    # They read the config (and the state dir's token files) but own nothing: they run while an agent
    # holds the dir. Here the test holds it, and records no pid: the refusal finds it in /proc/locks.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"agent": {"state_dir": str(state), "log_dir": str(tmp_path / "logs")},
                                      "components": {"w": {"command": ["sleep", "1000"]}}}))
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        cli = [sys.executable, "-m", "agent"]
        check = subprocess.run([*cli, "-c", str(config), "check-config"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        once = subprocess.run([*cli, "-c", str(config), "--once", "--json"], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert once.returncode in (0, 1, 2, 3) and '"status"' in once.stdout, once.stdout + once.stderr
        assert "owned by another agent" not in once.stdout + once.stderr + check.stdout + check.stderr
        run = subprocess.run([*cli, "-c", str(config), "run"], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path)
        assert run.returncode == EXIT_OWNED, run.stderr
        assert f"state dir {state} is owned by another agent (pid {os.getpid()} holds" in run.stderr
        assert sorted(p.name for p in state.iterdir()) == [LOCK_FILE]  # nothing written by any of them
    finally:
        os.close(fd)
