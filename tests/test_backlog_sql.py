"""Backlog source kind `sql`: one read-only query over another system's job table, on a real PostgreSQL
(tests/pgserver.py, the session's server, a database per test) and on SQLite: statuses through
`status_map`, unmapped and malformed rows counted, a query without `count`, a query that writes, and a
query that runs past its timeout."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import ValidationError

from agent.config.sources import Backlog, BacklogSource, Priority, Status
from agent.export.collectors import BacklogCollector
from agent.export.exposition import render
from agent.observe.backlog import BacklogMonitor, SourceStatus
from agent.observe.httpclient import HttpClient
from agent.observe.queues import count_rows
from agent.todos.row import PRIORITIES, STATUSES
from tests.metricsutil import parse, value

STATUS_MAP = {"todo": "pending", "doing": "in_progress", "succeeded": "done", "failed": "failed"}
# (status, queue, count): procrastinate's statuses, two of them not mapped.
JOBS = [("todo", "gpu", 3), ("todo", "cpu", 1), ("doing", "gpu", 2), ("succeeded", "cpu", 4), ("cancelled", "cpu", 1),
        ("aborted", "gpu", 2)]
GROUPED = "SELECT status, queue AS capability, count(*) AS count, min(created) AS created_at FROM jobs " \
          "GROUP BY status, queue"


class Db:
    """One job table, in SQLite or PostgreSQL, and sources that query it."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where

    def run(self, *statements: str) -> None:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.where)
            with conn:
                for statement in statements:
                    conn.execute(statement)
            conn.close()
        else:
            import psycopg

            with psycopg.connect(self.where, autocommit=True) as pg:
                for statement in statements:
                    pg.execute(statement)  # type: ignore[arg-type]

    def rows(self) -> int:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.where)
            n: int = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            conn.close()
            return n
        import psycopg

        with psycopg.connect(self.where) as pg:
            row = pg.execute("SELECT count(*) FROM jobs").fetchone()
            assert row is not None
            return int(row[0])

    def source(self, query: str, **extra: Any) -> BacklogSource:
        place = {"path": self.where} if self.kind == "sqlite" else {"dsn": self.where}
        return BacklogSource.model_validate({"kind": "sql", "name": "jobs", "query": query, **place, **extra})


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    """The job table with JOBS in it; created_at of the gpu todos an hour ago."""
    if request.param == "sqlite":
        out = Db("sqlite", str(tmp_path / "jobs.db"))
        out.run("CREATE TABLE jobs (id INTEGER PRIMARY KEY, status TEXT, queue TEXT, created REAL)")
    else:
        server = request.getfixturevalue("pg_server")
        name = "sql_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-50:]
        out = Db("postgres", server.database(name))
        out.run("CREATE TYPE job_status AS ENUM ('todo', 'doing', 'succeeded', 'failed', 'cancelled', 'aborted')",
                "CREATE TABLE jobs (id serial PRIMARY KEY, status job_status, queue text, created timestamptz)")
    hour_ago = time.time() - 3600
    for status, queue, n in JOBS:
        created = hour_ago if queue == "gpu" else time.time()
        stamp = repr(created) if out.kind == "sqlite" else f"to_timestamp({created!r})"
        out.run(*[f"INSERT INTO jobs (status, queue, created) VALUES ('{status}', '{queue}', {stamp})"] * n)
    return out


def read(monitor: BacklogMonitor, served: tuple[str, ...] = ("gpu", "cpu")) -> tuple[SourceStatus, dict[Any, float]]:
    """Read every source once through BacklogMonitor.read; the first source's status and the scrape."""
    async def once() -> bytes:
        await monitor.read_all()
        return render(BacklogCollector(monitor, served).families(), False)

    text = asyncio.run(once())
    return next(iter(monitor.sources.values())), parse(text.decode())


def monitor_of(spec: BacklogSource) -> BacklogMonitor:
    return BacklogMonitor([spec], HttpClient())  # never used: no http source


def test_statuses_go_through_the_status_map_and_unmapped_rows_are_counted_and_logged_once(
        db: Db, caplog: pytest.LogCaptureFixture) -> None:
    monitor = monitor_of(db.source(GROUPED, status_map=STATUS_MAP))
    with caplog.at_level(logging.WARNING, logger="agent.backlog"):
        status, s = read(monitor)
    assert status.up, status.error
    assert dict(status.counts.by_key) == {("pending", "normal", "gpu"): 3, ("pending", "normal", "cpu"): 1,
                                          ("in_progress", "normal", "gpu"): 2, ("done", "normal", "cpu"): 4}
    assert value(s, "orchestrator_todo_unmapped_rows", source="jobs") == 3  # 1 cancelled, 2 aborted todos
    assert value(s, "orchestrator_todo_invalid_rows", source="jobs") == 0
    assert value(s, "orchestrator_todo_backlog", status="pending", priority="normal", capability="gpu") == 3
    age = value(s, "orchestrator_todo_oldest_pending_age_seconds", priority="normal")
    assert age == pytest.approx(3600, abs=120)  # from the gpu todos' created_at
    lines = sorted(r.getMessage() for r in caplog.records)
    assert len(lines) == 2 and "status 'aborted' is not in status_map; 2 todo(s)" in lines[0], lines
    assert "status 'cancelled' is not in status_map; 1 todo(s)" in lines[1], lines
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.backlog"):
        read(monitor)  # still unmapped: not logged again
        db.run("DELETE FROM jobs WHERE status IN ('cancelled', 'aborted')")
        _, s = read(monitor)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert value(s, "orchestrator_todo_unmapped_rows", source="jobs") == 0
    # Without a status_map the canonical statuses and their aliases are read as the other sources read them.
    status, _ = read(monitor_of(db.source("SELECT status, count(*) AS count FROM jobs GROUP BY status")))
    assert dict(status.counts.by_key) == {("pending", "normal", "any"): 4}  # `todo` is an alias of pending
    assert status.counts.unmapped == 6  # `doing` and `succeeded` are not


def test_malformed_rows_are_skipped_counted_and_logged_once_per_kind(
        db: Db, caplog: pytest.LogCaptureFixture) -> None:
    if db.kind == "sqlite":
        bad_capability, good_capability = "5", "'gpu,cpu'"
    else:
        bad_capability, good_capability = "ARRAY['']", "ARRAY['gpu', 'cpu']"
    query = (f"SELECT 'todo' AS status, 'high' AS priority, {good_capability} AS capability, 4 AS count "
             f"UNION ALL SELECT 'todo', 'high', {good_capability}, -1 "
             f"UNION ALL SELECT 'todo', 'high', {good_capability}, 1.5 "
             f"UNION ALL SELECT 'todo', 'high', {good_capability}, NULL "
             f"UNION ALL SELECT 'todo', 'whenever', {good_capability}, 2 "
             f"UNION ALL SELECT 'todo', 'high', {bad_capability}, 2 "
             f"UNION ALL SELECT NULL, 'high', {good_capability}, 2")
    monitor = monitor_of(db.source(query, status_map=STATUS_MAP))
    with caplog.at_level(logging.WARNING, logger="agent.backlog"):
        status, s = read(monitor)
    assert status.up, status.error
    assert dict(status.counts.by_key) == {("pending", "high", "gpu"): 4, ("pending", "high", "cpu"): 4}
    assert value(s, "orchestrator_todo_invalid_rows", source="jobs") == 6
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 6 and all("(6 malformed row(s) in this read" in m for m in said), said  # one per kind
    assert "row 2: count must not be negative (got " in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.backlog"):
        read(monitor)
    assert not caplog.records  # the same faults again: logged once while they last
    assert set(status.counts.problems) == {"count must not be negative", "count must be a whole number",
                                           "count must not be null", "priority is not one of low, normal, high, "
                                           "critical", "status must not be null",
                                           "capabilities[] must not be empty" if db.kind == "postgres"
                                           else "capabilities must be a list of names or a comma-separated string"}


def test_a_query_without_a_count_column_or_with_an_unknown_one_takes_the_source_down(db: Db) -> None:
    status, s = read(monitor_of(db.source("SELECT status, count(*) AS n FROM jobs GROUP BY status")))
    assert not status.up
    assert "the query returned no `count` column (its columns: status, n)" in status.error, status.error
    assert value(s, "orchestrator_todo_source_up", source="jobs") == 0
    status, _ = read(monitor_of(db.source("SELECT status, count(*) AS count, 'x' AS capabilty FROM jobs "
                                          "GROUP BY status")))
    assert not status.up and "columns it does not read: capabilty" in status.error, status.error


def test_a_status_map_without_a_status_column_takes_the_source_down(db: Db) -> None:
    # Every row would count as pending and the map would go unused without a word.
    spec = db.source("SELECT count(*) AS count FROM jobs").model_copy(update={"status_map": {"todo": "pending"}})
    status, _ = read(monitor_of(spec))
    assert not status.up
    assert "has a status_map but the query returned no `status` column (its columns: count)" in status.error


def test_postgres_epoch_seconds_count_as_created_at_and_sources_alike_are_refused() -> None:
    # EXTRACT(EPOCH ...) is numeric on PostgreSQL 14+, a Decimal in Python: Unix seconds, not a bad row.
    counts = count_rows(["status", "count", "created_at"], [("todo", 5, Decimal("1767261600.5"))], None, "x")
    assert counts.invalid == 0 and counts.by_key == {("pending", "normal", "any"): 5}
    assert counts.oldest_pending == {"normal": 1767261600.5}
    # Two sources with one label would be read as one (the agent keys sources by label).
    same = {"kind": "sql", "path": "jobs.db", "query": "SELECT count(*) AS count FROM jobs"}
    with pytest.raises(ValidationError) as err:
        Backlog.model_validate({"sources": [same, {**same, "query": "SELECT 1 AS count"}]})
    assert "sources 0 and 1 are both called 'sql:jobs.db': give each a different `name`" in str(err.value)


def test_a_query_that_writes_is_refused(db: Db) -> None:
    before = db.rows()
    writes = ["DELETE FROM jobs RETURNING 1 AS count", "UPDATE jobs SET status = 'failed' RETURNING 1 AS count",
              "SELECT 1 AS count; DELETE FROM jobs"]
    if db.kind == "postgres":
        writes.append("WITH gone AS (DELETE FROM jobs RETURNING 1) SELECT count(*) AS count FROM gone")
    else:
        writes.append("ATTACH DATABASE 'other.db' AS other")
    for query in writes:
        status, _ = read(monitor_of(db.source(query)))
        assert not status.up, query
        assert ("may only read" in status.error or "one statement" in status.error
                or "multiple commands" in status.error), status.error
    assert db.rows() == before


def test_a_query_past_its_timeout_takes_the_source_down_saying_so(db: Db) -> None:
    slow = ("SELECT count(*) AS count FROM pg_sleep(5)" if db.kind == "postgres" else
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) AS count FROM n")
    # The message is the cancellation's (PostgreSQL's statement_timeout, SQLite's progress handler): the
    # query never ended by itself (SQLite's never would).
    status, _ = read(monitor_of(db.source(slow, timeout=0.3)))
    assert not status.up
    assert "ran past the timeout of 0.3s" in status.error, status.error


def test_the_config_checks_a_sql_source_and_agent_once_reads_one(tmp_path: Path) -> None:
    assert get_args(Status) == STATUSES and get_args(Priority) == PRIORITIES  # the config's copies stay in step
    base = {"kind": "sql", "path": "jobs.db", "query": "SELECT 1 AS count"}
    for extra, said in [({"status_map": {"todo": "queued!"}}, "status_map.todo"),
                        ({"dsn": "postgresql://app@db.example/app"}, "either a dsn"),
                        ({"query": " "}, "query"), ({"url": "redis://h/0"}, "url and lease belong"),
                        ({"keys": [{"key": "celery"}]}, "keys belongs to a redis backlog source"),
                        ({"status_map": {}}, "must map at least one status"),
                        ({"dsn": "postgresql://app:pw@db/app", "path": None}, "must not carry a password")]:
        with pytest.raises(ValidationError) as err:
            BacklogSource.model_validate({**base, **extra})
        assert said in str(err.value), (extra, str(err.value))
    db = tmp_path / "jobs.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE jobs (status TEXT, queue TEXT)")
        conn.executemany("INSERT INTO jobs VALUES (?, ?)", [("todo", "gpu")] * 3 + [("lost", "gpu")])
    conn.close()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"components": {"w": {"command": ["x"], "capabilities": ["gpu"]}},
                                      "backlog": {"sources": [{
                                          "kind": "sql", "name": "jobs", "path": "jobs.db",  # relative to the file
                                          "query": "SELECT status, queue AS capability, count(*) AS count "
                                                   "FROM jobs GROUP BY status, queue",
                                          "status_map": STATUS_MAP}]}}))
    out = subprocess.run([sys.executable, "-m", "agent", "--once", "--json", "--config", str(config)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["backlog"]["sources"] == {"jobs": {"up": True, "error": None}}
    assert doc["backlog"]["counts"] == [{"status": "pending", "priority": "normal", "capability": "gpu", "count": 3}]
