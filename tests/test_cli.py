"""The operator CLI against real agents, as a script or a person at a terminal uses it (issue 13).

Every control verb takes `--json` after the verb and prints a line for people without it; exit codes
say done (0), refused with what lifts it (1), usage (2), unreachable (3); a closed stdout ends quietly;
piped tables keep every cell whole; completion offers verbs and the running agent's components.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli.status_view import pipeline_line, status_page_line
from agent.config.units import clock
from tests.helpers import AgentProcess, free_port, running_agent, wait_for

PY = sys.executable
LONG = "web_server_with_a_name_longer_than_a_table_cell_allows"


def cli(agent: AgentProcess | None, *args: str, cwd: Path | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`agent ARGS -c <the agent's config>` as a subprocess, stdout and stderr captured (so: not a terminal)."""
    config = ["-c", str(agent.config_path)] if agent is not None else []
    return subprocess.run([PY, "-m", "agent", *args, *config], capture_output=True, text=True, timeout=60,
                          cwd=cwd or (agent.dir if agent else None), **kw)


def ok(out: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert out.returncode == code, f"exit {out.returncode}, wanted {code}\n{out.stdout}\n{out.stderr}"
    assert "Traceback" not in out.stderr, out.stderr
    return out


def components(tmp: Path) -> dict[str, Any]:
    return {
        "db": {"command": ["sleep", "100000"]},
        LONG: {"command": ["sleep", "100000"], "depends_on": ["db"],
               "probe": {"exec": {"command": ["sh", "-c", "echo the cache is cold >&2; exit 1"]},
                         "interval": 0.1, "failure_threshold": 1, "restart": False}},
        "idle": {"command": ["sleep", "100000"], "replicas": {"min": 0, "max": 3, "initial": 2}},
    }


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("cli")
    proc = AgentProcess(tmp, {"agent": {"resources": {"interval": 0.1}}, "components": components(tmp)})
    proc.start()
    try:
        wait_for(lambda: all(c["pids"] for c in proc.status().values()), 10, 0.02, "every component running")
        yield proc
    finally:
        proc.stop()


# --- --json everywhere, a line for people without it -----------------------------------------------


@pytest.mark.parametrize("args", [
    ("status",), ("status", "db"), ("history",), ("history", "--component", "db"), ("autonomy",),
    ("scale", "idle", "2"), ("restart", "db"), ("start", "idle"), ("config", "show"),
])
def test_every_verb_takes_json_after_it_and_a_line_without(agent: AgentProcess, args: tuple[str, ...]) -> None:
    doc = json.loads(ok(cli(agent, *args, "--json")).stdout)
    assert isinstance(doc, dict) and doc
    human = ok(cli(agent, *args)).stdout
    assert human.strip()
    with pytest.raises(ValueError):
        json.loads(human)


def test_simulate_and_todo_take_json_after_the_verb(agent: AgentProcess, tmp_path: Path) -> None:
    payload = tmp_path / "alert.json"
    payload.write_text(json.dumps({"version": "4", "status": "firing", "receiver": "agent", "groupKey": "k",
                                   "alerts": [{"status": "firing", "fingerprint": "f1",
                                               "labels": {"alertname": "X", "component": "db", "action": "restart"},
                                               "annotations": {}, "startsAt": "2025-01-01T00:00:00Z"}]}))
    doc = json.loads(ok(cli(agent, "simulate", str(payload), "--json")).stdout)
    assert doc["results"][0]["component"] == "db"
    assert "X [firing] db restart: would" in ok(cli(agent, "simulate", str(payload))).stdout

    db = str(tmp_path / "todos.db")
    added = json.loads(ok(cli(None, "todo", "--db", db, "add", "write the docs", "--json")).stdout)
    listed = json.loads(ok(cli(None, "todo", "--db", db, "list", "--json")).stdout)
    assert [t["id"] for t in listed] == [added["id"]]
    assert json.loads(ok(cli(None, "todo", "--db", db, "--json", "list")).stdout) == listed  # before it, as before
    assert json.loads(ok(cli(None, "todo", "--db", db, "done", str(added["id"]), "--json")).stdout) == \
        {"id": added["id"], "status": "done"}
    piped = ok(cli(None, "todo", "--db", db, "list")).stdout.splitlines()
    assert piped[0].split("\t")[0] == "id" and piped[1].split("\t")[-1] == "write the docs"


def test_component_verbs_print_what_they_did(agent: AgentProcess) -> None:
    assert ok(cli(agent, "scale", "idle", "3")).stdout.strip() == "idle: desired replicas 2 -> 3"
    assert ok(cli(agent, "scale", "idle", "2")).stdout.strip() == "idle: desired replicas 3 -> 2"
    assert ok(cli(agent, "restart", "db", "--replica", "0")).stdout.strip() == "db: restarted 1 replica(s)"
    assert ok(cli(agent, "autonomy", "on")).stdout.strip() == "autonomy on"


# --- exit codes --------------------------------------------------------------------------------------


def test_a_refused_restart_exits_1_with_the_reason_and_the_fix(tmp_path: Path) -> None:
    with running_agent(tmp_path, {"components": {"w": {"command": ["sleep", "100000"]}}}) as agent:
        wait_for(lambda: agent.status()["w"]["pids"], 10, 0.02, "w running")
        ok(cli(agent, "emergency-stop", "--yes"))
        out = ok(cli(agent, "restart", "w"), 1)
        assert "emergency stop in force" in out.stderr and "`agent autonomy on` lifts it" in out.stderr
        answer = json.loads(ok(cli(agent, "restart", "w", "--json"), 1).stdout)
        assert answer["exit_code"] == 1 and "emergency stop in force" in answer["error"]
        assert not agent.status()["w"]["pids"]
        history = agent.api("GET", "/api/v1/history?component=w")["history"]
        assert history[-1]["action"] == "restart" and history[-1]["result"] == "rejected"

        ok(cli(agent, "autonomy", "on"))  # lifts the emergency stop; w stays stopped by hand
        out = ok(cli(agent, "restart", "w"), 1)
        assert "stopped by hand" in out.stderr and "`agent start w`" in out.stderr
        ok(cli(agent, "start", "w"))
        wait_for(lambda: agent.status()["w"]["pids"], 10, 0.02, "w started")
        assert ok(cli(agent, "restart", "w")).stdout.strip() == "w: restarted 1 replica(s)"


def test_an_unreachable_agent_exits_3_and_a_json_caller_still_gets_json(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 32)
    where = ("--url", f"http://127.0.0.1:{free_port()}", "--token-file", str(token))
    out = ok(cli(None, "status", *where), 3)
    assert "cannot reach the agent" in out.stderr
    doc = json.loads(ok(cli(None, "restart", "w", *where, "--json"), 3).stdout)
    assert doc["exit_code"] == 3 and "cannot reach" in doc["error"]


def test_unknown_names_list_the_known_ones_and_a_close_one(agent: AgentProcess) -> None:
    for verb in (("restart", "dbb"), ("stop", "dbb"), ("status", "dbb"), ("scale", "dbb", "1")):
        out = ok(cli(agent, *verb), 2)
        assert "unknown component 'dbb' (did you mean 'db'?)" in out.stderr, out.stderr
        assert f"known: db, idle, {LONG}" in out.stderr
    assert "did you mean" not in ok(cli(agent, "restart", "zzzzzz"), 2).stderr


def test_a_mistyped_verb_gets_a_did_you_mean() -> None:
    out = ok(cli(None, "stauts"), 2)
    assert "invalid choice: 'stauts' (did you mean 'status'?)" in out.stderr
    assert "__complete" not in out.stderr  # the hidden verb is not offered
    out = ok(cli(None, "todo", "lsit"), 2)
    assert "did you mean 'list'?" in out.stderr


# --- pipes ---------------------------------------------------------------------------------------------


def into_closed_pipe(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdout a pipe whose reader has already gone (as `| head -c 10` is, soon)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([PY, "-m", "agent", *args, "-c", str(agent.config_path)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60, cwd=agent.dir)
    finally:
        os.close(write)
    return proc


@pytest.mark.parametrize("args", [("status", "--json"), ("status",), ("history", "--json"), ("config", "show")])
def test_no_traceback_into_a_closed_pipe(agent: AgentProcess, args: tuple[str, ...]) -> None:
    out = into_closed_pipe(agent, *args)
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert out.stderr == ""
    assert out.returncode == 141  # as a shell reports a program ended by SIGPIPE


def test_head_of_a_piped_status_in_a_shell(agent: AgentProcess) -> None:
    command = (f"{shlex.quote(PY)} -m agent status --json -c {shlex.quote(str(agent.config_path))} "
               "| head -c 10; echo; for i in 1 2 3; do "
               f"{shlex.quote(PY)} -m agent history --json --limit 10000 -c {shlex.quote(str(agent.config_path))}"
               " | head -c 1; done")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=agent.dir)
    assert out.stdout.startswith("{\n  \"node\"")
    assert "Traceback" not in out.stderr and "Error" not in out.stderr, out.stderr


def test_piped_status_keeps_names_whole_and_blanks_figures_of_stopped_components(agent: AgentProcess) -> None:
    ok(cli(agent, "stop", "idle"))
    try:
        wait_for(lambda: agent.status()[LONG]["rss_bytes"], 10, 0.05, "a resource sample of the long one")
        doc = agent.api("GET", "/api/v1/status")
        idle = next(c for c in doc["components"] if c["component"] == "idle")
        assert (idle["uptime_seconds"], idle["cpu_seconds"], idle["rss_bytes"], idle["pids"]) == (None, None, None, [])
        lines = ok(cli(agent, "status")).stdout.splitlines()
        header = lines[1].split("\t")
        assert header[:2] == ["component", "state"]
        rows = {cells[0]: dict(zip(header, cells, strict=True))
                for cells in (line.split("\t") for line in lines[2:]) if len(cells) == len(header)}
        assert set(rows) == {"db", LONG, "idle"}
        assert rows["idle"]["state"] == "stopped (manual)"
        assert (rows["idle"]["uptime"], rows["idle"]["CPU s"], rows["idle"]["RSS"]) == ("", "", "")
        assert rows[LONG]["RSS"].endswith("iB") and rows[LONG]["uptime"].endswith("s")
        assert lines[-1].startswith("containment: ")
    finally:
        ok(cli(agent, "start", "idle"))


# --- agent status NAME -----------------------------------------------------------------------------


def test_status_of_one_component(agent: AgentProcess) -> None:
    wait_for(lambda: agent.status()[LONG]["last_probe_error"], 10, 0.05, "a failed probe of the long one")
    ok(cli(agent, "restart", LONG))
    doc = json.loads(ok(cli(agent, "status", LONG, "--json")).stdout)
    assert doc["component"] == LONG
    assert "exit code 1" in doc["last_probe_error"]["message"]
    [replica] = doc["instances"]
    assert replica["replica"] == 0 and replica["pid"] == doc["pids"][0] and replica["ready"] is False
    assert replica["state"] in ("starting", "running")
    assert doc["history"] and {e["component"] for e in doc["history"]} == {LONG}
    assert doc["history"][-1]["action"] == "restart"

    text = ok(cli(agent, "status", LONG)).stdout
    assert text.startswith(f"{LONG}: ")
    assert f"last probe error: {doc['last_probe_error']['message']}" in text
    assert f"0\t{replica['pid']}\t" in text or f"0\t{doc['pids'][0]}\t" in text
    assert "\tmanual\t" + LONG + "\trestart\texecuted\t" in text


# --- completion, config show -------------------------------------------------------------------------


def complete(tmp_path: Path, *words: str) -> list[str]:
    """What the bash completion offers for the command line `agent WORDS` (the last word is being typed)."""
    script = tmp_path / "agent-completion.bash"
    script.write_text(ok(cli(None, "completion", "bash")).stdout)
    program = tmp_path / "agent"  # the program the user typed: the script calls it back for names
    program.write_text(f"#!/bin/sh\nexec {shlex.quote(PY)} -m agent \"$@\"\n")
    program.chmod(0o755)
    line = " ".join(shlex.quote(w) for w in (str(program), *words))
    harness = (f"source {shlex.quote(str(script))}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
               "_agent_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", harness], capture_output=True, text=True,
                         timeout=60, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


def test_bash_completion_offers_verbs_options_and_the_running_agents_components(
        agent: AgentProcess, tmp_path: Path) -> None:
    verbs = complete(tmp_path, "")
    assert {"status", "restart", "stop", "reload", "config", "completion", "todo"} <= set(verbs)
    assert "__complete" not in verbs
    assert complete(tmp_path, "res") == ["restart"]
    assert "--all-at-once" in complete(tmp_path, "restart", "--")
    assert set(complete(tmp_path, "autonomy", "")) == {"on", "off", "dry-run"}
    # A config naming only where the agent is: the names can come from nowhere but the running agent.
    where = tmp_path / "where.yaml"
    where.write_text(yaml.safe_dump({"agent": {"listen": f"127.0.0.1:{agent.port}",
                                               "state_dir": str(agent.state_dir)}}))
    assert set(complete(tmp_path, "-c", str(where), "restart", "")) == {"db", LONG, "idle"}
    assert complete(tmp_path, "stop", "-c", str(where), "we") == [LONG]
    # No agent there: nothing is offered and nothing is printed into the command line.
    gone = tmp_path / "gone.yaml"
    gone.write_text(yaml.safe_dump({"agent": {"listen": f"127.0.0.1:{free_port()}", "state_dir": str(tmp_path)}}))
    assert complete(tmp_path, "-c", str(gone), "restart", "") == []


def test_zsh_completion_script(tmp_path: Path) -> None:
    script = ok(cli(None, "completion", "zsh")).stdout
    assert script.startswith("#compdef agent") and "compdef _agent agent" in script
    assert "__complete components" in script and " restart " in script
    zsh = subprocess.run(["sh", "-c", "command -v zsh"], capture_output=True, text=True).stdout.strip()
    if zsh:
        path = tmp_path / "_agent"
        path.write_text(script)
        ok(subprocess.run([zsh, "-n", str(path)], capture_output=True, text=True, timeout=30))


def test_config_show_prints_the_effective_config_and_its_hash(agent: AgentProcess, tmp_path: Path) -> None:
    status_hash = agent.api("GET", "/api/v1/status")["config"]["hash"]
    doc = json.loads(ok(cli(agent, "config", "show", "--json")).stdout)
    assert doc["hash"] == status_hash
    assert doc["config"]["components"]["db"]["stop"] == {"signal": "SIGTERM", "grace": 10.0}  # defaults filled in
    text = ok(cli(agent, "config", "show")).stdout
    assert f"# hash: {status_hash}" in text
    assert yaml.safe_load(text) == doc["config"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("components: {x: {command: [true], replicas: {min: 5, max: 1}}}\n")
    assert "invalid config" in ok(subprocess.run([PY, "-m", "agent", "config", "show", "-c", str(bad)],
                                                 capture_output=True, text=True, timeout=60), 2).stderr


# --- dependents ----------------------------------------------------------------------------------------


def test_stop_and_start_lines_name_dependents_and_dependencies() -> None:
    from agent.cli.control import _started, _stopped

    # The agent's answers with the fields the API gives for dependents (issue 13, the runas part).
    assert _stopped({"component": "db", "stopped": True, "dependents_running": ["web", "api"]}) == (
        "db: stopped; automation leaves it stopped until `agent start db`\n"
        "still running and depending on db: web, api (`agent stop db --with-dependents` stops them first)")
    assert _stopped({"component": "db", "stopped": True}).count("\n") == 0
    assert _started({"component": "web", "desired": 1, "started_dependencies": ["db"]}).splitlines() == [
        "started first (it depends on them): db", "web: started (1 replica(s) desired)"]


def test_stop_with_dependents_flag_reaches_the_agent(tmp_path: Path) -> None:
    comps = {"db": {"command": ["sleep", "100000"]},
             "web": {"command": ["sleep", "100000"], "depends_on": ["db"]}}
    with running_agent(tmp_path, {"components": comps}) as agent:
        wait_for(lambda: all(c["pids"] for c in agent.status().values()), 10, 0.02, "both running")
        answer = json.loads(ok(cli(agent, "stop", "db", "--json")).stdout)
        assert answer["dependents_running"] == ["web"], answer
        ok(cli(agent, "start", "db"))
        out = ok(cli(agent, "stop", "db", "--with-dependents"))
        assert "web" in out.stdout
        status = agent.status()
        assert not status["web"]["pids"] and not status["db"]["pids"]


# --- terminals: progress, console logs ----------------------------------------------------------------


def read_pty(fd: int, until: float) -> bytes:
    """Everything written to a pty's master until `until` (monotonic) or its slave side closes."""
    out = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], max(0.0, until - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every slave descriptor closed
            break
        if not chunk:
            break
        out += chunk
    return out


def test_a_slow_restart_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    slow = {"command": ["sh", "-c", "trap '' TERM; sleep 100000 & wait"], "stop": {"grace": "1s"}}
    with running_agent(tmp_path, {"components": {"slow": slow}}) as agent:
        wait_for(lambda: agent.status()["slow"]["pids"], 10, 0.02, "slow running")
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen([PY, "-m", "agent", "restart", "slow", "-c", str(agent.config_path)],
                                    stdout=subprocess.PIPE, stderr=slave, text=True, cwd=tmp_path)
            os.close(slave)
            terminal = read_pty(master, time.monotonic() + 30)
            stdout, _ = proc.communicate(timeout=30)
        finally:
            os.close(master)
        assert proc.returncode == 0
        assert b"restarting slow" in terminal
        assert stdout.strip() == "slow: restarted 1 replica(s)"
        piped = ok(cli(agent, "restart", "slow"))
        assert piped.stderr == "" and piped.stdout.strip() == "slow: restarted 1 replica(s)"


def run_on_a_terminal(tmp_path: Path, *extra: str) -> tuple[str, str]:
    """`agent run` with stderr on a terminal, on a port already taken: it logs why and exits 3.
    Returns (what the terminal showed, the agent.log file)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump({"agent": {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "s"),
                                                    "log_dir": str(tmp_path / "logs")}, "components": {}}))
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen([PY, "-m", "agent", "run", "-c", str(config), *extra],
                                    stdout=subprocess.DEVNULL, stderr=slave, cwd=tmp_path)
            os.close(slave)
            shown = read_pty(master, time.monotonic() + 30).decode(errors="replace")
            assert proc.wait(30) == 3, shown
        finally:
            os.close(master)
    return shown, (tmp_path / "logs" / "agent.log").read_text()


def test_agent_run_logs_readable_lines_on_a_terminal_and_json_to_its_file(tmp_path: Path) -> None:
    shown, logged = run_on_a_terminal(tmp_path)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert any(" ERROR   agent: cannot listen on 127.0.0.1:" in line for line in lines), shown
    assert not any(line.lstrip().startswith("{") for line in lines), shown
    records = [json.loads(line) for line in logged.splitlines()]
    assert any("cannot listen" in r["msg"] and r["level"] == "error" for r in records)


def test_agent_run_log_format_json_on_a_terminal_and_console_into_a_file(tmp_path: Path) -> None:
    (tmp_path / "tty").mkdir()
    shown, _ = run_on_a_terminal(tmp_path / "tty", "--log-format", "json")
    records = [json.loads(line) for line in shown.splitlines() if line.strip()]
    assert any("cannot listen" in r["msg"] for r in records)
    # Not a terminal (a file): JSON unless asked for console lines.
    (tmp_path / "file").mkdir()
    with running_agent(tmp_path / "file", {"components": {}}, "--log-format", "console") as agent:
        wait_for(lambda: "listening on" in agent.log_text(), 10, 0.02, "the listening line")
        text = agent.log_text()
        assert " INFO    agent: agent " in text and "listening on http://127.0.0.1:" in text
        assert not text.lstrip().startswith("{")
        assert all(json.loads(line) for line in (agent.log_dir / "agent.log").read_text().splitlines())


# --- times and lines as `agent status` prints them (in process) ------------------------------------------

def local(*when: int) -> float:
    """Epoch seconds of a local time (year, month, day, hour, minute, second)."""
    return time.mktime((*when, 0, 0, -1))


def test_a_clock_time_of_today_is_hh_mm_ss_and_of_another_day_has_its_date() -> None:
    now = local(2026, 3, 2, 9, 0, 0)
    assert clock(local(2026, 3, 2, 0, 0, 1), now) == "00:00:01"
    assert clock(local(2026, 3, 1, 23, 59, 59), now) == "2026-03-01 23:59:59"
    assert clock(local(2025, 3, 2, 9, 0, 0), now) == "2025-03-02 09:00:00"  # the same day of another year
    assert clock(local(2026, 3, 3, 8, 0, 0), now) == "2026-03-03 08:00:00"  # a circuit's end tomorrow


def test_agent_status_dates_a_silence_that_began_yesterday() -> None:
    now = local(2026, 3, 2, 9, 0, 0)
    since = local(2026, 3, 1, 14, 2, 11)
    line = pipeline_line({"up": False, "timeout_seconds": 180.0, "last_heartbeat": since,
                          "silent_since": since, "heartbeats": 4}, now)
    assert line.startswith("alert pipeline: SILENT since 2026-03-01 14:02:11 (68269s ago; heartbeat_timeout 180s)")


def test_agent_status_says_how_old_the_failed_read_of_prometheus_is() -> None:
    page = {"prometheus_url": "http://127.0.0.1:9", "alerts_error": "GET http://127.0.0.1:9/api/v1/alerts: x",
            "alerts_checked_at": 1000.0, "alerts_failures": 3}
    assert status_page_line(page, 1012.4) == ("status page: cannot read alerts from Prometheus (3 failed read(s)): "
                                              "GET http://127.0.0.1:9/api/v1/alerts: x (last read 12s ago)")
    assert status_page_line({**page, "alerts_checked_at": None}, 1012.4).endswith("/api/v1/alerts: x")
    assert status_page_line({**page, "alerts_error": None}) == "" and status_page_line(None) == ""
