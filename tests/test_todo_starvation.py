"""Claims never starve a worker (issue 31): the capability test is in the claim's query, so todos a worker
cannot serve, however many wait ahead, hide none it can. Each test runs on SQLite and on a private
PostgreSQL (conftest's todo_db); the order stays most urgent, then oldest; malformed rows are never claimed.
The plain SQL docs/todos.md gives workers in other languages picks what `claim` picks."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg

from agent.todos.base import Finish, TodoStore
from agent.todos.store import open_store

DOCS = Path(__file__).resolve().parent.parent / "docs" / "todos.md"


def claim_ids(store: TodoStore, capabilities: list[str] | None) -> list[int]:
    """Every todo this worker can take, in the order it takes them (claiming until nothing suits)."""
    out = []
    while (todo := store.claim("w", capabilities, lease=60)) is not None:
        out.append(todo.id)
    return out


def insert_raw(todo_db: str, priority: str, capabilities: str) -> int:
    """A pending row written by another program, its capabilities column as given (raw SQL, no check)."""
    sql = ("INSERT INTO todos (title, status, priority, capabilities, created_at, updated_at)"
           " VALUES ('raw', 'pending', {p}, {p}, 0, 0)")
    if todo_db.startswith("postgresql://"):
        with psycopg.connect(todo_db, autocommit=True) as conn:
            row = conn.execute(sql.format(p="%s") + " RETURNING id", (priority, capabilities)).fetchone()
            assert row is not None
            return int(row[0])
    with closing(sqlite3.connect(todo_db)) as conn, conn:
        return int(conn.execute(sql.format(p="?"), (priority, capabilities)).lastrowid or 0)


def test_a_cpu_worker_gets_the_low_cpu_todo_behind_300_critical_gpu_todos(todo_db: str, tmp_path: Path) -> None:
    with open_store(todo_db) as store:
        gpu = store.add_many([f"render {n}" for n in range(300)], "critical", ["gpu"])
        cpu = store.add("compile", "low", ["cpu"])
    out = subprocess.run([sys.executable, "-m", "agent", "todo", "--db", todo_db, "claim", "--worker", "w",
                          "--capability", "cpu", "--json"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stdout!r} {out.stderr!r}"
    todo = json.loads(out.stdout)
    assert (todo["id"], todo["title"], todo["status"], todo["claimed_by"]) == (cpu, "compile", "in_progress", "w")
    with open_store(todo_db) as store:
        assert len(store.list("pending")) == len(gpu)  # the gpu todos still wait for a gpu worker


def test_the_order_among_the_todos_that_fit_is_most_urgent_then_oldest(todo_db: str) -> None:
    with open_store(todo_db) as store:
        normal_a = store.add("normal a", "normal", ["cpu"])
        store.add("critical gpu", "critical", ["gpu"])
        high_a = store.add("high a", "high", ["cpu"])
        store.add("high gpu", "high", ["cpu", "gpu"])
        low = store.add("low", "low", ["cpu"])
        high_any = store.add("high, needs nothing", "high")
        normal_b = store.add("normal b", "normal", ["cpu"])
        assert claim_ids(store, ["cpu"]) == [high_a, high_any, normal_a, normal_b, low]


def test_a_worker_with_both_takes_the_critical_gpu_todo_and_one_naming_none_takes_anything(todo_db: str) -> None:
    with open_store(todo_db) as store:
        cpu = store.add("cpu", "low", ["cpu"])
        gpu = store.add("gpu", "critical", ["gpu"])
        both = store.claim("w", ["cpu", "gpu"], lease=60)
        assert both is not None and both.id == gpu
        assert store.finish(gpu, "pending", both.claim_token) is Finish.OK
        tpu = store.add("tpu", "normal", ["tpu"])
        assert claim_ids(store, None) == [gpu, tpu, cpu]


def test_malformed_capabilities_are_never_claimed_and_hide_nothing(todo_db: str) -> None:
    with open_store(todo_db) as store:
        first = store.add("creates the schema", "low", ["cpu"])
        malformed = [insert_raw(todo_db, "critical", text) for text in ("5", "[1]", '[""]', "not json", '{"cpu": 1}')]
        comma = insert_raw(todo_db, "high", '"cpu, gpu"')  # one comma-separated string: cpu and gpu
        blank = insert_raw(todo_db, "normal", " ")  # blank: needs nothing
        assert claim_ids(store, ["cpu"]) == [blank, first]
        assert claim_ids(store, ["gpu", "cpu"]) == [comma]
        assert claim_ids(store, None) == []  # nobody can tell what the malformed ones need
    if todo_db.startswith("postgresql://"):
        with psycopg.connect(todo_db, autocommit=True) as conn:
            left = [r[0] for r in conn.execute("SELECT id FROM todos WHERE status = 'pending' ORDER BY id")]
    else:
        with closing(sqlite3.connect(todo_db)) as conn:
            left = [r[0] for r in conn.execute("SELECT id FROM todos WHERE status = 'pending' ORDER BY id")]
    assert left == malformed


def documented(marker: str) -> str:
    """The ```sql block of docs/todos.md that holds `marker`."""
    blocks = [b for b in re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S) if marker in b]
    assert len(blocks) == 1, f"one sql block with {marker!r} in {DOCS}, found {len(blocks)}"
    return blocks[0]


def test_the_plain_sql_in_the_docs_picks_what_claim_picks(todo_db: str) -> None:
    """Before each claim, the documented statement (rolled back on PostgreSQL) names the todo claim takes."""
    postgres = todo_db.startswith("postgresql://")
    with open_store(todo_db) as store:
        store.add_many(["gpu 1", "gpu 2"], "critical", ["gpu"])
        store.add("cpu+gpu", "high", ["gpu", "cpu"])
        store.add_many(["cpu 1", "cpu 2"], "normal", ["cpu"])
        store.add("any", "low")
        for text in ("[1]", "not json", '" cpu ,, "', "null"):
            insert_raw(todo_db, "high", text)
        if postgres:
            statement = re.sub(r"\$\d", "%s", documented("capability_names <@"))
            with psycopg.connect(todo_db, autocommit=True) as conn:
                def pick_pg(have: list[str]) -> int | None:
                    with conn.transaction(force_rollback=True):
                        row = conn.execute(statement, ("doc", "token", 60, have)).fetchone()
                    return None if row is None else int(row[0])
                take_all(store, pick_pg)
        else:
            query = documented("json_each(:have)")
            with closing(sqlite3.connect(todo_db)) as conn:
                def pick_sqlite(have: list[str]) -> int | None:
                    row = conn.execute(query, {"have": json.dumps(have)}).fetchone()
                    return None if row is None else int(row[0])
                take_all(store, pick_sqlite)


def take_all(store: TodoStore, pick: Callable[[list[str]], int | None]) -> None:
    """Workers of three kinds claim until nothing suits; before each claim `pick` names the same todo."""
    taken = 0
    for have in (["cpu"], ["gpu", "cpu"], ["tpu"]):
        while True:
            expected = pick(have)
            todo = store.claim("w", have, lease=60)
            assert expected == (todo.id if todo else None), f"worker {have}, claim {taken + 1}"
            if todo is None:
                break
            taken += 1
    assert taken == 8  # all but the two malformed rows


def test_the_functions_whitespace_is_what_python_strips() -> None:
    # todo_capabilities trims names with the characters str.strip() removes (row.py), written out in
    # agent/todos/postgres.py rather than computed at every import.
    from agent.todos.postgres import WHITESPACE

    assert "".join(chr(c) for c in range(0x110000) if chr(c).isspace()) == WHITESPACE


def test_a_database_migrated_to_this_schema_is_not_migrated_again(pg_server: Any) -> None:
    # Every `agent todo` and worker opens the store: the migration's DDL runs once per schema, not per open.
    from agent.todos.postgres import SCHEMA_MARK

    dsn = str(pg_server.database("t_schema_mark"))
    with open_store(dsn) as store:
        store.add("a")
    with psycopg.connect(dsn, autocommit=True) as conn:
        mark = conn.execute("SELECT obj_description('todos'::regclass, 'pg_class')").fetchone()
        assert mark == (SCHEMA_MARK,)
        conn.execute("DROP INDEX todos_pending_capabilities")  # the next open would recreate it if it migrated
    with open_store(dsn) as store:
        store.add("b")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('todos_pending_capabilities')").fetchone() == (None,)
        conn.execute("COMMENT ON TABLE todos IS 'an older schema'")
    with open_store(dsn) as store:  # another mark: migrated again, idempotently
        assert [t.title for t in store.list()] == ["a", "b"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('todos_pending_capabilities')").fetchone() is not None
        assert conn.execute("SELECT obj_description('todos'::regclass, 'pg_class')").fetchone() == (SCHEMA_MARK,)
