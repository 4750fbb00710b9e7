"""Opening a todo store: SQLite (embedded, the default) or PostgreSQL (shared by hosts), one interface
(agent/todos/base.py), chosen by what a `--db` names."""

from __future__ import annotations

from agent.config.dsn import dsn_problem, is_postgres, redact
from agent.todos.base import StoreError, TodoStore


def open_store(db: str, passfile: str | None = None) -> TodoStore:
    """The store `db` names: a postgresql:// or postgres:// URL, else a SQLite file path."""
    if is_postgres(db):
        problem = dsn_problem(db)
        if problem:
            raise StoreError(f"--db {redact(db)} {problem}")
        from agent.todos.postgres import PostgresStore

        return PostgresStore(db, passfile=passfile)
    from agent.todos.sqlite import SqliteStore

    return SqliteStore(db)
