"""`agent todo add TITLE [TITLE ...]` and `-` (titles from stdin): many todos in one store transaction, on
SQLite and on a real PostgreSQL, through the real CLI process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.todos.base import MAX_TITLE
from agent.todos.store import open_store


def agent_todo_add(cwd: Path, db: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TODO_DB", "AGENT_CONFIG")}
    return subprocess.run([sys.executable, "-m", "agent", "todo", "--db", db, *args], input=stdin,
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def created(db: str) -> dict[str, int]:
    with open_store(db) as store:
        return store.flow()["created"]


def same_transaction(db: str) -> int:
    """How many transactions wrote the todos: PostgreSQL's xmin of each row; on SQLite the store stamps
    one created_at per call, so distinct created_at values stand for calls."""
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT count(DISTINCT xmin::text) FROM todos").fetchone()
    else:
        import sqlite3

        lite = sqlite3.connect(db)
        try:
            row = lite.execute("SELECT count(DISTINCT created_at) FROM todos").fetchone()
        finally:
            lite.close()
    assert row is not None
    return int(row[0])


def test_600_titles_from_stdin_land_in_one_transaction_with_their_ids_in_order(todo_db: str, tmp_path: Path) -> None:
    with open_store(todo_db) as store:
        store.list()  # creates the schema, so the counters read before the add
    before = created(todo_db).get("gpu", 0)
    lines = [f"job {i}" for i in range(600)]
    stdin = "\n\n".join(lines[:300]) + "\n   \n" + "\n".join(lines[300:]) + "\n"  # blank lines are skipped
    out = agent_todo_add(tmp_path, todo_db, "add", "-", "-p", "high", "--capability", "gpu", stdin=stdin)
    assert out.returncode == 0, out.stderr
    ids = [int(line) for line in out.stdout.splitlines()]
    assert len(ids) == 600 and ids == sorted(ids) and len(set(ids)) == 600
    with open_store(todo_db) as store:
        rows = {t.id: t for t in store.list(limit=1000)}
    assert [rows[i].title for i in ids] == lines
    assert {(t.priority, tuple(t.capabilities), t.status) for t in rows.values()} == {("high", ("gpu",), "pending")}
    assert same_transaction(todo_db) == 1
    assert created(todo_db)["gpu"] == before + 600


def test_arguments_and_stdin_mix_in_order_and_json_prints_a_list_or_the_one_title_shape(
        todo_db: str, tmp_path: Path) -> None:
    out = agent_todo_add(tmp_path, todo_db, "--json", "add", "first", "-", "last", stdin="second\r\nthird\n")
    assert out.returncode == 0, out.stderr
    ids = json.loads(out.stdout)
    assert isinstance(ids, list) and len(ids) == 4
    with open_store(todo_db) as store:
        titles = {t.id: t.title for t in store.list()}
    assert [titles[i] for i in ids] == ["first", "second", "third", "last"]
    one = agent_todo_add(tmp_path, todo_db, "add", "alone", "--json")
    assert one.returncode == 0 and json.loads(one.stdout) == {"id": ids[-1] + 1}
    plain = agent_todo_add(tmp_path, todo_db, "add", "plain")
    assert plain.returncode == 0 and plain.stdout == f"{ids[-1] + 2}\n"
    assert created(todo_db)["any"] == 6


def test_a_bad_later_line_adds_nothing_and_names_the_line(todo_db: str, tmp_path: Path) -> None:
    with open_store(todo_db) as store:
        store.add("already there")
    lines = [f"job {i}" for i in range(600)]
    lines[598] = "x" * (MAX_TITLE + 1)
    out = agent_todo_add(tmp_path, todo_db, "add", "-", stdin="\n".join(lines) + "\n")
    assert out.returncode == 2 and out.stdout == ""
    assert f"stdin line 599: the title is {MAX_TITLE + 1} characters long, more than {MAX_TITLE}" in out.stderr
    blank = agent_todo_add(tmp_path, todo_db, "add", "fine", "  ")
    assert blank.returncode == 2 and "title argument 2: the title is empty" in blank.stderr
    with open_store(todo_db) as store:
        assert [t.title for t in store.list()] == ["already there"]
    assert created(todo_db) == {"any": 1}


def test_no_titles_or_two_stdins_are_refused(todo_db: str, tmp_path: Path) -> None:
    empty = agent_todo_add(tmp_path, todo_db, "add", "-", stdin="\n  \n")
    assert empty.returncode == 2 and "no titles to add" in empty.stderr
    twice = agent_todo_add(tmp_path, todo_db, "add", "-", "-", stdin="a\n")
    assert twice.returncode == 2 and "`-` (titles from stdin) may be given once" in twice.stderr
    none = agent_todo_add(tmp_path, todo_db, "add")
    assert none.returncode == 2 and "TITLE" in none.stderr  # argparse: at least one title
    with open_store(todo_db) as store:
        assert store.list() == []


def test_the_store_adds_all_or_none_when_the_database_refuses_a_later_row(todo_db: str) -> None:
    """A failure inside the transaction (a trigger refusing the 500th row) leaves no todo and no count."""
    with open_store(todo_db) as store:
        store.list()
    if todo_db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(todo_db, autocommit=True) as conn:
            conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                         " RAISE EXCEPTION 'refused %', NEW.title; END $$")
            conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON todos FOR EACH ROW"
                         " WHEN (NEW.title = 'job 499') EXECUTE FUNCTION refuse()")
        error: type[Exception] = psycopg.Error
    else:
        import sqlite3

        lite = sqlite3.connect(todo_db)
        lite.execute("CREATE TRIGGER refuse BEFORE INSERT ON todos WHEN NEW.title = 'job 499'"
                     " BEGIN SELECT RAISE(ABORT, 'refused'); END")
        lite.commit()
        lite.close()
        error = sqlite3.Error
    with open_store(todo_db) as store:
        with pytest.raises(error, match="refused"):
            store.add_many([f"job {i}" for i in range(600)])
        assert store.list() == []
        assert store.flow()["created"] == {}
        with pytest.raises(ValueError, match="title 3 is empty"):
            store.add_many(["a", "b", ""])
        with pytest.raises(ValueError, match="no titles"):
            store.add_many([])
        assert store.list() == []
