"""Containment: everything a replica started goes with it, under both mechanisms (cgroup v2 and
tracking by environment marker), whether the replica exits, is stopped, or the agent stops or dies.

Every component here carries a marker in its environment (`CHAOS_MARK`), so a leaked process is
found by scanning /proc, whatever session, group or parent it ended up in.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

from agent.supervise.cgroup import cgroup2_mount, own_cgroup
from bench.chaos import marked, proc_state
from tests.helpers import AgentProcess, running_agent, wait_for

DAEMON = "setsid sleep 100000 </dev/null >/dev/null 2>&1"
FAST = {"backoff": {"initial": 0.01, "max": 0.05}}


def config(containment: str, **components: dict[str, Any]) -> dict[str, Any]:
    return {"agent": {"containment": containment, "resources": {"interval": 0.5}}, "components": components}


def shell(command: str, mark: str, **extra: Any) -> dict[str, Any]:
    return {"command": command, "shell": True, "env": {"CHAOS_MARK": mark}, **extra}


def describe(pids: set[int]) -> str:
    """Each pid with its state and command line, for a failure message."""
    out = []
    for pid in sorted(pids):
        try:
            out.append(f"{pid} {proc_state(pid)} {' '.join(psutil.Process(pid).cmdline())!r}")
        except psutil.Error as exc:
            out.append(f"{pid} gone ({type(exc).__name__})")
    return "; ".join(out)


def guardian_of(agent: AgentProcess) -> int | None:
    assert agent.proc is not None
    for child in psutil.Process(agent.proc.pid).children():
        try:
            if "agent-guardian" in child.cmdline():
                return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def test_daemons_of_a_crash_looping_replica_are_gone_when_its_circuit_opens(tmp_path: Path, containment: str) -> None:
    # The issue's reproduction: each run leaves a daemon (setsid, or a double fork), then exits 1.
    mark = uuid.uuid4().hex
    comps = {
        "setsid": shell(f"{DAEMON} & sleep 0.3; exit 1", mark, restart={"max_restarts": 4, **FAST}),
        "double": shell(f"({DAEMON} &); sleep 0.3; exit 1", mark, restart={"max_restarts": 4, **FAST}),
    }
    with running_agent(tmp_path, config(containment, **comps)) as agent:
        wait_for(lambda: all(c["circuit"] == "open" for c in agent.status().values()), 15,
                 what="both circuits to open")
        wait_for(lambda: not marked(mark), 2, what=f"no daemon left (found {marked(mark)})")
        assert agent.log_text().count("exit code 1") == 10


def test_stop_start_and_agent_sigterm_end_every_daemon(tmp_path: Path, containment: str) -> None:
    mark = uuid.uuid4().hex
    comps = {"live": shell(f"{DAEMON} & ({DAEMON} &); exec sleep 100000", mark, replicas={"min": 2, "max": 2})}
    with running_agent(tmp_path, config(containment, **comps)) as agent:
        wait_for(lambda: len(marked(mark)) == 6, 5, what="two replicas with two daemons each")
        agent.api("POST", "/api/v1/components/live/stop")
        wait_for(lambda: not marked(mark), 2, what="stop to end the daemons too")
        agent.api("POST", "/api/v1/components/live/start")
        wait_for(lambda: len(marked(mark)) == 6, 5, what="the daemons of the restarted replicas")

        doc = agent.api("GET", "/api/v1/status")
        assert doc["containment"]["mechanism"] == containment
        metrics = httpx.get(agent.url + "/metrics").text
        assert f'orchestrator_containment_info{{mechanism="{containment}"}} 1.0' in metrics
        out = subprocess.run([sys.executable, "-m", "agent", "status", "--config", str(agent.config_path)],
                             capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert f"containment: {containment}" in out.stdout, out.stdout + out.stderr
        assert agent.stop(signal.SIGTERM) == 0
    assert not marked(mark), "a daemon outlived the agent's clean stop"


def test_daemons_die_with_a_sigkilled_agent(tmp_path: Path, containment: str) -> None:
    mark = uuid.uuid4().hex
    comps = {"a": shell(f"{DAEMON} & ({DAEMON} &); sleep 100000 & wait", mark)}
    agent = AgentProcess(tmp_path, config(containment, **comps)).start()
    wait_for(lambda: len(marked(mark)) == 4, 5, what="the shell, its sleep and two daemons")
    agent.stop(signal.SIGKILL)
    wait_for(lambda: not marked(mark), 3, what="the guardian to end every marked process")


def test_a_killed_guardian_is_restarted_and_still_covers_an_agent_crash(tmp_path: Path, containment: str) -> None:
    mark = uuid.uuid4().hex
    comps = {"trio": shell("sleep 100000 & sleep 100000 & wait", mark)}
    agent = AgentProcess(tmp_path, config(containment, **comps)).start()
    wait_for(lambda: len(marked(mark)) == 3, 5, what="the three processes of the component")
    first = guardian_of(agent)
    assert first is not None
    psutil.Process(first).kill()
    second = wait_for(lambda: (g := guardian_of(agent)) != first and g, 5, what="a new guardian")
    doc = agent.api("GET", "/api/v1/status")["containment"]
    assert (doc["guardian_pid"], doc["guardian_restarts"]) == (second, 1)
    assert "orchestrator_guardian_restarts_total 1.0" in httpx.get(agent.url + "/metrics").text
    agent.stop(signal.SIGKILL)
    wait_for(lambda: not marked(mark), 3, what="the new guardian to end all three processes")


def test_agent_sigkilled_mid_scale_and_mid_restart_leaves_nothing_and_restores(tmp_path: Path,
                                                                             containment: str) -> None:
    mark = uuid.uuid4().hex
    # Slow to stop: on SIGTERM it records which replica got it, then takes 5 s to exit.
    slow = shell(f"trap 'touch term.$AGENT_REPLICA.$$; sleep 5; exit 0' TERM; {DAEMON} & "
                 "sleep 100000 & wait", mark, replicas={"min": 0, "max": 4, "initial": 1},
                 stop={"grace": 10}, cwd=str(tmp_path))
    crash = {"command": ["sh", "-c", "exit 1"], "restart": {"max_restarts": 1, **FAST}}
    cfg = config(containment, slow=slow, crash=crash)

    def terms() -> list[Path]:
        return sorted(tmp_path.glob("term.*"))

    def in_background(agent: AgentProcess, path: str, body: Any = None) -> threading.Thread:
        def call() -> None:
            try:
                agent.api("POST", path, body, timeout=30)
            except httpx.HTTPError:
                pass  # the agent is SIGKILLed under this request
        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        return thread

    agent = AgentProcess(tmp_path, cfg).start()
    wait_for(lambda: agent.status()["crash"]["circuit"] == "open", 5, what="crash's circuit to open")
    agent.api("POST", "/api/v1/components/slow/scale", {"replicas": 4})
    wait_for(lambda: len(marked(mark)) == 12, 5, what="four replicas with a sleep and a daemon each")
    in_background(agent, "/api/v1/components/slow/scale", {"replicas": 1})
    wait_for(lambda: len(terms()) == 3, 5, what="three replicas stopping")
    agent.stop(signal.SIGKILL)
    wait_for(lambda: not marked(mark), 3, what="nothing of the old agent's components left (mid scale)")

    agent = AgentProcess(tmp_path, cfg).start()
    wait_for(lambda: len(marked(mark)) == 3, 15, what="one replica with its sleep and daemon")
    status = agent.status()
    assert (status["slow"]["desired"], status["slow"]["replicas"]) == (1, 1)
    assert status["crash"]["circuit"] == "open"
    for path in terms():
        path.unlink()
    in_background(agent, "/api/v1/components/slow/restart")
    wait_for(lambda: len(terms()) == 1, 5, what="the replica to be stopping for its restart")
    agent.stop(signal.SIGKILL)
    wait_for(lambda: not marked(mark), 3, what="nothing of the old agent's components left (mid restart)")

    with running_agent(tmp_path, cfg) as agent:
        wait_for(lambda: len(marked(mark)) == 3, 15, what="one replica with its sleep and daemon, restarted")
        assert agent.status()["slow"]["desired"] == 1


def test_leftovers_of_an_agent_killed_with_its_guardian_are_swept_at_the_next_start(
        tmp_path: Path, containment: str) -> None:
    mark = uuid.uuid4().hex
    cfg = config(containment, a=shell(f"{DAEMON} & sleep 100000 & wait", mark))
    agent = AgentProcess(tmp_path, cfg).start()
    def settled() -> set[int] | None:
        # The shell with its sleep and daemon, each past its exec: while a process execs, its environ
        # cannot be read for a moment, so a set taken earlier may miss one (it did once in CI).
        found = marked(mark)
        sleeps = [pid for pid in found if describe({pid}).endswith(" 'sleep 100000'")]
        return found if len(found) == 3 and len(sleeps) == 2 else None

    old = wait_for(settled, 5, what=lambda: f"the component's three processes, settled: {describe(marked(mark))}")
    guardian = guardian_of(agent)
    assert agent.proc is not None and guardian is not None
    agent.proc.send_signal(signal.SIGSTOP)  # so it cannot start a new guardian
    wait_for(lambda: proc_state(agent.proc.pid) == "T", 5, what="the agent to be stopped")
    psutil.Process(guardian).kill()
    agent.stop(signal.SIGKILL)
    # The shell dies of its parent-death signal; its sleep and daemon are left (nothing covered the crash).
    leftovers = wait_for(lambda: len(m := marked(mark) & old) == 2 and m, 10,
                         what=lambda: f"two leftovers of {describe(old)}")
    with running_agent(tmp_path, cfg) as agent:
        wait_for(lambda: not marked(mark) & old, 5, what=f"the next start to end {leftovers}")
        ended = [r["msg"] for r in agent.log_records() if "left by the previous agent" in r.get("msg", "")]
        assert ended and ended[0].startswith(f"ended {len(leftovers)} process(es)"), ended


def test_a_stalled_agent_does_not_let_the_stall_reset_backoff(tmp_path: Path) -> None:
    # Each run lasts 0.5 s, well under reset_after (3 s): every exit is one more failure in a row.
    comps = {"brief": {"command": "sleep 0.5; exit 1", "shell": True, "restart": {
        "max_restarts": 10_000, "backoff": {"initial": 0.05, "max": 0.05, "jitter": 0, "reset_after": 3}}}}
    with running_agent(tmp_path, config("auto", **comps)) as agent:
        def failures() -> list[int]:
            return [int(r["msg"].rsplit("(failure ", 1)[1].split()[0]) for r in agent.log_records()
                    if "restarts in" in r.get("msg", "")]

        def running_again() -> bool:
            msgs = [r["msg"] for r in agent.log_records() if "component brief" in r.get("msg", "")]
            return len(failures()) >= 2 and " started (pid " in msgs[-1]

        wait_for(running_again, 5, what="two restarts, and the third run under way")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)
        before = len(failures())
        threading.Event().wait(10)  # the stall itself: the child dies 0.5 s into it
        agent.proc.send_signal(signal.SIGCONT)
        after = wait_for(lambda: len(f := failures()) > before and f, 5, what="the exit to be reaped after SIGCONT")
        assert after[before] == after[before - 1] + 1, f"the stall reset the failure count: {after}"
        wait_for(lambda: len(failures()) > before + 1, 5, what="it to be restarted and fail again")
        assert any("did not run for" in r.get("msg", "") for r in agent.log_records())


def test_children_get_the_fd_limit_the_agent_started_with(tmp_path: Path) -> None:
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))

    comps = {"show": {"command": "ulimit -Sn > limits; ulimit -Hn >> limits; exec sleep 100000", "shell": True,
                      "cwd": str(tmp_path)}}
    agent = AgentProcess(tmp_path, config("auto", **comps)).start(preexec_fn=limits)
    try:
        path = tmp_path / "limits"
        wait_for(lambda: path.exists() and len(path.read_text().split()) == 2, 5, what="the child's limits")
        assert path.read_text().split() == ["1024", "4096"]  # what the agent was started with
        assert agent.proc is not None
        assert resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE) == (4096, 4096)  # the agent's own
    finally:
        agent.stop()


HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_the_cgroup2_mount_is_read_from_mountinfo_in_a_hybrid_layout(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(HYBRID)
    assert cgroup2_mount(str(tmp_path / "mountinfo")) == Path("/sys/fs/cgroup/unified")
    (tmp_path / "mountinfo").write_text(HYBRID.replace("cgroup2 cgroup2", "cgroup cgroup"))
    assert cgroup2_mount(str(tmp_path / "mountinfo")) is None
    (tmp_path / "cgroup").write_text("4:memory:/x\n0::/system.slice/agent.service\n")
    assert own_cgroup(str(tmp_path / "cgroup")) == "/system.slice/agent.service"
