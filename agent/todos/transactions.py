"""The todo store as plain functions of a `db` (a SQLite path, or a postgresql:// dsn without password).

Each call opens the store, does one transaction and closes it; a long-lived worker keeps a store from
agent.todos.store.open_store instead. Semantics (leases, claim tokens, fencing) in
agent/todos/base.py and docs/todos.md.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.todos.base import DEFAULT_LEASE, Finish, Todo
from agent.todos.row import PRIORITIES as PRIORITIES
from agent.todos.row import STATUSES as STATUSES  # re-exported: the store's statuses are the backlog's
from agent.todos.sqlite import SCHEMA as SCHEMA
from agent.todos.sqlite import connect as connect
from agent.todos.store import open_store

if TYPE_CHECKING:
    from agent.config.models import Config

log = logging.getLogger("agent")

__all__ = ["DEFAULT_LEASE", "PRIORITIES", "SCHEMA", "STATUSES", "Finish", "Todo", "add", "claim", "connect",
           "finish", "list_todos", "renew"]


def add(db: Path | str, title: str, priority: str = "normal", capabilities: Iterable[str] | str = ()) -> int:
    """Insert a pending todo and return its id."""
    with open_store(str(db)) as store:
        return store.add(title, priority, capabilities)


def list_todos(db: Path | str, status: str | None = None, limit: int = 1000) -> list[Todo]:
    """Todos, most urgent and oldest first."""
    with open_store(str(db)) as store:
        return store.list(status, limit)


def claim(db: Path | str, worker: str, capabilities: Iterable[str] | None = None,
          lease: float = DEFAULT_LEASE) -> Todo | None:
    """Atomically take the most urgent pending todo this worker can serve, under a lease, or None."""
    with open_store(str(db)) as store:
        return store.claim(worker, capabilities, lease)


def renew(db: Path | str, todo_id: int, token: str, lease: float = DEFAULT_LEASE) -> float | None:
    """Extend the lease `token` holds; the new expiry (Unix seconds), or None when it holds none."""
    with open_store(str(db)) as store:
        return store.renew(todo_id, token, lease)


def finish(db: Path | str, todo_id: int, status: str = "done", token: str | None = None) -> Finish:
    """Mark a todo done, failed or pending (put back); see Finish for the outcomes."""
    with open_store(str(db)) as store:
        return store.finish(todo_id, status, token)


def create_missing_stores(config: Config) -> None:
    """The embedded SQLite store is the agent's own: create a missing one, empty, so workers can start."""
    for source in config.backlog.sources:
        if source.kind == "sqlite" and source.path is not None and not source.path.exists():
            try:
                with connect(source.path):
                    pass
            except (OSError, sqlite3.Error) as exc:
                log.error("cannot create the todo store %s: %s", source.path, exc)
            else:
                log.info("created an empty todo store at %s", source.path)
