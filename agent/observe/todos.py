"""The embedded todo store: one SQLite table that workers in any language can use.

Schema (documented in docs/todos.md):
    todos(id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT, status TEXT, priority TEXT,
          capabilities TEXT  -- JSON list of capability names, [] for any worker
          created_at REAL, updated_at REAL, claimed_by TEXT)
`claim` is atomic (SELECT then UPDATE inside one BEGIN IMMEDIATE transaction, which holds SQLite's
write lock), so many workers can poll the same file without taking the same todo twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.observe.todorow import PRIORITIES, RowError, capabilities_json, parse_capabilities
from agent.observe.todorow import STATUSES as STATUSES  # re-exported: the store's statuses are the backlog's

_URGENCY = "CASE priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END"

SCHEMA = """
CREATE TABLE IF NOT EXISTS todos (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'in_progress', 'done', 'failed')),
    priority TEXT NOT NULL DEFAULT 'normal'
        CHECK (priority IN ('low', 'normal', 'high', 'critical')),
    capabilities TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    claimed_by TEXT
);
CREATE INDEX IF NOT EXISTS todos_status ON todos (status, priority);
"""


@dataclass(frozen=True)
class Todo:
    id: int
    title: str
    status: str
    priority: str
    capabilities: list[str]
    created_at: float
    updated_at: float
    claimed_by: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _row(row: sqlite3.Row) -> Todo:
    """A stored row as a Todo; RowError when its capabilities are malformed (the backlog's own rule)."""
    caps = capabilities_json(row["capabilities"])
    return Todo(row["id"], row["title"], row["status"], row["priority"], list(caps),
                row["created_at"], row["updated_at"], row["claimed_by"])


@contextmanager
def connect(path: Path | str, timeout: float = 5.0, create: bool = True) -> Iterator[sqlite3.Connection]:
    """Open the store (creating the table when `create`), committing on success."""
    if not create and not Path(path).exists():
        raise FileNotFoundError(f"no todo database at {path}")
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        if create:
            conn.executescript(SCHEMA)
        yield conn
    finally:
        conn.close()


def add(path: Path | str, title: str, priority: str = "normal", capabilities: Iterable[str] = ()) -> int:
    """Insert a pending todo and return its id."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    # A bare string is one comma-separated list, never its letters.
    caps = parse_capabilities(capabilities if isinstance(capabilities, str) else list(capabilities))
    now = time.time()
    with connect(path) as conn:
        cur = conn.execute(
            "INSERT INTO todos (title, status, priority, capabilities, created_at, updated_at)"
            " VALUES (?, 'pending', ?, ?, ?, ?)",
            (title, priority, json.dumps(sorted(caps)), now, now),
        )
        return int(cur.lastrowid or 0)


def list_todos(path: Path | str, status: str | None = None, limit: int = 1000) -> list[Todo]:
    """Todos, most urgent and oldest first."""
    with connect(path) as conn:
        query = "SELECT * FROM todos"
        args: tuple[Any, ...] = ()
        if status:
            query += " WHERE status = ?"
            args = (status,)
        rows = conn.execute(query + f" ORDER BY {_URGENCY}, created_at, id LIMIT ?", (*args, limit)).fetchall()
    return [_row(r) for r in rows]


def claim(path: Path | str, worker: str, capabilities: Iterable[str] | None = None) -> Todo | None:
    """Atomically take the most urgent pending todo this worker can serve, or None."""
    caps = set(capabilities) if capabilities is not None else None
    with connect(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                f"SELECT * FROM todos WHERE status = 'pending' ORDER BY {_URGENCY}, id LIMIT 200"
            ).fetchall()
            for row in rows:
                try:
                    todo = _row(row)
                except RowError:
                    continue  # nobody can tell what it needs: left for a human (the backlog counts it invalid)
                if caps is not None and not set(todo.capabilities) <= caps:
                    continue
                now = time.time()
                conn.execute(
                    "UPDATE todos SET status = 'in_progress', claimed_by = ?, updated_at = ? WHERE id = ?",
                    (worker, now, todo.id),
                )
                conn.execute("COMMIT")
                return Todo(todo.id, todo.title, "in_progress", todo.priority, todo.capabilities,
                            todo.created_at, now, worker)
            conn.execute("COMMIT")
            return None
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def finish(path: Path | str, todo_id: int, status: str = "done") -> bool:
    """Mark a todo done (or failed); False when no such todo exists."""
    if status not in ("done", "failed", "pending"):
        raise ValueError(f"status must be done, failed or pending, got {status!r}")
    with connect(path) as conn:
        # A todo put back is nobody's any more.
        cur = conn.execute(
            "UPDATE todos SET status = ?, updated_at = ?,"
            " claimed_by = CASE WHEN ? = 'pending' THEN NULL ELSE claimed_by END WHERE id = ?",
            (status, time.time(), status, todo_id),
        )
        return cur.rowcount > 0
