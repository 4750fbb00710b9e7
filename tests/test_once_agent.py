"""`agent --once` beside a running agent: each of the three ways from a real agent process (answering,
killed, stopped, hung, refusing), and the pure rules of agent/export/once_agent.py."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from agent.config.loader import build_config
from agent.export.once import Status, overall
from agent.export.once_agent import (
    Answer,
    Check,
    Found,
    Source,
    component_check,
    find,
    idle_work,
    must_ask,
    pipeline_check,
)
from agent.observe.backlog import Counts
from agent.supervise.statelock import LOCK_FILE, LockProbe, StateLock, probe
from agent.todos import transactions as todos
from tests.helpers import AgentProcess, free_port, running_agent, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "once.schema.json").read_text())


def once(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """`agent --once --json` against this config: the exit code and the document (checked against the schema)."""
    out = subprocess.run([sys.executable, "-m", "agent", "--once", "--json", "--config", str(config), *args],
                         capture_output=True, text=True, timeout=60, cwd=config.parent)
    assert out.stdout, out.stderr
    doc = json.loads(out.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["exit_code"] == out.returncode
    return out.returncode, doc


def checks(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in doc["checks"]}


def backlog(tmp_path: Path) -> dict[str, Any]:
    return {"sources": [{"kind": "sqlite", "path": str(tmp_path / "todos.db")}]}


def test_from_the_agent_an_open_circuit_is_critical_for_an_essential_component_and_a_warning_otherwise(
        tmp_path: Path) -> None:
    crash = {"command": ["sh", "-c", "exit 3"],
             "restart": {"max_restarts": 1, "circuit_cooldown": 600, "backoff": {"initial": 0.01}}}
    cfg = {"components": {"core": {**crash, "essential": True}, "extra": crash,
                          "fine": {"command": ["sleep", "1000"], "essential": True}}}
    with running_agent(tmp_path, cfg) as agent:
        wait_for(lambda: all(agent.status()[n]["circuit"] == "open" for n in ("core", "extra")), 10,
                 what="both circuits to open")
        code, doc = once(agent.config_path)
    assert (code, doc["source"], doc["agent"]["state"]) == (2, "agent", "running"), doc
    found = checks(doc)
    assert found["component core"]["status"] == "CRITICAL"
    assert found["component extra"]["status"] == "WARNING"
    assert found["component fine"] == {"name": "component fine", "status": "OK", "detail": "1/1 healthy"}
    assert "circuit open after" in found["component core"]["detail"]
    assert "trial start at" in found["component core"]["detail"]
    core = doc["components"]["core"]
    assert (core["ok"], core["circuit"], core["desired"], core["running"]) == (False, "open", 1, 0)
    assert core["circuit_until"] > time.time() + 500
    assert agent.proc is not None and doc["agent"]["pid"] == agent.proc.pid


def test_work_waiting_with_its_only_worker_at_zero_replicas_is_a_warning(tmp_path: Path) -> None:
    # Tried as a new user would: --once said OK with todo_worker at 0 replicas and a todo waiting.
    todos.add(tmp_path / "todos.db", "waits", "high", [])
    cfg = {"components": {"todo_worker": {"command": ["sleep", "1000"], "capabilities": ["todo_processing"],
                                          "replicas": {"min": 0, "max": 2, "initial": 0}}},
           "backlog": backlog(tmp_path)}
    with running_agent(tmp_path, cfg) as agent:
        code, doc = once(agent.config_path)
        assert code == 1, doc
        waiting = checks(doc)["waiting any"]
        assert waiting["status"] == "WARNING"
        assert waiting["detail"] == ("1 pending todo(s) need no capability (any), served only by todo_worker, "
                                     "at 0 running replicas")
        assert checks(doc)["component todo_worker"]["status"] == "OK"  # 0 desired is no failure in itself
        agent.api("POST", "/api/v1/components/todo_worker/scale", {"replicas": 1})
        wait_for(lambda: agent.status()["todo_worker"]["replicas"] == 1, 10)
        code, doc = once(agent.config_path)
    assert code == 0 and "waiting any" not in checks(doc), doc


def test_a_killed_agent_is_critical_not_running(tmp_path: Path) -> None:
    cfg = {"components": {"w": {"command": ["sleep", "1000"]}}, "backlog": backlog(tmp_path)}
    todos.add(tmp_path / "todos.db", "x", "normal", [])
    agent = AgentProcess(tmp_path, cfg).start()
    pid = agent.proc.pid if agent.proc else 0
    agent.stop(signal.SIGKILL)
    code, doc = once(agent.config_path)
    assert (code, doc["source"], doc["agent"]["state"], doc["agent"]["pid"]) == (2, "agent-down", "not-running", pid)
    said = checks(doc)["agent"]
    assert said["status"] == "CRITICAL" and said["detail"].startswith(
        f"the agent is not running: state dir {agent.state_dir} was last held by pid {pid}, which is gone, "
        f"and cannot reach the agent at {agent.url} ("), said
    assert said["detail"].endswith("; no component is supervised") and doc["agent"]["url"] == agent.url
    assert doc["components"] == {"w": None}  # probed directly (it has no probe)


def test_a_cleanly_stopped_agent_is_checked_directly_not_critical(tmp_path: Path) -> None:
    cfg = {"components": {"w": {"command": ["sleep", "1000"]}}, "backlog": backlog(tmp_path)}
    todos.add(tmp_path / "todos.db", "x", "normal", [])
    agent = AgentProcess(tmp_path, cfg).start()
    assert agent.stop(signal.SIGTERM) == 0
    code, doc = once(agent.config_path)
    assert (code, doc["source"], doc["agent"]["state"]) == (0, "direct", "stopped"), doc
    assert doc["agent"]["stopped_at"] > time.time() - 60
    assert "the agent was stopped at " in checks(doc)["agent"]["detail"]
    # The next start takes the dir again and clears the mark.
    with running_agent(tmp_path, cfg) as again:
        assert probe(again.state_dir).stopped_at is None
        code, doc = once(again.config_path)
        assert doc["source"] == "agent"


def test_a_state_dir_never_used_is_checked_directly(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"agent": {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "st")},
                                      "components": {"w": {"command": ["x"]}}, "backlog": backlog(tmp_path)}))
    todos.add(tmp_path / "todos.db", "x", "normal", [])
    code, doc = once(config)
    assert (code, doc["source"], doc["agent"]["state"], doc["agent"]["url"]) == (0, "direct", "never-ran", None)
    assert not (tmp_path / "st").exists()  # --once writes nothing, not even the state dir


def test_an_agent_that_holds_the_lock_but_does_not_answer_is_critical(tmp_path: Path) -> None:
    cfg = {"components": {"w": {"command": ["sleep", "1000"]}}}
    with running_agent(tmp_path, cfg) as agent:
        assert agent.proc is not None
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            code, doc = once(agent.config_path)
            took = time.monotonic() - started
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
    assert (code, doc["source"], doc["agent"]["state"]) == (2, "agent-down", "not-answering"), doc
    detail = checks(doc)["agent"]["detail"]
    assert f"is locked by pid {agent.proc.pid}" in detail and "no answer within 3s" in detail, detail
    assert took < 15, took  # the short timeout, not a hang


def test_a_refused_control_token_is_unknown_and_says_what_was_refused(tmp_path: Path) -> None:
    cfg: dict[str, Any] = {"components": {"w": {"command": ["sleep", "1000"]}}}
    with running_agent(tmp_path, cfg) as agent:
        wrong = tmp_path / "wrong.token"
        wrong.write_text("not-the-token\n")
        other = yaml.safe_load(agent.config_path.read_text())
        other["agent"]["control_token_file"] = str(wrong)
        config = tmp_path / "other.yaml"
        config.write_text(yaml.safe_dump(other))
        code, doc = once(config)
    assert (code, doc["source"], doc["agent"]["state"]) == (3, "agent-down", "refused"), doc
    assert "refused the control token (401" in checks(doc)["agent"]["detail"]


def test_a_silent_alert_pipeline_is_critical(tmp_path: Path) -> None:
    cfg = {"agent": {"webhook": {"heartbeat_timeout": "1s"}},
           "components": {"w": {"command": ["sleep", "1000"]}}}
    with running_agent(tmp_path, cfg) as agent:
        wait_for(lambda: agent.api("GET", "/api/v1/status")["alert_pipeline"]["up"] is False, 10,
                 what="the pipeline to go silent")
        code, doc = once(agent.config_path)
    assert code == 2, doc
    pipeline = checks(doc)["alert pipeline"]
    assert pipeline["status"] == "CRITICAL" and pipeline["detail"].startswith("silent since "), pipeline
    assert doc["alert_pipeline"]["up"] is False and doc["alert_pipeline"]["timeout_seconds"] == 1


def test_textfile_says_the_source(tmp_path: Path) -> None:
    cfg = {"components": {"w": {"command": ["sleep", "1000"]}}, "backlog": backlog(tmp_path)}
    todos.add(tmp_path / "todos.db", "x", "normal", [])
    agent = AgentProcess(tmp_path, cfg).start()
    agent.stop(signal.SIGKILL)
    out = subprocess.run([sys.executable, "-m", "agent", "--once", "--format", "prometheus", "--config",
                          str(agent.config_path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2
    assert 'orchestrator_check_source{source="agent-down"} 1.0' in out.stdout
    assert "orchestrator_check_status 2.0" in out.stdout


# --- the lock file, read without taking it ---------------------------------------------------------


def test_probe_reads_a_held_lock_without_taking_it_and_a_clean_release_marks_the_stop(tmp_path: Path) -> None:
    assert probe(tmp_path) == LockProbe(False, False, None, None, None)
    lock = StateLock.take(tmp_path)
    seen = probe(tmp_path)
    assert (seen.exists, seen.held, seen.pid, seen.alive, seen.stopped_at) == (True, True, os.getpid(), True, None)
    # Probing took nothing: another open file description can still not lock it.
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    lock.release()
    seen = probe(tmp_path)
    assert (seen.held, seen.pid) == (False, os.getpid()) and seen.stopped_at is not None
    assert abs(seen.stopped_at - time.time()) < 60


def test_a_failed_start_leaves_no_stop_mark(tmp_path: Path) -> None:
    StateLock.take(tmp_path).release(stopped=False)
    seen = probe(tmp_path)
    assert (seen.held, seen.pid, seen.stopped_at) == (False, os.getpid(), None)


# --- the rules, pure ----------------------------------------------------------------------------------


def lock(**kw: Any) -> LockProbe:
    return LockProbe(**{"exists": True, "held": False, "pid": 4242, "alive": False, "stopped_at": None, **kw})


@pytest.mark.parametrize(("probed", "asked", "found", "source", "status"), [
    (lock(exists=False, held=False, pid=None, alive=None), False, Found.NEVER_RAN, Source.DIRECT, Status.OK),
    (lock(stopped_at=1.0), False, Found.STOPPED, Source.DIRECT, Status.OK),
    # A lock without a stop mark: the agent is asked; when it does not answer, the lock says which.
    (lock(), True, Found.NOT_RUNNING, Source.AGENT_DOWN, Status.CRITICAL),
    (lock(pid=None, alive=None), True, Found.NOT_RUNNING, Source.AGENT_DOWN, Status.CRITICAL),
    (lock(held=None), True, Found.NOT_RUNNING, Source.AGENT_DOWN, Status.CRITICAL),
    (lock(alive=True), True, Found.NOT_ANSWERING, Source.AGENT_DOWN, Status.CRITICAL),  # or a reused pid
    (lock(held=True, alive=True), True, Found.NOT_ANSWERING, Source.AGENT_DOWN, Status.CRITICAL),
    (lock(held=None, alive=True), True, Found.NOT_ANSWERING, Source.AGENT_DOWN, Status.CRITICAL),
    (lock(held=None, pid=None, alive=None, error="cannot read"), True, Found.UNKNOWN, Source.AGENT_DOWN,
     Status.UNKNOWN),
])
def test_the_three_ways(probed: LockProbe, asked: bool, found: Found, source: Source, status: Status) -> None:
    assert must_ask(probed) is asked
    answer = Answer("http://x", error="no answer") if asked else None
    finding = find(Path("/s"), probed, answer, time.time())
    assert (finding.found, finding.source, finding.check.status) == (found, source, status)


def test_an_answer_wins_and_a_refusal_is_unknown() -> None:
    held = lock(held=True, alive=True)
    assert find(Path("/s"), held, Answer("u", status={"components": []}), 0).found is Found.RUNNING
    refused = find(Path("/s"), held, Answer("u", error="401", refused=True), 0)
    assert (refused.found, refused.check.status) == (Found.REFUSED, Status.UNKNOWN)


def test_a_lock_listed_free_does_not_say_the_agent_is_down_without_asking_it() -> None:
    """/proc/locks lists only the locks of its PID namespace, and its device can differ from st_dev (btrfs,
    overlayfs): a lock it lists free, or a recorded pid it cannot see, is no proof. The agent is asked."""
    for probed in (lock(), lock(held=None), lock(alive=True)):
        assert must_ask(probed)
        finding = find(Path("/s"), probed, Answer("http://x", status={"components": [], "node": "n1"}), 0)
        assert (finding.found, finding.source, finding.check.status) == (Found.RUNNING, Source.AGENT, Status.OK)


def row(**kw: Any) -> dict[str, Any]:
    return {"component": "c", "desired": 1, "replicas": 1, "healthy": 1, "circuit": "closed", "state": "running",
            "manual_stop": False, "external": False, "instances": [], **kw}


@pytest.mark.parametrize(("values", "essential", "status"), [
    ({}, True, Status.OK),
    ({"healthy": 0, "state": "unhealthy"}, True, Status.CRITICAL),
    ({"healthy": 0, "state": "unhealthy"}, False, Status.WARNING),
    ({"healthy": 0, "instances": [{"state": "starting"}]}, True, Status.WARNING),
    ({"healthy": 0, "replicas": 0, "manual_stop": True}, True, Status.OK),
    ({"desired": 0, "replicas": 0, "healthy": 0}, True, Status.OK),
    ({"circuit": "open", "healthy": 0, "replicas": 0}, False, Status.WARNING),
    ({"external": True, "healthy": 0}, True, Status.CRITICAL),
    ({"external": True, "desired": 0, "healthy": 0}, True, Status.OK),
])
def test_component_rule(values: dict[str, Any], essential: bool, status: Status) -> None:
    assert component_check(row(**values), essential, time.time()).status is status


def test_pipeline_rule() -> None:
    now = time.time()
    up = pipeline_check({"up": True, "timeout_seconds": 180.0, "last_heartbeat": now, "heartbeats": 3}, now)
    assert up.status is Status.OK and "3 received" in up.detail
    silent = pipeline_check({"up": False, "timeout_seconds": 180.0, "last_heartbeat": None,
                             "silent_since": now - 200, "heartbeats": 0}, now)
    assert silent.status is Status.CRITICAL and silent.detail.startswith("silent since ")


def test_idle_work_names_the_capability_and_only_its_idle_servers() -> None:
    config = build_config({"components": {
        "worker": {"command": ["x"], "capabilities": ["todo_processing", "analysis"]},
        "llm": {"command": ["x"], "capabilities": ["ai_inference"]}}}, env={})
    counts = Counts()
    counts.add("pending", "high", ["analysis"], None, 2)
    counts.add("pending", "low", ["ai_inference"], None)
    counts.add("pending", "low", ["unknown"], None)  # no component serves it: not this check's
    counts.add("in_progress", "low", ["analysis"], None)
    rows = [{"component": "worker", "replicas": 0}, {"component": "llm", "replicas": 1}]
    assert idle_work(config, rows, counts) == [
        Check("waiting analysis", Status.WARNING,
              "2 pending todo(s) need analysis, served only by worker, at 0 running replicas")]


def test_critical_outranks_unknown_which_outranks_warning() -> None:
    def worst(*statuses: Status) -> Status:
        return overall([Check(str(i), s, "") for i, s in enumerate(statuses)], True)

    assert worst(Status.WARNING, Status.UNKNOWN) is Status.UNKNOWN
    assert worst(Status.UNKNOWN, Status.CRITICAL) is Status.CRITICAL
    assert worst(Status.OK) is Status.OK


def test_the_schema_names_every_source_and_agent_state() -> None:
    props = SCHEMA["properties"]
    assert props["source"]["enum"] == [s.value for s in (Source.AGENT, Source.DIRECT, Source.AGENT_DOWN)]
    assert set(props["agent"]["properties"]["state"]["enum"]) == {f.value for f in Found}
    once_md = (ROOT / "docs" / "once.md").read_text()
    assert all(f"`{f.value}`" in once_md for f in Found) and all(f"`{s.value}`" in once_md for s in Source)
