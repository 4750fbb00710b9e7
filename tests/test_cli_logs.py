"""`agent logs` and the log lines `agent status NAME` ends with, against a real agent's files (issue 30).

`-n N` is the newest N lines of a component across its replicas (by the times the lines carry), not N per
replica file; the agent's own JSON log reads as one line per record, `--json` keeps it as written; `agent
status NAME` ends with the last lines, as `systemctl status` does, and never fails for want of them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.config.units import clock
from tests.helpers import AgentProcess, lines, running_agent, wait_for

PY = sys.executable
TALK_LINES = 40  # each replica of `talk` prints this many time-stamped lines, then idles
PLAIN_LINES = 8  # each replica of `plain` prints this many lines without a time

# Each replica prints lines that begin with a time (as a Python or Go logger would): replica r's line i at
# 14:00:00 + 3i + r seconds, so the three replicas' lines interleave in time, whenever each one started.
TALK = ("import datetime, os, time\n"
        "r = int(os.environ['AGENT_REPLICA'])\n"
        "start = datetime.datetime(2026, 3, 1, 14, 0, tzinfo=datetime.UTC)\n"
        f"for i in range({TALK_LINES}):\n"
        "    print((start + datetime.timedelta(seconds=3 * i + r)).isoformat(), 'replica', r, 'line', i, flush=True)\n"
        "time.sleep(100000)\n")
PLAIN = f"for i in $(seq {PLAIN_LINES}); do echo replica $AGENT_REPLICA line $i; done; exec sleep 100000"


def cli(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([PY, "-m", "agent", *args, "-c", str(agent.config_path)], capture_output=True, text=True,
                         timeout=60, cwd=agent.dir)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def ok(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout.splitlines()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("logs")
    config: dict[str, Any] = {"components": {
        "talk": {"command": [PY, "-c", TALK], "replicas": {"min": 3, "max": 3}},
        "plain": {"command": PLAIN, "shell": True, "replicas": {"min": 2, "max": 2}},
        "idle": {"command": ["sleep", "100000"], "replicas": {"min": 0, "max": 1, "initial": 0}},
    }}
    with running_agent(tmp, config) as proc:
        logs = proc.log_dir
        wait_for(lambda: all(len(lines(logs / f)) == TALK_LINES for f in ("talk.log", "talk.1.log", "talk.2.log"))
                 and all(len(lines(logs / f)) == PLAIN_LINES for f in ("plain.log", "plain.1.log")),
                 20, 0.02, "every replica's lines in its log")
        yield proc


def talk_lines(agent: AgentProcess) -> list[str]:
    """Every line of talk's three replicas, `[file] line`, in the order of the times they begin with."""
    found = [(line.split()[0], f"[{stem}] {line}") for stem in ("talk", "talk.1", "talk.2")
             for line in lines(agent.log_dir / f"{stem}.log")]
    return [shown for _, shown in sorted(found, key=lambda entry: entry[0])]


def test_n_counts_the_newest_lines_across_replicas_not_per_file(agent: AgentProcess) -> None:
    shown = ok(cli(agent, "logs", "talk", "-n", "7"))
    assert shown == talk_lines(agent)[-7:], shown
    # The newest seven, by the times the lines carry, from the three files in turn.
    assert [line.split(" ", 2)[0] + " " + line.rsplit(" ", 3)[1] for line in shown] == [
        "[talk.2] 2", "[talk] 0", "[talk.1] 1", "[talk.2] 2", "[talk] 0", "[talk.1] 1", "[talk.2] 2"], shown
    assert [line.rsplit(" ", 1)[1] for line in shown] == ["37", "38", "38", "38", "39", "39", "39"], shown


def test_json_prints_the_lines_as_written_and_replica_picks_one(agent: AgentProcess) -> None:
    raw = ok(cli(agent, "logs", "talk", "-n", "5", "--json"))
    assert raw == [line.split(" ", 1)[1] for line in talk_lines(agent)[-5:]]
    one = ok(cli(agent, "logs", "talk", "--replica", "1", "-n", "4"))
    assert one == lines(agent.log_dir / "talk.1.log")[-4:]
    missing = cli(agent, "logs", "talk", "--replica", "7")
    assert missing.returncode == 1
    assert f"no log file for replica 7 of talk in {agent.log_dir}" in missing.stderr


def test_lines_without_times_are_taken_in_turn_a_file_at_a_time(agent: AgentProcess) -> None:
    """No line says when it was written: the replicas' last lines are taken in turn (5 = 3 + 2) and shown a
    file at a time, the one written last at the end."""
    shown = ok(cli(agent, "logs", "plain", "-n", "5"))
    assert len(shown) == 5, shown
    blocks: dict[str, list[str]] = {}
    for line in shown:
        stem, text = line.split(" ", 1)
        blocks.setdefault(stem, []).append(text)
    stems = [line.split(" ", 1)[0] for line in shown]
    assert stems == sorted(stems, key=stems.index), f"not a file at a time: {shown}"
    assert sorted(len(block) for block in blocks.values()) == [2, 3], blocks
    for stem, block in blocks.items():
        assert block == lines(agent.log_dir / f"{stem[1:-1]}.log")[-len(block):]
    last = shown[-1].split(" ", 1)[0][1:-1]
    mtimes = {stem[1:-1]: (agent.log_dir / f"{stem[1:-1]}.log").stat().st_mtime for stem in blocks}
    assert mtimes[last] == max(mtimes.values()), mtimes
    # Without a time to merge by, -n still counts lines across the files, never per file.
    assert len(ok(cli(agent, "logs", "plain", "-n", "3"))) == 3


def test_status_name_ends_with_the_newest_log_lines(agent: AgentProcess) -> None:
    shown = ok(cli(agent, "status", "talk"))
    at = shown.index("log, last 10 line(s) (agent logs talk -n N for more):")
    assert shown[at - 1] == ""
    assert shown[at + 1:] == talk_lines(agent)[-10:]


def test_status_name_says_in_one_line_why_no_log_is_shown_and_succeeds(agent: AgentProcess) -> None:
    # `idle` never ran: there is no file.
    shown = ok(cli(agent, "status", "idle"))
    assert shown[-2:] == ["", f"log: no file for idle in {agent.log_dir}"], shown
    # A file that cannot be read (a directory in its place): one line saying so, and the verb succeeds.
    blocked = agent.log_dir / "idle.log"
    blocked.mkdir()
    try:
        shown = ok(cli(agent, "status", "idle"))
    finally:
        blocked.rmdir()
    assert shown[-2] == "" and shown[-1].startswith(f"log: cannot read {blocked}: "), shown
    assert sum(line.startswith("log") for line in shown) == 1
    # Named by its URL, with no config given: the log dir found here may be another agent's.
    env = {k: v for k, v in os.environ.items() if k not in ("AGENT_CONFIG", "AGENT_URL")}
    by_url = subprocess.run([PY, "-m", "agent", "status", "talk", "--url", agent.url, "--token-file",
                             str(agent.state_dir / "control.token")], capture_output=True, text=True, timeout=60,
                            cwd=agent.dir, env=env)
    shown = ok(by_url)
    assert shown[0].startswith("talk: running"), shown
    assert shown[-2:] == ["", "log: not shown: the agent was named by its URL; -c its config to show its log here"]


_READABLE = re.compile(r"^((?:\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d\.\d{3}) "
                       r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) +(\S+): (.*)$")


def test_agent_log_reads_as_lines_for_people_and_json_keeps_it(tmp_path: Path) -> None:
    """`agent logs agent`: local time, level, logger, message, then the record's other fields as key=value
    (a manual restart's audit line has them); `--json` prints the records as the file holds them."""
    config = {"components": {"web": {"command": ["sleep", "100000"]}}}
    with running_agent(tmp_path, config) as agent:
        ok(cli(agent, "restart", "web"))
        wait_for(lambda: any('"audit": true' in line for line in lines(agent.log_dir / "agent.log")), 10, 0.02,
                 "the restart's audit line in agent.log")
    records = lines(agent.log_dir / "agent.log")  # the agent stopped: the file holds its last line
    raw = ok(cli(agent, "logs", "agent", "-n", "12", "--json"))
    assert raw == records[-12:]
    shown = ok(cli(agent, "logs", "agent", "-n", "12"))
    assert len(shown) == 12, shown
    for line, record in zip(shown, map(json.loads, raw), strict=True):
        match = _READABLE.match(line)
        assert match, line
        stamp, level, logger, rest = match.groups()
        assert (level, logger) == (record["level"].upper(), record["logger"]), line
        assert rest.startswith(record["msg"]), line
        when = datetime.fromisoformat(record["ts"]).timestamp()  # UTC in the file, local time on screen
        assert stamp == f"{clock(when)}.{record['ts'][20:23]}", (line, record["ts"])
    audit = next(line for line in shown if "decision executed restart on web" in line)
    assert " audit=true " in audit and " component=web " in audit and " source=cli " in audit, audit
    stopped = json.loads(raw[-1])
    assert shown[-1].endswith(f"INFO    {stopped['logger']}: {stopped['msg']}")
