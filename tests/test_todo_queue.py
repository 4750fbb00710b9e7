"""The todo queue end to end, on SQLite and on a private PostgreSQL (real worker processes, real agents):
concurrent workers complete every todo once; a SIGKILLed worker's todo comes back after its lease and its
late completion is rejected; two agents reading one queue export it under the same source name."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.todos.base import Todo
from agent.todos.store import open_store
from tests.helpers import AgentProcess, running_agent, wait_for
from tests.metricsutil import scrape

DONE_LINE = re.compile(r"done todo (\d+) ")
# What a queue's identity is made of (read durations and timestamps differ per agent by nature).
QUEUE_SERIES = ("orchestrator_todo_source_backlog", "orchestrator_todo_leases_expired_total",
                "orchestrator_todo_completions_rejected_total")


def source(todo_db: str) -> dict[str, Any]:
    """The backlog source both agents read: one name, so its series are recognisably one queue."""
    spec: dict[str, Any] = {"name": "jobs", "interval": 0.1}
    if todo_db.startswith("postgresql://"):
        return {**spec, "kind": "postgres", "dsn": todo_db}
    return {**spec, "kind": "sqlite", "path": todo_db}


def worker(todo_db: str, log: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    """The demo worker; its store comes from TODO_DB in the environment, never from the command line."""
    env = dict(os.environ, TODO_DB=todo_db, PYTHONUNBUFFERED="1")
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "agent.demo.demo_worker", "--worker-id", name,
                                 "--idle-poll", "0.02", *args], env=env, stdout=out, stderr=out)


def rows(todo_db: str, status: str | None = None) -> list[Todo]:
    """The store's todos, through a store opened and closed again (a PostgreSQL pool is not left behind)."""
    with open_store(todo_db) as store:
        return store.list(status)


def jobs(agent: AgentProcess) -> dict[tuple[str, ...], float]:
    """The per-source series of source "jobs" on one agent: {(name, status, priority, capability): value}."""
    out = {}
    for (name, labels), value in scrape(agent.url).items():
        found = dict(labels)
        if found.get("source") == "jobs" and name in QUEUE_SERIES:
            out[(name, found.get("status", ""), found.get("priority", ""), found.get("capability", ""))] = value
    return out


def by_status(series: dict[tuple[str, ...], float], status: str) -> float:
    return sum(v for (name, st, _, _), v in series.items()
               if name == "orchestrator_todo_source_backlog" and st == status)


def test_three_worker_processes_complete_200_todos_once_each_and_two_agents_count_one_queue(
        todo_db: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_agent(tmp_path / "a", {"backlog": {"sources": [source(todo_db)]}}) as one, \
            running_agent(tmp_path / "b", {"backlog": {"sources": [source(todo_db)]}}) as two:
        logs = [tmp_path / f"worker{i}.log" for i in range(3)]
        # All three are polling before the first todo arrives, so they claim concurrently.
        workers = [worker(todo_db, log, f"w{i}", "--work-seconds", "0.01") for i, log in enumerate(logs)]
        try:
            wait_for(lambda: all("started" in log.read_text() for log in logs), 30, 0.02, "three workers polling")
            with open_store(todo_db) as store:
                ids = {store.add(f"todo {i}", ("low", "normal", "high", "critical")[i % 4]) for i in range(200)}
            wait_for(lambda: len(rows(todo_db, "done")) == 200, 120, 0.1, "200 todos done")
        finally:
            for proc in workers:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(30) for proc in workers]
        assert codes == [0, 0, 0]
        completions = collections.Counter(int(m.group(1)) for log in logs
                                          for m in DONE_LINE.finditer(log.read_text()))
        assert set(completions) == ids and set(completions.values()) == {1}  # every todo once, none twice
        assert sum(1 for log in logs if DONE_LINE.search(log.read_text())) >= 2  # they did share the work
        with open_store(todo_db) as store:
            finished = store.list(limit=1000)
            assert {t.status for t in finished} == {"done"} and {t.claimed_by for t in finished} <= {"w0", "w1", "w2"}
            assert store.counters() == {"leases_expired": 0, "completions_rejected": 0}

        def settled() -> bool:
            a, b = jobs(one), jobs(two)
            return by_status(a, "pending") == 0 and by_status(a, "done") == 200 and a == b

        # The backlog series reach 0 pending, and both agents export the queue as the same series.
        wait_for(settled, 20, 0.05, "both agents to export source=jobs with 0 pending and 200 done")
        series = jobs(one)
        assert series[("orchestrator_todo_leases_expired_total", "", "", "")] == 0
        assert series[("orchestrator_todo_completions_rejected_total", "", "", "")] == 0


def test_a_sigkilled_workers_todo_returns_after_its_lease_and_its_late_completion_is_rejected(
        todo_db: str, tmp_path: Path) -> None:
    with open_store(todo_db) as store:
        todo_id = store.add("survive a dead worker")
    with running_agent(tmp_path, {"backlog": {"sources": [source(todo_db)]}}) as agent:
        # The doomed worker renews its 1 s lease every half second while it "works" for ten minutes.
        doomed = worker(todo_db, tmp_path / "doomed.log", "doomed", "--work-seconds", "600", "--lease", "1")
        try:
            held = wait_for(lambda: [t for t in rows(todo_db, "in_progress")], 30, 0.02,
                            "the doomed worker to claim the todo")[0]
            assert held.id == todo_id and held.claimed_by == "doomed" and held.claim_token
            wait_for(lambda: (rows(todo_db, "in_progress") or [held])[0].lease_expires_at
                     > held.lease_expires_at, 10, 0.05, "a renewal of the lease")
        finally:
            doomed.send_signal(signal.SIGKILL)
            assert doomed.wait(10) == -signal.SIGKILL

        # After the lease: pending again (the agent's series say so before any worker sweeps it).
        wait_for(lambda: by_status(jobs(agent), "pending") == 1, 15, 0.05, "the todo to count as pending")
        heir = worker(todo_db, tmp_path / "heir.log", "heir", "--work-seconds", "0", "--max-todos", "1")
        assert heir.wait(60) == 0
        with open_store(todo_db) as store:
            [row] = store.list()
            assert row.status == "done" and row.claimed_by == "heir"

        # The dead worker's completion, arriving late with its old token, is rejected and counted.
        late = subprocess.run([sys.executable, "-m", "agent", "todo", "done", str(todo_id), "--token",
                               held.claim_token], env=dict(os.environ, TODO_DB=todo_db), capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
        assert late.returncode == 1 and "completion rejected" in late.stderr
        with open_store(todo_db) as store:
            assert store.list()[0].claimed_by == "heir"  # still recorded done once, by the heir
            assert store.counters() == {"leases_expired": 1, "completions_rejected": 1}

        def counted() -> bool:
            series = jobs(agent)
            return (series.get(("orchestrator_todo_leases_expired_total", "", "", "")) == 1
                    and series.get(("orchestrator_todo_completions_rejected_total", "", "", "")) == 1
                    and by_status(series, "done") == 1)

        wait_for(counted, 15, 0.05, "orchestrator_todo_leases_expired_total and _completions_rejected_total at 1")
