"""The shared store: one PostgreSQL table that workers on every host claim from.

Claims lock one row with `FOR UPDATE SKIP LOCKED` (the standard work-queue pattern), so concurrent
claimers never wait on each other's todo. Times are the database's clock (one clock for every host), as
Unix seconds like the SQLite store. The dsn never carries a password (refused by open_store and the
config): libpq reads it from the passfile, $PGPASSFILE (default ~/.pgpass) or $PGPASSWORD.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from agent.todos.base import (
    COUNTERS,
    DEFAULT_LEASE,
    FINISHED,
    FLOWS,
    URGENCY,
    Finish,
    StoreError,
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

NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
# What str.strip() strips (row.py trims names with it); btrim's default strips spaces only. Written out:
# computing it (every code point's isspace()) took 80 ms at each import; a test checks it against Python.
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
              "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# todo_capabilities(capabilities): the names a todo needs as text[], exactly as row.py's capabilities_json
# reads the column (a JSON list of non-empty names or one comma-separated string, trimmed, each once;
# null or blank: none), and NULL for what it refuses, so a malformed row is never claimed. It never
# raises: it computes a stored column, and an error would refuse the INSERT of another program's row.
# Only names PostgreSQL text cannot hold (\u0000, a lone surrogate), which Python accepts, are NULL here.
# Changing what it returns needs `UPDATE todos SET capabilities = capabilities` to recompute the column.
CAPABILITIES_FUNCTION = """CREATE OR REPLACE FUNCTION todo_capabilities(caps text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    ws CONSTANT text := {whitespace};
    doc jsonb;
    names text[];
BEGIN
    IF caps IS NULL OR btrim(caps, ws) = '' THEN
        RETURN '{{}}';
    END IF;
    BEGIN
        doc := caps::jsonb;
    EXCEPTION WHEN OTHERS THEN  -- not JSON, or nested deeper than the server's stack
        RETURN NULL;
    END;
    CASE jsonb_typeof(doc)
    WHEN 'null' THEN
        RETURN '{{}}';
    WHEN 'string' THEN
        names := array_remove(ARRAY(SELECT btrim(part, ws) FROM unnest(string_to_array(doc #>> '{{}}', ',')) part), '');
    WHEN 'array' THEN
        IF EXISTS (SELECT 1 FROM jsonb_array_elements(doc) e
                   WHERE jsonb_typeof(e) <> 'string' OR btrim(e #>> '{{}}', ws) = '') THEN
            RETURN NULL;
        END IF;
        names := ARRAY(SELECT btrim(e #>> '{{}}', ws) FROM jsonb_array_elements(doc) e);
    ELSE
        RETURN NULL;
    END CASE;
    RETURN ARRAY(SELECT n FROM unnest(names) WITH ORDINALITY u(n, i) GROUP BY n ORDER BY min(i));
END
$fn$"""


def capabilities_function(utf8: bool) -> str:
    """The CREATE OR REPLACE of todo_capabilities; a server not in UTF8 trims ASCII whitespace only."""
    chars = WHITESPACE if utf8 else "".join(c for c in WHITESPACE if c.isascii())
    # \u escapes keep the statement ASCII whatever the client's encoding.
    return CAPABILITIES_FUNCTION.format(whitespace="E'" + "".join(f"\\u{ord(c):04x}" for c in chars) + "'")


# Idempotent: every statement may run again on a database that has it (several workers start at once,
# so the whole migration holds a transaction-scoped advisory lock).
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS todos (
        id BIGSERIAL PRIMARY KEY,
        title TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'in_progress', 'done', 'failed')),
        priority TEXT NOT NULL DEFAULT 'normal'
            CHECK (priority IN ('low', 'normal', 'high', 'critical')),
        capabilities TEXT NOT NULL DEFAULT '[]',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        claimed_by TEXT
    )""",
    "ALTER TABLE todos ADD COLUMN IF NOT EXISTS claim_token TEXT",
    "ALTER TABLE todos ADD COLUMN IF NOT EXISTS lease_expires_at DOUBLE PRECISION",
    "ALTER TABLE todos ADD COLUMN IF NOT EXISTS claimed_at DOUBLE PRECISION",
    "CREATE INDEX IF NOT EXISTS todos_status ON todos (status, priority)",
    # The claim's filter: computed once per write, not per row a claim walks past.
    "ALTER TABLE todos ADD COLUMN IF NOT EXISTS capability_names TEXT[]"
    " GENERATED ALWAYS AS (todo_capabilities(capabilities)) STORED",
    # Both serve the claim; the planner picks: the walk in claim order when a fitting todo is near the
    # front, the containment test when many todos the worker cannot serve wait ahead.
    f"CREATE INDEX IF NOT EXISTS todos_pending_urgency ON todos (({URGENCY}), id) WHERE status = 'pending'",
    "CREATE INDEX IF NOT EXISTS todos_pending_capabilities ON todos USING gin (capability_names)"
    " WHERE status = 'pending'",
    "CREATE TABLE IF NOT EXISTS todo_counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL DEFAULT 0)",
    "INSERT INTO todo_counters (name, value) VALUES ('leases_expired', 0), ('completions_rejected', 0)"
    " ON CONFLICT (name) DO NOTHING",
    """CREATE TABLE IF NOT EXISTS todo_flow (kind TEXT NOT NULL, capability TEXT NOT NULL,
        value BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (kind, capability))""",
)
_FLOW = ("INSERT INTO todo_flow (kind, capability, value) VALUES (%s, %s, %s)"
         " ON CONFLICT (kind, capability) DO UPDATE SET value = todo_flow.value + EXCLUDED.value")
MIGRATION_LOCK = 0x746F646F  # "todo": pg_advisory_xact_lock key of the schema migration
# The comment a migrated `todos` table carries: which schema (statements and function) wrote it. Another
# schema (a newer or older agent) migrates again, idempotently, and leaves its own mark.
SCHEMA_MARK = "orchestrator-agent todo schema " + hashlib.sha256(
    "\n".join((CAPABILITIES_FUNCTION, *SCHEMA)).encode()).hexdigest()[:16]


def current_schema(conn: psycopg.Connection[Any]) -> bool:
    """Whether the database's todos table carries this schema's mark (so there is nothing to migrate)."""
    row = conn.execute("SELECT obj_description(to_regclass('todos'), 'pg_class') AS mark").fetchone()
    return row is not None and row["mark"] == SCHEMA_MARK

_SWEEP = f"""
WITH expired AS (
    UPDATE todos SET status = 'pending', claimed_by = NULL, claim_token = NULL, lease_expires_at = NULL,
        claimed_at = NULL, updated_at = {NOW}
    WHERE id IN (SELECT id FROM todos WHERE status = 'in_progress' AND lease_expires_at <= {NOW}
                 FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
UPDATE todo_counters SET value = value + (SELECT count(*) FROM expired)
WHERE name = 'leases_expired' AND (SELECT count(*) FROM expired) > 0
"""


# finish() with the token of a live claim: the todo and, for done or failed, its flow counters under each
# capability it needs (`any` for none; a claimed todo's capability_names is never NULL), in one statement.
# work_ms as work_ms() in Python: whole milliseconds since the claim, never below 0, none without a claim time.
_FINISH_HELD = f"""
WITH finished AS (
    UPDATE todos SET status = %(status)s, updated_at = {NOW}, claim_token = NULL, lease_expires_at = NULL,
        claimed_by = CASE WHEN %(status)s = 'pending' THEN NULL ELSE claimed_by END,
        claimed_at = CASE WHEN %(status)s = 'pending' THEN NULL ELSE claimed_at END
    WHERE id = %(id)s AND status = 'in_progress' AND claim_token = %(token)s AND lease_expires_at > {NOW}
    RETURNING capability_names,
        -- GREATEST skips a NULL: a claim that recorded no claim time adds no work
        CASE WHEN claimed_at IS NOT NULL THEN GREATEST(0, round(({NOW} - claimed_at) * 1000))::bigint END AS work_ms
), counted AS (
    INSERT INTO todo_flow (kind, capability, value)
    SELECT flow.kind, cap, CASE flow.kind WHEN 'completed' THEN 1 ELSE finished.work_ms END
    FROM finished,
        unnest(CASE WHEN cardinality(finished.capability_names) = 0 THEN ARRAY['any']
                    ELSE finished.capability_names END) AS cap,
        (VALUES ('completed'), ('work_ms')) AS flow(kind)
    WHERE %(status)s IN ('done', 'failed') AND (flow.kind = 'completed' OR finished.work_ms IS NOT NULL)
    ON CONFLICT (kind, capability) DO UPDATE SET value = todo_flow.value + EXCLUDED.value
)
SELECT count(*) > 0 AS finished FROM finished
"""


class PostgresStore(TodoStore):
    """A PostgreSQL database reached through a small connection pool (opened on first use)."""

    def __init__(self, dsn: str, passfile: str | None = None, max_size: int = 4, timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.name = dsn
        kwargs: dict[str, Any] = {"row_factory": dict_row, "autocommit": True}
        if passfile:
            kwargs["passfile"] = passfile
        self._pool = ConnectionPool(dsn, min_size=1, max_size=max_size, kwargs=kwargs, timeout=timeout,
                                    open=False, name="todos")
        self._opened = False

    def _open(self) -> None:
        if self._opened:
            return
        self._pool.open()
        self._opened = True
        with self._tx() as conn:
            # A database this schema was written to says so on its table: every `agent todo` and worker
            # opens the store, and the migration's DDL (the function's CREATE OR REPLACE above all: it
            # rewrites its catalog row) would run each time.
            if current_schema(conn):
                return
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            utf8 = conn.execute("SELECT current_setting('server_encoding') = 'UTF8' AS utf8").fetchone()
            conn.execute(capabilities_function(utf8 is not None and bool(utf8["utf8"])))
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"COMMENT ON TABLE todos IS '{SCHEMA_MARK}'")

    @contextmanager
    def _tx(self, transaction: bool = True) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                if transaction:
                    with conn.transaction():
                        yield conn
                else:  # each statement its own transaction (the pool's connections autocommit)
                    yield conn
        except psycopg.OperationalError as exc:
            raise StoreError(f"postgres {self.name}: {str(exc).strip()}") from None

    @contextmanager
    def _use(self, transaction: bool = True) -> Iterator[psycopg.Connection[Any]]:
        try:
            self._open()
        except Exception as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"postgres {self.name}: {str(exc).strip()}") from None
        with self._tx(transaction) as conn:
            yield conn

    def add_many(self, titles: Iterable[str], priority: str = "normal",
                 capabilities: Iterable[str] | str = ()) -> list[int]:
        titles = check_titles(titles)
        check_priority(priority)
        caps = normal_capabilities(capabilities)
        with self._use() as conn:
            # One statement: the sequence numbers the rows in the order of the SELECT, so sorted ids are
            # the titles' order.
            rows = conn.execute(
                f"INSERT INTO todos (title, status, priority, capabilities, created_at, updated_at)"
                f" SELECT t.title, 'pending', %s, %s, {NOW}, {NOW}"
                f" FROM unnest(%s::text[]) WITH ORDINALITY AS t(title, n) ORDER BY t.n RETURNING id",
                (priority, caps, titles)).fetchall()
            for cap in flow_capabilities(caps):
                conn.execute(_FLOW, ("created", cap, len(rows)))
        return sorted(int(row["id"]) for row in rows)

    def list(self, status: str | None = None, limit: int = 1000) -> list[Todo]:
        check_status(status)
        with self._use() as conn:
            conn.execute(_SWEEP)
            where, args = ("WHERE status = %s", (status,)) if status else ("", ())
            rows = conn.execute(
                f"SELECT * FROM (SELECT * FROM todos {where} ORDER BY id LIMIT %s) t"
                f" ORDER BY {URGENCY}, created_at, id", (*args, limit)).fetchall()
        return [todo_from(r) for r in rows]

    def claim(self, worker: str, capabilities: Iterable[str] | None = None,
              lease: float = DEFAULT_LEASE) -> Todo | None:
        lease = check_lease(lease)
        fits, args = (("capability_names IS NOT NULL", ()) if capabilities is None
                      else ("capability_names <@ %s::text[]", (sorted(set(capabilities)),)))
        with self._use(transaction=False) as conn:
            # Two statements, each its own transaction (a round trip each, no BEGIN and COMMIT around
            # them): the sweep, then the most urgent, then oldest, todo that fits and nobody else holds
            # right now (SKIP LOCKED), taken as one UPDATE.
            conn.execute(_SWEEP)
            taken = conn.execute(
                f"""UPDATE todos SET status = 'in_progress', claimed_by = %s, claim_token = %s,
                        lease_expires_at = {NOW} + %s, claimed_at = {NOW}, updated_at = {NOW}
                    WHERE id = (SELECT id FROM todos WHERE status = 'pending' AND {fits}
                                ORDER BY {URGENCY}, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                    RETURNING *""", (worker, new_token(), lease, *args)).fetchone()
        return todo_from(taken) if taken is not None else None

    def renew(self, todo_id: int, token: str, lease: float = DEFAULT_LEASE) -> float | None:
        lease = check_lease(lease)
        with self._use() as conn:
            row = conn.execute(
                f"UPDATE todos SET lease_expires_at = {NOW} + %s, updated_at = {NOW}"
                f" WHERE id = %s AND status = 'in_progress' AND claim_token = %s AND lease_expires_at > {NOW}"
                " RETURNING lease_expires_at", (lease, todo_id, token)).fetchone()
        return float(row["lease_expires_at"]) if row else None

    def finish(self, todo_id: int, status: str = "done", token: str | None = None) -> Finish:
        if status not in ("done", "failed", "pending"):
            raise ValueError(f"status must be done, failed or pending, got {status!r}")
        if token is not None:
            # A worker finishing its own live claim, the common case: one statement, the todo and its flow
            # counters together. Anything else (no such todo, an expired or foreign token) is told apart below.
            with self._use(transaction=False) as conn:
                row = conn.execute(_FINISH_HELD, {"id": todo_id, "token": token, "status": status}).fetchone()
            if row is not None and row["finished"]:
                return Finish.OK
        with self._use() as conn:
            row = conn.execute(
                f"SELECT status, claim_token, lease_expires_at, lease_expires_at > {NOW} AS unexpired, capabilities,"
                f" {NOW} - claimed_at AS worked FROM todos WHERE id = %s FOR UPDATE", (todo_id,)).fetchone()
            if row is None:
                return Finish.MISSING
            live = row["status"] == "in_progress" and (row["lease_expires_at"] is None or row["unexpired"])
            if token is not None and not (live and row["claim_token"] == token):
                conn.execute("UPDATE todo_counters SET value = value + 1 WHERE name = 'completions_rejected'")
                return Finish.REJECTED
            if token is None and live and row["claim_token"] is not None:
                return Finish.CLAIMED
            conn.execute(
                f"UPDATE todos SET status = %s, updated_at = {NOW}, claim_token = NULL, lease_expires_at = NULL,"
                " claimed_by = CASE WHEN %s = 'pending' THEN NULL ELSE claimed_by END,"
                " claimed_at = CASE WHEN %s = 'pending' THEN NULL ELSE claimed_at END WHERE id = %s",
                (status, status, status, todo_id))
            if status in FINISHED and row["status"] not in FINISHED:
                # Only the live claim that finishes worked on it (an expired one's time is not work done).
                worked = work_ms(row["worked"] if live else None)
                for cap in flow_capabilities(row["capabilities"]):
                    conn.execute(_FLOW, ("completed", cap, 1))
                    if worked is not None:
                        conn.execute(_FLOW, ("work_ms", cap, worked))
            return Finish.OK

    def counters(self) -> dict[str, int]:
        with self._use() as conn:
            conn.execute(_SWEEP)
            found = {r["name"]: r["value"] for r in conn.execute("SELECT name, value FROM todo_counters")}
        return {name: int(found.get(name, 0)) for name in COUNTERS}

    def flow(self) -> dict[str, dict[str, int]]:
        with self._use() as conn:
            rows = conn.execute("SELECT kind, capability, value FROM todo_flow").fetchall()
        out: dict[str, dict[str, int]] = {kind: {} for kind in FLOWS}
        for row in rows:
            out.setdefault(row["kind"], {})[row["capability"]] = int(row["value"])
        return out

    def close(self) -> None:
        if self._opened:
            self._pool.close()
            self._opened = False
