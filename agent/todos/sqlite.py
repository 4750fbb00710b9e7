"""The embedded store: one SQLite file that workers in any language can use (schema in docs/todos.md).

`claim` is atomic (sweep, SELECT and UPDATE inside one BEGIN IMMEDIATE transaction, which holds
SQLite's write lock), so many workers can poll the same file without taking the same todo twice.
Older files are migrated in place (the columns of ADDED_COLUMNS and the counter tables added).
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.todos.base import (
    COUNTERS,
    DEFAULT_LEASE,
    FINISHED,
    FLOWS,
    URGENCY,
    Finish,
    Todo,
    TodoStore,
    check_lease,
    check_priority,
    check_status,
    check_titles,
    flow_capabilities,
    new_token,
    normal_capabilities,
    todo_from,
    work_ms,
)
from agent.todos.row import RowError, capabilities_json

SCHEMA = f"""
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
    claimed_by TEXT,
    claim_token TEXT,
    lease_expires_at REAL,
    claimed_at REAL
);
CREATE INDEX IF NOT EXISTS todos_status ON todos (status, priority);
CREATE INDEX IF NOT EXISTS todos_pending_urgency ON todos (({URGENCY}), id)
    WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS todo_counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL DEFAULT 0);
INSERT OR IGNORE INTO todo_counters (name, value) VALUES ('leases_expired', 0), ('completions_rejected', 0);
CREATE TABLE IF NOT EXISTS todo_flow (kind TEXT NOT NULL, capability TEXT NOT NULL,
    value INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, capability));
"""
# Columns added since the first schema: (name, type). ALTER TABLE ADD COLUMN is idempotent only by checking.
ADDED_COLUMNS = (("claim_token", "TEXT"), ("lease_expires_at", "REAL"), ("claimed_at", "REAL"))


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring an older file up to it (idempotent; run under the write lock)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'todos'").fetchone()
        if exists:
            have = {row[1] for row in conn.execute("PRAGMA table_info(todos)")}
            for name, kind in ADDED_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE todos ADD COLUMN {name} {kind}")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@contextmanager
def connect(path: Path | str, timeout: float = 5.0, create: bool = True) -> Iterator[sqlite3.Connection]:
    """Open the file (creating or migrating the schema when `create`); autocommit, rows by name."""
    if not create and not Path(path).exists():
        raise FileNotFoundError(f"no todo database at {path}")
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        if create:
            migrate(conn)
        yield conn
    finally:
        conn.close()


def _sweep(conn: sqlite3.Connection, now: float) -> None:
    """Put every todo whose lease ran out back to pending, and count them (inside the caller's transaction)."""
    cur = conn.execute(
        "UPDATE todos SET status = 'pending', claimed_by = NULL, claim_token = NULL, lease_expires_at = NULL,"
        " claimed_at = NULL, updated_at = ?"
        " WHERE status = 'in_progress' AND lease_expires_at IS NOT NULL AND lease_expires_at <= ?",
        (now, now))
    if cur.rowcount > 0:
        _count(conn, "leases_expired", cur.rowcount)


def _count(conn: sqlite3.Connection, name: str, n: int = 1) -> None:
    conn.execute("UPDATE todo_counters SET value = value + ? WHERE name = ?", (n, name))


def _flow(conn: sqlite3.Connection, kind: str, capabilities: list[str], n: int = 1) -> None:
    """Add `n` under each of the capabilities (inside the caller's transaction)."""
    for cap in capabilities:
        conn.execute("INSERT INTO todo_flow (kind, capability, value) VALUES (?, ?, ?)"
                     " ON CONFLICT (kind, capability) DO UPDATE SET value = value + excluded.value", (kind, cap, n))


# The claim's capability test, registered on the connection as SQL function todo_fits(capabilities):
# row.py's validator itself, so the claim, the backlog reader and `add` agree on every row by construction
# (the comma-separated string form, trimming, and malformed rows never claimed). A json_each version in
# SQL would be a second copy of those rules (docs/todos.md gives one to workers in other languages).
@functools.lru_cache(maxsize=4096)
def _needs(capabilities: object) -> frozenset[str] | None:
    """What a stored capabilities column asks of a worker; None when malformed (nobody can tell)."""
    try:
        return frozenset(capabilities_json(capabilities))
    except RowError:
        return None


def _fits(capabilities: object, have: frozenset[str] | None) -> int:
    """1 when a worker with `have` (None: any capability) can serve the row, else 0."""
    needs = _needs(capabilities)
    return int(needs is not None and (have is None or needs <= have))


class SqliteStore(TodoStore):
    """A SQLite file; each call opens it (so a long-lived worker holds no lock between calls)."""

    def __init__(self, path: Path | str, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.timeout = timeout
        self._migrated = False

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with connect(self.path, self.timeout, create=not self._migrated) as conn:
            self._migrated = True
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def add_many(self, titles: Iterable[str], priority: str = "normal",
                 capabilities: Iterable[str] | str = ()) -> list[int]:
        titles = check_titles(titles)
        check_priority(priority)
        caps = normal_capabilities(capabilities)
        now = time.time()
        with self._write() as conn:
            ids = [int(conn.execute("INSERT INTO todos (title, status, priority, capabilities, created_at, updated_at)"
                                    " VALUES (?, 'pending', ?, ?, ?, ?)",
                                    (title, priority, caps, now, now)).lastrowid or 0) for title in titles]
            _flow(conn, "created", flow_capabilities(caps), len(ids))
            return ids

    def list(self, status: str | None = None, limit: int = 1000) -> list[Todo]:
        check_status(status)
        with self._write() as conn:
            _sweep(conn, time.time())
            where, args = ("WHERE status = ?", (status,)) if status else ("", ())
            rows = conn.execute(
                f"SELECT * FROM (SELECT * FROM todos {where} ORDER BY id LIMIT ?) ORDER BY {URGENCY}, created_at, id",
                (*args, limit)).fetchall()
        return [todo_from(r) for r in rows]

    def claim(self, worker: str, capabilities: Iterable[str] | None = None,
              lease: float = DEFAULT_LEASE) -> Todo | None:
        lease = check_lease(lease)
        have = None if capabilities is None else frozenset(capabilities)
        with self._write() as conn:
            # The worker's capabilities are bound in the function (one connection per call).
            conn.create_function("todo_fits", 1, lambda caps: _fits(caps, have), deterministic=True)
            now = time.time()
            _sweep(conn, now)
            # Walk the pending todos in claim order and stop at the first that fits. INDEXED BY: the planner
            # cannot know todo_fits' cost and would rather filter every pending row, then sort.
            row = conn.execute(f"SELECT * FROM todos INDEXED BY todos_pending_urgency WHERE status = 'pending'"
                               f" AND todo_fits(capabilities) ORDER BY {URGENCY}, id LIMIT 1").fetchone()
            if row is None:
                return None
            token, expires = new_token(), now + lease
            conn.execute(
                "UPDATE todos SET status = 'in_progress', claimed_by = ?, claim_token = ?,"
                " lease_expires_at = ?, claimed_at = ?, updated_at = ? WHERE id = ?",
                (worker, token, expires, now, now, row["id"]))
            todo = todo_from(row)
            return Todo(todo.id, todo.title, "in_progress", todo.priority, todo.capabilities,
                        todo.created_at, now, worker, token, expires, now)

    def renew(self, todo_id: int, token: str, lease: float = DEFAULT_LEASE) -> float | None:
        lease = check_lease(lease)
        with self._write() as conn:
            now = time.time()
            cur = conn.execute(
                "UPDATE todos SET lease_expires_at = ?, updated_at = ? WHERE id = ? AND status = 'in_progress'"
                " AND claim_token = ? AND lease_expires_at > ?", (now + lease, now, todo_id, token, now))
            return now + lease if cur.rowcount > 0 else None

    def finish(self, todo_id: int, status: str = "done", token: str | None = None) -> Finish:
        if status not in ("done", "failed", "pending"):
            raise ValueError(f"status must be done, failed or pending, got {status!r}")
        with self._write() as conn:
            now = time.time()
            row: Any = conn.execute("SELECT status, claim_token, lease_expires_at, claimed_at, capabilities"
                                    " FROM todos WHERE id = ?", (todo_id,)).fetchone()
            if row is None:
                return Finish.MISSING
            live = row["status"] == "in_progress" and (row["lease_expires_at"] is None
                                                      or row["lease_expires_at"] > now)
            if token is not None and not (live and row["claim_token"] == token):
                _count(conn, "completions_rejected")
                return Finish.REJECTED
            if token is None and live and row["claim_token"] is not None:
                return Finish.CLAIMED
            # A todo that is finished or put back is nobody's any more: its lease ends here.
            conn.execute(
                "UPDATE todos SET status = ?, updated_at = ?, claim_token = NULL, lease_expires_at = NULL,"
                " claimed_by = CASE WHEN ? = 'pending' THEN NULL ELSE claimed_by END,"
                " claimed_at = CASE WHEN ? = 'pending' THEN NULL ELSE claimed_at END WHERE id = ?",
                (status, now, status, status, todo_id))
            if status in FINISHED and row["status"] not in FINISHED:
                caps = flow_capabilities(row["capabilities"])
                _flow(conn, "completed", caps)
                # Only the live claim that finishes worked on it (an expired one's time is not work done).
                worked = work_ms(now - row["claimed_at"] if live and row["claimed_at"] is not None else None)
                if worked is not None:
                    _flow(conn, "work_ms", caps, worked)
            return Finish.OK

    def counters(self) -> dict[str, int]:
        with self._write() as conn:
            _sweep(conn, time.time())
            found = dict(conn.execute("SELECT name, value FROM todo_counters").fetchall())
        return {name: int(found.get(name, 0)) for name in COUNTERS}

    def flow(self) -> dict[str, dict[str, int]]:
        with self._conn() as conn:
            rows = conn.execute("SELECT kind, capability, value FROM todo_flow").fetchall()
        out: dict[str, dict[str, int]] = {kind: {} for kind in FLOWS}
        for kind, cap, value in rows:
            out.setdefault(kind, {})[cap] = int(value)
        return out

    def close(self) -> None:
        pass
