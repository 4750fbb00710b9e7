"""The todo store's semantics, the same on SQLite and PostgreSQL (each test runs on both, real servers):
claims with leases and tokens, renewal, expiry back to pending, fencing of late completions, counters,
and an idempotent schema (an old SQLite file keeps working)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config.dsn import dsn_problem
from agent.observe import backlog
from agent.observe.httpclient import HttpClient
from agent.todos.base import Finish, StoreError
from agent.todos.store import open_store
from tests.helpers import wait_for


def read_counts(db: str) -> backlog.Counts:
    """What the agent's backlog reader sees (read-only)."""
    if db.startswith("postgresql://"):
        return backlog.read_postgres(db, None, 5.0)
    return backlog.read_sqlite(Path(db), 5.0)


def pending(counts: backlog.Counts) -> int:
    return sum(n for (status, _, _), n in counts.by_key.items() if status == "pending")


def test_a_claim_carries_a_token_and_a_lease_and_only_that_token_completes(todo_db: str) -> None:
    with open_store(todo_db) as store:
        first = store.add("a", "low")
        urgent = store.add("b", "critical", ["gpu"])
        before = time.time()
        todo = store.claim("w1", ["cpu"], lease=60)
        assert todo is not None and todo.id == first and todo.claimed_by == "w1"  # the critical one needs a gpu
        assert todo.claim_token and len(todo.claim_token) == 32
        assert todo.lease_expires_at is not None and before + 55 < todo.lease_expires_at < time.time() + 65
        other = store.claim("w2", ["gpu"], lease=60)
        assert other is not None and other.id == urgent and other.claim_token != todo.claim_token
        assert store.claim("w3", None) is None

        assert store.finish(first, "done") is Finish.CLAIMED  # no token: refused while the lease is live
        assert store.finish(first, "done", "f" * 32) is Finish.REJECTED
        assert store.finish(first, "done", todo.claim_token) is Finish.OK
        assert store.finish(first, "done", todo.claim_token) is Finish.REJECTED  # once only
        assert store.finish(999, "done", todo.claim_token) is Finish.MISSING
        assert store.counters() == {"leases_expired": 0, "completions_rejected": 2}
        done = {t.id: t for t in store.list()}[first]
        assert done.status == "done" and done.claim_token is None and done.lease_expires_at is None
        assert store.finish(store.add("c"), "failed") is Finish.OK  # an unclaimed todo: no token needed


def test_an_expired_lease_puts_the_todo_back_and_fences_the_late_completion(todo_db: str) -> None:
    with open_store(todo_db) as store:
        todo_id = store.add("slow work")
        late = store.claim("dies", None, lease=0.3)
        assert late is not None and late.claim_token is not None
        # The reader counts it pending as soon as the lease runs out, before any worker sweeps it.
        wait_for(lambda: pending(read_counts(todo_db)) == 1, 10, 0.02, "the expired lease counted as pending")
        assert read_counts(todo_db).counters == {"leases_expired": 1, "completions_rejected": 0}
        assert store.renew(todo_id, late.claim_token, 60) is None  # too late to renew
        again = store.claim("lives", None, lease=60)
        assert again is not None and again.id == todo_id and again.claim_token != late.claim_token
        assert store.counters()["leases_expired"] == 1  # swept once, counted once
        assert store.finish(todo_id, "done", late.claim_token) is Finish.REJECTED
        assert store.finish(todo_id, "done", again.claim_token) is Finish.OK
        assert store.counters() == {"leases_expired": 1, "completions_rejected": 1}
        assert read_counts(todo_db).counters == {"leases_expired": 1, "completions_rejected": 1}
        [row] = store.list()
        assert row.status == "done" and row.claimed_by == "lives"


def test_renewing_keeps_the_todo_past_its_first_lease(todo_db: str) -> None:
    with open_store(todo_db) as store:
        store.add("long job")
        todo = store.claim("w", None, lease=0.5)
        assert todo is not None and todo.claim_token and todo.lease_expires_at
        renewed = store.renew(todo.id, todo.claim_token, 30)
        assert renewed is not None and renewed > todo.lease_expires_at + 20
        assert store.renew(todo.id, "0" * 32, 30) is None
        wait_for(lambda: time.time() > todo.lease_expires_at + 0.2, 5, 0.02, "the first lease's end")  # type: ignore[operator]
        assert store.claim("thief", None) is None  # still held: the renewal moved the lease
        assert store.finish(todo.id, "pending", todo.claim_token) is Finish.OK  # put back by its holder
        back = store.claim("next", None)
        assert back is not None and back.id == todo.id
        assert store.counters()["leases_expired"] == 0


def test_the_schema_is_created_once_and_opened_again_idempotently(todo_db: str) -> None:
    for _ in range(3):
        with open_store(todo_db) as store:
            store.add("x")
    with open_store(todo_db) as store:
        assert [t.title for t in store.list()] == ["x", "x", "x"]


def test_bad_arguments_name_what_is_wrong(todo_db: str) -> None:
    with open_store(todo_db) as store:
        with pytest.raises(ValueError, match="priority must be one of"):
            store.add("x", "urgent!")
        with pytest.raises(ValueError, match="lease must be more than 0"):
            store.claim("w", None, lease=0)
        with pytest.raises(ValueError, match="status must be done, failed or pending"):
            store.finish(1, "in_progress")


def test_an_old_sqlite_file_is_migrated_in_place_and_keeps_its_todos(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE todos (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending', priority TEXT NOT NULL DEFAULT 'normal',
            capabilities TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL, updated_at REAL NOT NULL,
            claimed_by TEXT);
        INSERT INTO todos (title, status, priority, capabilities, created_at, updated_at, claimed_by)
            VALUES ('from before', 'pending', 'high', '[]', 1, 1, NULL),
                   ('held by an old worker', 'in_progress', 'normal', '[]', 2, 2, 'old');
    """)
    conn.close()
    assert pending(read_counts(str(db))) == 1 and read_counts(str(db)).counters is None  # read before migration
    with open_store(str(db)) as store:
        todo = store.claim("w", None, lease=60)
        assert todo is not None and todo.title == "from before" and todo.claim_token
        # A todo claimed before leases existed has no token: finishing it needs none (as before).
        assert store.finish(2, "done") is Finish.OK
        assert store.finish(todo.id, "done", todo.claim_token) is Finish.OK
    columns = {row[1] for row in sqlite3.connect(db).execute("PRAGMA table_info(todos)")}
    assert {"claim_token", "lease_expires_at"} <= columns
    assert read_counts(str(db)).counters == {"leases_expired": 0, "completions_rejected": 0}


def test_a_dsn_with_a_password_is_refused_everywhere_without_showing_it(tmp_path: Path) -> None:
    assert dsn_problem("postgresql://todo@db.example/todos") is None
    for dsn in ("postgresql://todo:s3cret@db.example/todos", "host=db.example password=s3cret dbname=todos"):
        problem = dsn_problem(dsn)
        assert problem is not None and "must not carry a password" in problem and "s3cret" not in problem
        with pytest.raises(StoreError) as err:
            open_store(dsn)
        assert "s3cret" not in str(err.value) and "***" in str(err.value)
    out = subprocess.run([sys.executable, "-m", "agent", "todo", "--db", "postgresql://u:s3cret@h/d", "list"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and "must not carry a password" in out.stderr and "s3cret" not in out.stderr
    config = tmp_path / "agent.yaml"
    config.write_text("backlog: {sources: [{kind: postgres, dsn: 'postgresql://u:s3cret@h/d'}]}\n")
    out = subprocess.run([sys.executable, "-m", "agent", "check-config", str(config)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and "backlog.sources.0.dsn: must not carry a password" in out.stdout + out.stderr
    assert "s3cret" not in out.stdout + out.stderr


def agent_todo(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "todo", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env)


def test_agent_todo_claims_renews_and_completes_with_the_token_on_either_store(todo_db: str, tmp_path: Path) -> None:
    import json
    import os

    # The store and its default lease come from the config's backlog source (no --db on the command line).
    spec = ({"kind": "postgres", "dsn": todo_db} if todo_db.startswith("postgresql://")
            else {"kind": "sqlite", "path": todo_db})
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"backlog": {"sources": [{**spec, "name": "jobs", "lease": "90s"}]}}))
    env = {k: v for k, v in os.environ.items() if k not in ("TODO_DB", "AGENT_CONFIG")}
    assert agent_todo(tmp_path, "-c", str(config), "add", "cli job", "-p", "high", env=env).returncode == 0
    claimed = agent_todo(tmp_path, "-c", str(config), "claim", "--worker", "sh", env=env)
    assert claimed.returncode == 0
    todo_id, priority, token, title = claimed.stdout.rstrip("\n").split("\t")
    assert (priority, title, len(token)) == ("high", "cli job", 32)
    with open_store(todo_db) as store:
        [row] = store.list()
    assert row.claim_token == token and row.lease_expires_at is not None
    assert 80 < row.lease_expires_at - row.updated_at < 100  # the config's lease: 90 s

    renewed = agent_todo(tmp_path, "-c", str(config), "--json", "renew", todo_id, "--token", token, "--lease", "10m",
                         env=env)
    assert renewed.returncode == 0 and json.loads(renewed.stdout)["lease_expires_at"] > time.time() + 500
    refused = agent_todo(tmp_path, "-c", str(config), "renew", todo_id, "--token", "0" * 32, env=env)
    assert refused.returncode == 1 and "holds no live lease" in refused.stderr
    assert agent_todo(tmp_path, "-c", str(config), "done", todo_id, env=env).returncode == 1  # claimed: no token
    done = agent_todo(tmp_path, "-c", str(config), "done", todo_id, "--token", token, env=env)
    assert done.returncode == 0 and done.stdout.strip() == f"todo {todo_id}: done"
    with open_store(todo_db) as store:
        # Neither a refused renewal nor a tokenless `done` is a completion from a claim: nothing counted.
        assert store.counters() == {"leases_expired": 0, "completions_rejected": 0}


def test_flow_counters_count_arrivals_and_completions_once_per_capability(todo_db: str) -> None:
    """`created` on add, `completed` on the first done/failed (not a put-back, not a second finish);
    the same figures in the store and in what the agent's reader sees."""
    with open_store(todo_db) as store:
        assert store.flow() == {"created": {}, "completed": {}, "work_ms": {}}
        plain = store.add("plain")
        gpu = store.add("gpu", "high", ["gpu"])
        both = store.add("both", "normal", ["gpu", "cpu"])
        store.add("waits", "low", ["cpu"])
        todo = store.claim("w", ["gpu", "cpu"], lease=60)
        assert todo is not None and todo.id == gpu and todo.claim_token
        assert store.finish(gpu, "pending", todo.claim_token) is Finish.OK  # put back: not completed
        again = store.claim("w", ["gpu", "cpu"], lease=60)
        assert again is not None and again.id == gpu and again.claim_token
        assert store.finish(gpu, "done", again.claim_token) is Finish.OK
        assert store.finish(gpu, "done", again.claim_token) is Finish.REJECTED  # refused: not counted again
        assert store.finish(both, "failed") is Finish.OK  # failed leaves the queue too
        assert store.finish(both, "done") is Finish.OK  # failed -> done: already counted
        assert store.finish(plain, "done") is Finish.OK
        expected = {"created": {"any": 1, "gpu": 2, "cpu": 2}, "completed": {"any": 1, "gpu": 2, "cpu": 1}}
        flow = store.flow()
        # Work time only from the claim that finished gpu (the tokenless finishes had no claim).
        assert set(flow.pop("work_ms")) == {"gpu"}
        assert flow == expected
    read = read_counts(todo_db).flow
    assert read is not None and {key for key in read if key[0] == "work_seconds"} == {("work_seconds", "gpu")}
    assert {key: n for key, n in read.items() if key[0] != "work_seconds"} == \
        {(kind, cap): n for kind, caps in expected.items() for cap, n in caps.items()}


def test_flow_counters_are_exported_per_source_from_the_first_good_read(todo_db: str) -> None:
    """orchestrator_todo_source_created_total / _completed_total{source, capability}: every capability
    from 0, one no component serves under `_other`."""
    import asyncio

    from agent.config.sources import BacklogSource
    from agent.export.collectors import BacklogCollector
    from agent.export.exposition import render
    from tests.metricsutil import parse

    with open_store(todo_db) as store:
        store.add("a", "normal", ["gpu"])
        store.add("b", "normal", ["quantum"])
        store.finish(store.add("c"), "done")
    spec = ({"kind": "postgres", "dsn": todo_db, "name": "shared"} if todo_db.startswith("postgresql://")
            else {"kind": "sqlite", "path": todo_db, "name": "shared"})

    async def scrape() -> str:
        async with HttpClient() as client:
            monitor = backlog.BacklogMonitor([BacklogSource.model_validate(spec)], client)
            collector = BacklogCollector(monitor, ["gpu"])
            before = render(collector.families(), False).decode()
            assert "orchestrator_todo_source_created_total{" not in before  # no read yet: no guess
            await monitor.read_all()
            return render(collector.families(), False).decode()

    samples = {(name, dict(labels)["source"], dict(labels)["capability"]): n
               for (name, labels), n in parse(asyncio.run(scrape())).items()
               if name.startswith(("orchestrator_todo_source_created", "orchestrator_todo_source_completed"))}
    assert samples == {
        ("orchestrator_todo_source_created_total", "shared", "gpu"): 1,
        ("orchestrator_todo_source_created_total", "shared", "_other"): 1,
        ("orchestrator_todo_source_created_total", "shared", "any"): 1,
        ("orchestrator_todo_source_completed_total", "shared", "gpu"): 0,
        ("orchestrator_todo_source_completed_total", "shared", "_other"): 0,
        ("orchestrator_todo_source_completed_total", "shared", "any"): 1,
    }
