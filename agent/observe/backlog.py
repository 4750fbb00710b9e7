"""Todo backlog sources (SQLite, PostgreSQL, JSON file, HTTP; Redis and SQL queues in agent/observe/queues.py),
read on their own interval, summed for export.

A broken source marks itself down with one log line naming the source and the error, and keeps its
last good counts out of the totals; the agent and the other sources carry on. A malformed row is not a
broken source: it is skipped and counted (agent/todos/row.py decides what a row may hold), and each kind
of fault is logged once per source while it lasts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config.sources import BacklogSource
from agent.observe.counts import ANY_CAPABILITY, OTHER_CAPABILITY, Counts, Key, SourceError, bounded
from agent.observe.httpclient import HttpClient
from agent.observe.queues import connect_read_only, read_redis, read_sql
from agent.todos.row import RowError, capabilities_json, validate_row

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("agent.backlog")

# What other modules take from here (Counts and its kin live in agent/observe/counts.py, shared with queues.py).
__all__ = ["ANY_CAPABILITY", "OTHER_CAPABILITY", "BacklogMonitor", "Counts", "Key", "SourceError", "bounded",
           "count_items", "read_http", "read_json_file", "read_postgres", "read_sqlite"]


def _item_name(i: int, item: Any) -> str:
    ident = item.get("id") if isinstance(item, dict) else None
    if isinstance(ident, int | str) and not isinstance(ident, bool) and len(str(ident)) <= 40:
        return f"item {i} (id {ident})"
    return f"item {i}"


def count_items(items: Any, name: str) -> Counts:
    """Counts from a list of todo objects (the seed's todo file shape, or {"todos": [...]})."""
    if isinstance(items, dict) and isinstance(items.get("todos"), list):
        items = items["todos"]
    if not isinstance(items, list):
        raise SourceError(f"{name}: expected a JSON list of todo objects, got {type(items).__name__}")
    counts = Counts()
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise RowError("row", "must be an object", item)
            caps = item["capabilities"] if "capabilities" in item else item.get("required_capabilities")
            row = validate_row(item.get("status", "pending"), item.get("priority", "normal"), caps,
                               item.get("created_at"))
        except RowError as exc:
            counts.skip(_item_name(i, item), exc)
            continue
        counts.add(row.status, row.priority, row.capabilities, row.created_at)
    return counts


# Rows that validate alike are read as one group: same status, priority and capabilities text, and a
# numeric created_at (of which only the oldest matters) or else the same created_at value. So the SQL
# still does the counting, and every distinct row shape still goes through validate_row. A todo whose
# lease ran out counts as pending (the next write of a worker sweeps it back; docs/todos.md).
_EXPIRED = "status = 'in_progress' AND lease_expires_at IS NOT NULL AND lease_expires_at <= {now}"
_STATUS = f"CASE WHEN {_EXPIRED} THEN 'pending' ELSE status END"
_SQLITE_GROUPS = """
SELECT MIN(id), COUNT(*), {status}, priority, capabilities, MIN(created_at) FROM todos
GROUP BY {status}, priority, capabilities,
    CASE WHEN typeof(created_at) IN ('integer', 'real') AND abs(created_at) < 1e300 THEN ''
         ELSE typeof(created_at) || ':' || coalesce(created_at, '') END
"""
_PG_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
_PG_GROUPS = f"""
SELECT MIN(id), COUNT(*), {_STATUS.format(now=_PG_NOW)} AS st, priority, capabilities, MIN(created_at)
FROM todos GROUP BY st, priority, capabilities
"""


def _count_groups(groups: Iterable[tuple[Any, ...]]) -> Counts:
    counts = Counts()
    for first_id, n, status, priority, caps_text, created_at in groups:
        try:
            row = validate_row(status, priority, capabilities_json(caps_text), created_at)
        except RowError as exc:
            more = f" (and {n - 1} more like it)" if n > 1 else ""
            counts.skip(f"id {first_id}{more}", exc, n)
            continue
        counts.add(row.status, row.priority, row.capabilities, row.created_at, n)
    return counts


def read_sqlite(path: Path, timeout: float) -> Counts:
    """Aggregate the todos table in SQL (read-only: the agent never writes the backlog)."""
    if not path.exists():
        raise SourceError(f"sqlite {path}: file not found")
    import sqlite3  # here: an agent with no sqlite source never loads it (docs/benchmarks.md "Memory")

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise SourceError(f"sqlite {path}: {exc}") from None
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(todos)")}
        leases = "lease_expires_at" in columns  # a file from before leases (or another program's) has none
        now = repr(time.time())
        status = _STATUS.format(now=now) if leases else "status"
        groups = conn.execute(_SQLITE_GROUPS.format(status=status)).fetchall()
        counters: dict[str, int] | None = None
        flow: dict[tuple[str, str], float] | None = None
        if leases:
            has_counters = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'todo_counters'").fetchone()
            stored = dict(conn.execute("SELECT name, value FROM todo_counters").fetchall()) if has_counters else {}
            unswept = conn.execute(f"SELECT COUNT(*) FROM todos WHERE {_EXPIRED.format(now=now)}").fetchone()[0]
            counters = _counters(stored, unswept)
            has_flow = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'todo_flow'").fetchone()
            flow = _flow(conn.execute("SELECT kind, capability, value FROM todo_flow").fetchall()) if has_flow else {}
    except sqlite3.Error as exc:
        raise SourceError(f"sqlite {path}: {exc}") from None
    finally:
        conn.close()
    counts = _count_groups(groups)
    counts.counters = counters
    counts.flow = flow
    return counts


def _flow(rows: Iterable[tuple[Any, ...]]) -> dict[tuple[str, str], float]:
    """The todo_flow rows as counts; the store's `work_ms` as `work_seconds`, in seconds (base units)."""
    out: dict[tuple[str, str], float] = {}
    for kind, cap, value in rows:
        if kind == "work_ms":
            out[("work_seconds", str(cap))] = int(value) / 1000
        else:
            out[(str(kind), str(cap))] = int(value)
    return out


def _counters(stored: dict[str, Any], unswept: int) -> dict[str, int]:
    # Expired leases not yet swept count already, so the counter never waits for a worker's next call
    # (the sweep moves them from `unswept` into the stored value: the sum never goes down).
    return {"leases_expired": int(stored.get("leases_expired", 0)) + int(unswept),
            "completions_rejected": int(stored.get("completions_rejected", 0))}


def read_postgres(dsn: str, passfile: Path | None, timeout: float) -> Counts:
    """Aggregate the shared todos table in one read-only transaction (the dsn carries no password)."""
    import psycopg

    where = f"postgres {dsn}"
    try:
        with connect_read_only(dsn, passfile, timeout) as conn:
            if conn.execute("SELECT to_regclass('todos')").fetchone() in (None, (None,)):
                raise SourceError(f"{where}: no todos table yet (the first `agent todo` or worker creates it)")
            groups = conn.execute(_PG_GROUPS).fetchall()
            has_counters = conn.execute("SELECT to_regclass('todo_counters')").fetchone() not in (None, (None,))
            stored = dict(conn.execute("SELECT name, value FROM todo_counters").fetchall()) if has_counters else {}
            unswept_row = conn.execute(f"SELECT COUNT(*) FROM todos WHERE {_EXPIRED.format(now=_PG_NOW)}").fetchone()
            has_flow = conn.execute("SELECT to_regclass('todo_flow')").fetchone() not in (None, (None,))
            flow = _flow(conn.execute("SELECT kind, capability, value FROM todo_flow").fetchall()) if has_flow else {}
    except psycopg.Error as exc:
        raise SourceError(f"{where}: {type(exc).__name__}: {str(exc).strip()}") from None
    counts = _count_groups(groups)
    counts.counters = _counters(stored, unswept_row[0] if unswept_row else 0)
    counts.flow = flow
    return counts


def read_json_file(path: Path) -> Counts:
    """Read a JSON todo file; syntax errors name the line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError(f"json {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"json {path}: cannot read: {exc}") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"json {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise SourceError(f"json {path}: JSON nested too deeply") from None
    return count_items(items, f"json {path}")


async def read_http(client: httpx.AsyncClient, url: str, timeout: float) -> Counts:
    """GET a URL that returns the JSON todo list."""
    import httpx  # imported with the client already (agent/observe/httpclient.py)

    try:
        response = await client.get(url, timeout=timeout)
        response.raise_for_status()
        items = response.json()
    except httpx.HTTPStatusError as exc:
        raise SourceError(f"http {url}: status {exc.response.status_code}") from None
    except httpx.HTTPError as exc:
        raise SourceError(f"http {url}: {type(exc).__name__}: {exc}") from None
    except ValueError as exc:
        raise SourceError(f"http {url}: body is not JSON: {exc}") from None
    except RecursionError:
        raise SourceError(f"http {url}: JSON nested too deeply") from None
    return count_items(items, f"http {url}")


@dataclass
class SourceStatus:
    spec: BacklogSource
    up: bool = False
    last_success: float = 0.0
    duration: float = 0.0
    error: str = ""
    counts: Counts = field(default_factory=Counts)
    counters: dict[str, int] | None = None  # the store's counters as last read (kept while the source is down)
    flow: dict[tuple[str, str], float] | None = None  # the store's flow counters as last read (likewise)
    logged: set[str] = field(default_factory=set)  # kinds of row fault already logged, while they last
    logged_unmapped: set[str] = field(default_factory=set)  # unmapped status values already logged, likewise


class BacklogMonitor:
    """Reads every source on its interval; `totals` is what the scrape reads."""

    def __init__(self, sources: list[BacklogSource], client: HttpClient) -> None:
        self.client = client
        self.sources = {s.label: SourceStatus(s) for s in sources}
        self.totals = Counts()
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._running = False

    async def read(self, status: SourceStatus) -> None:
        """Read one source once and update its status (never raises for source errors)."""
        spec = status.spec
        started = time.perf_counter()
        try:
            if spec.kind == "sqlite":
                assert spec.path is not None
                counts = await asyncio.to_thread(read_sqlite, spec.path, spec.timeout)
            elif spec.kind == "postgres":
                assert spec.dsn is not None
                counts = await asyncio.to_thread(read_postgres, spec.dsn, spec.passfile, spec.timeout)
            elif spec.kind == "json":
                assert spec.path is not None
                counts = await asyncio.to_thread(read_json_file, spec.path)
            elif spec.kind == "redis":
                counts = await asyncio.to_thread(read_redis, spec)
            elif spec.kind == "sql":
                counts = await asyncio.to_thread(read_sql, spec)
            else:
                assert spec.url is not None
                counts = await read_http(self.client.get(), spec.url, spec.timeout)
        except Exception as exc:
            # A fault no check foresaw still only takes this source down (traceback logged once).
            unforeseen = not isinstance(exc, SourceError)
            message = f"unexpected {type(exc).__name__}: {exc}" if unforeseen else str(exc)
            status.duration = time.perf_counter() - started
            if status.up or status.error != message:
                log.error("backlog source %s is down: %s", spec.label, message, exc_info=unforeseen)
            status.up = False
            status.error = message
            status.counts = Counts()
        else:
            status.duration = time.perf_counter() - started
            if not status.up and status.error:
                log.info("backlog source %s is up again", spec.label)
            status.up = True
            status.error = ""
            status.last_success = time.time()
            status.counts = counts
            if counts.counters is not None:
                status.counters = counts.counters
            if counts.flow is not None:
                status.flow = counts.flow
            self._log_problems(status)
        self._total()

    @staticmethod
    def _log_problems(status: SourceStatus) -> None:
        """Log each kind of row fault, and each unmapped status value, once while it lasts (kinds are a fixed
        set, values at most MAX_UNMAPPED_VALUES a read, so this stays small)."""
        counts = status.counts
        for kind, example in counts.problems.items():
            if kind not in status.logged:
                log.warning("backlog source %s: %s; skipped (%d malformed row(s) in this read, counted in "
                            "orchestrator_todo_invalid_rows)", status.spec.label, example, counts.invalid)
        status.logged = set(counts.problems)
        for value, n in counts.unmapped_values.items():
            if value not in status.logged_unmapped:
                log.warning("backlog source %s: status %s is not in status_map; %d todo(s) with it left out of the "
                            "backlog (counted in orchestrator_todo_unmapped_rows)", status.spec.label, value, n)
        status.logged_unmapped = set(counts.unmapped_values)

    def pending(self, capabilities: Iterable[str]) -> int | None:
        """Pending todos that need any of `capabilities`, summed per capability as the rules do; None
        unless every source was read at its last try (unknown, never 0)."""
        if not self.sources or not all(s.up for s in self.sources.values()):
            return None
        wanted = set(capabilities)
        return sum(n for (status, _, cap), n in self.totals.by_key.items() if status == "pending" and cap in wanted)

    def _total(self) -> None:
        totals = Counts()
        for status in self.sources.values():
            totals.merge(status.counts)
        self.totals = totals

    async def read_all(self) -> None:
        """Read every source once, concurrently."""
        await asyncio.gather(*(self.read(s) for s in self.sources.values()))

    async def _source_loop(self, status: SourceStatus) -> None:
        while True:
            try:
                await self.read(status)
            except Exception:
                log.exception("backlog source %s: unexpected error", status.spec.label)
            await asyncio.sleep(status.spec.interval)

    def configure(self, sources: list[BacklogSource]) -> None:
        """A reload's sources: new or changed ones start reading now, removed ones stop and leave the totals."""
        current = {s.label: s for s in sources}
        for label in list(self.sources):
            if current.get(label) != self.sources[label].spec:
                del self.sources[label]
                task = self._loops.pop(label, None)
                if task is not None:
                    task.cancel()
        for label, spec in current.items():
            self.sources.setdefault(label, SourceStatus(spec))
        self._total()
        if self._running:
            self._sync()

    def _sync(self) -> None:
        for label, status in self.sources.items():
            if label not in self._loops:
                self._loops[label] = asyncio.ensure_future(self._source_loop(status))

    async def run(self) -> None:
        """Read each source on its own interval until cancelled (a reload may add or remove sources)."""
        self._running = True
        self._sync()
        try:
            await asyncio.Event().wait()
        finally:
            self._running = False
            for task in self._loops.values():
                task.cancel()
            self._loops.clear()
