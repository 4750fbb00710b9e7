"""The work-time flow counter: milliseconds from a todo's claim to its finish, added with `completed`,
on SQLite and on a real PostgreSQL, and exported as orchestrator_todo_source_work_seconds_total."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

from agent.todos.base import Finish
from agent.todos.store import open_store
from tests.helpers import running_agent, wait_for
from tests.metricsutil import scrape, value

CLOCK = 0.005  # seconds: PostgreSQL's clock_timestamp() and time.time() read the same host clock


def within(ms: int, earliest_start: float, latest_start: float, earliest_end: float, latest_end: float) -> bool:
    """Whether `ms` of work fits a claim made between the two starts and a finish between the two ends."""
    return math.floor((earliest_end - latest_start - CLOCK) * 1000) <= ms <= \
        math.ceil((latest_end - earliest_start + CLOCK) * 1000)


def renew_with_the_cli(cwd: Path, db: str, todo_id: int, token: str) -> None:
    """A renewal from another process: real work that takes a measurable time between claim and finish."""
    env = {k: v for k, v in os.environ.items() if k not in ("TODO_DB", "AGENT_CONFIG")}
    out = subprocess.run([sys.executable, "-m", "agent", "todo", "--db", db, "renew", str(todo_id), "--token", token,
                          "--lease", "2m"], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr


def set_claimed_at_null(db: str, todo_id: int) -> None:
    """What a claim by a version that recorded no claim time leaves behind."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("UPDATE todos SET claimed_at = NULL WHERE id = %s", (todo_id,))
    else:
        import sqlite3

        lite = sqlite3.connect(db)
        lite.execute("UPDATE todos SET claimed_at = NULL WHERE id = ?", (todo_id,))
        lite.commit()
        lite.close()


def test_work_time_runs_from_the_claim_to_the_finish_and_a_renewal_keeps_the_claim_time(
        todo_db: str, tmp_path: Path) -> None:
    with open_store(todo_db) as store:
        todo_id = store.add("measured", "normal", ["gpu"])
        t0 = time.time()
        todo = store.claim("w", ["gpu"], lease=60)
        t1 = time.time()
        assert todo is not None and todo.claim_token and todo.claimed_at is not None
        assert t0 - CLOCK <= todo.claimed_at <= t1 + CLOCK
        renew_with_the_cli(tmp_path, todo_db, todo_id, todo.claim_token)
        [held] = store.list()
        assert held.lease_expires_at is not None and held.lease_expires_at > todo.claimed_at + 100  # renewed: 2m
        assert held.claimed_at == todo.claimed_at  # a renewal does not restart the work
        t2 = time.time()
        assert store.finish(todo_id, "done", todo.claim_token) is Finish.OK
        t3 = time.time()
        flow = store.flow()
        [done] = store.list()
    worked = flow["work_ms"]["gpu"]
    assert within(worked, t0, t1, t2, t3), (worked, t1 - t0, t2 - t1, t3 - t2)
    assert worked >= 50  # the CLI process alone takes longer than that
    assert flow["completed"] == {"gpu": 1} and set(flow["work_ms"]) == {"gpu"}
    assert done.claimed_at == todo.claimed_at  # the finishing claim's time stays with the done todo


def test_an_expired_claim_goes_back_without_its_claim_time_and_the_next_claim_counts_from_itself(
        todo_db: str, tmp_path: Path) -> None:
    with open_store(todo_db) as store:
        todo_id = store.add("retried")
        first = store.claim("slow", lease=0.3)
        assert first is not None and first.claim_token and first.lease_expires_at is not None
        expires = first.lease_expires_at
        wait_for(lambda: time.time() > expires + CLOCK, 10, 0.01, "the first claim's lease to run out")
        [back] = store.list()  # the sweep puts it back
        assert (back.status, back.claimed_by, back.claimed_at) == ("pending", None, None)
        assert store.counters()["leases_expired"] == 1

        t0 = time.time()
        second = store.claim("fast", lease=60)
        t1 = time.time()
        assert second is not None and second.claim_token and second.claimed_at is not None
        assert second.claimed_at >= t0 - CLOCK
        # The first claimer's late completion is rejected and adds no work.
        assert store.finish(todo_id, "done", first.claim_token) is Finish.REJECTED
        assert store.flow()["work_ms"] == {}
        renew_with_the_cli(tmp_path, todo_db, todo_id, second.claim_token)
        t2 = time.time()
        assert store.finish(todo_id, "done", second.claim_token) is Finish.OK
        t3 = time.time()
        worked = store.flow()["work_ms"]["any"]
    assert within(worked, t0, t1, t2, t3), (worked, t1 - t0, t2 - t1, t3 - t2)
    # Counted from the first claim it would be at least t2 - first.claimed_at (which spans the first lease).
    assert first.claimed_at is not None and worked < (t2 - first.claimed_at - CLOCK) * 1000


def test_a_put_back_clears_the_claim_time_and_adds_nothing(todo_db: str) -> None:
    with open_store(todo_db) as store:
        todo_id = store.add("handed back")
        todo = store.claim("w", lease=60)
        assert todo is not None and todo.claim_token
        assert store.finish(todo_id, "pending", todo.claim_token) is Finish.OK
        [row] = store.list()
        assert (row.status, row.claimed_at) == ("pending", None)
        assert store.flow() == {"created": {"any": 1}, "completed": {}, "work_ms": {}}


def test_a_todo_claimed_without_a_claim_time_counts_completed_but_adds_no_work(todo_db: str) -> None:
    with open_store(todo_db) as store:
        todo_id = store.add("claimed by an older version")
        todo = store.claim("old", lease=60)
        assert todo is not None and todo.claim_token
        set_claimed_at_null(todo_db, todo_id)
        assert store.finish(todo_id, "done", todo.claim_token) is Finish.OK
        assert store.flow() == {"created": {"any": 1}, "completed": {"any": 1}, "work_ms": {}}


def test_a_running_agent_exports_the_work_seconds_of_a_real_workers_todos(todo_db: str, tmp_path: Path) -> None:
    """orchestrator_todo_source_work_seconds_total{source, capability} on /metrics, from 0 for every
    capability, then the seconds the demo worker spent on its todos (each at least its work time)."""
    spec = {"name": "jobs", "interval": 0.1, **({"kind": "postgres", "dsn": todo_db}
                                                 if todo_db.startswith("postgresql://")
                                                 else {"kind": "sqlite", "path": todo_db})}
    with open_store(todo_db) as store:
        store.list()  # the schema, so the source reads from the start
    name = "orchestrator_todo_source_work_seconds_total"
    with running_agent(tmp_path, {"backlog": {"sources": [spec]}}) as agent:
        wait_for(lambda: value(scrape(agent.url), name, source="jobs", capability="any") == 0, 20, 0.05,
                 f"{name} at 0 before any work")
        assert value(scrape(agent.url), name, source="jobs", capability="_other") == 0
        with open_store(todo_db) as store:
            store.add_many(["one", "two", "three"])
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "agent.demo.demo_worker", "--worker-id", "w", "--idle-poll",
                               "0.02", "--work-seconds", "0.2", "--max-todos", "3"],
                              env=dict(os.environ, TODO_DB=todo_db), capture_output=True, timeout=60)
        ended = time.time()
        assert proc.returncode == 0, proc.stderr
        with open_store(todo_db) as store:
            stored = store.flow()["work_ms"]["any"]
        assert 3 * 200 <= stored <= math.ceil((ended - started) * 1000)

        def exported() -> bool:
            samples = scrape(agent.url)
            return (value(samples, "orchestrator_todo_source_completed_total", source="jobs", capability="any") == 3
                    and value(samples, name, source="jobs", capability="any") == stored / 1000)

        wait_for(exported, 20, 0.05, f"{name} at {stored / 1000} with 3 completed")
