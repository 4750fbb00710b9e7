"""Todo backlog sources (SQLite, JSON file, HTTP), read on their own interval, summed for export.

A broken source marks itself down with one log line naming the source and the error, and keeps its
last good counts out of the totals; the agent and the other sources carry on.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.config import BacklogSource
from agent.todos import PRIORITIES, STATUSES

log = logging.getLogger("agent.backlog")

ANY_CAPABILITY = "any"
_STATUS_ALIASES = {"todo": "pending", "open": "pending", "new": "pending", "queued": "pending",
                   "in-progress": "in_progress", "in progress": "in_progress", "running": "in_progress",
                   "active": "in_progress", "completed": "done", "complete": "done", "closed": "done",
                   "error": "failed", "cancelled": "failed"}
_PRIORITY_ALIASES = {"medium": "normal", "moderate": "normal", "urgent": "critical", "highest": "critical",
                     "lowest": "low", "p0": "critical", "p1": "high", "p2": "normal", "p3": "low"}

Key = tuple[str, str, str]  # status, priority, capability


class SourceError(Exception):
    """A source that cannot be read; the message names the source and what is wrong."""


@dataclass
class Counts:
    """Backlog counts of one read."""

    by_key: collections.Counter[Key] = field(default_factory=collections.Counter)
    oldest_pending: dict[str, float] = field(default_factory=dict)  # priority -> created_at (epoch s)

    def add(self, status: str, priority: str, capabilities: Iterable[str], created_at: float | None,
            n: int = 1) -> None:
        caps = list(capabilities) or [ANY_CAPABILITY]
        for cap in caps:
            self.by_key[(status, priority, cap)] += n
        if status == "pending" and created_at is not None:
            prev = self.oldest_pending.get(priority)
            if prev is None or created_at < prev:
                self.oldest_pending[priority] = created_at

    def merge(self, other: Counts) -> None:
        self.by_key.update(other.by_key)
        for priority, created in other.oldest_pending.items():
            prev = self.oldest_pending.get(priority)
            if prev is None or created < prev:
                self.oldest_pending[priority] = created


def _normalise(value: Any, allowed: tuple[str, ...], aliases: dict[str, str], what: str, where: str) -> str:
    if not isinstance(value, str):
        raise SourceError(f"{where}: {what} must be a string, got {value!r}")
    key = value.strip().lower()
    key = aliases.get(key, key)
    if key not in allowed:
        raise SourceError(f"{where}: {what} {value!r} is not one of {', '.join(allowed)}")
    return key


def _created_at(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        from datetime import datetime

        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def count_items(items: Any, name: str) -> Counts:
    """Counts from a list of todo objects (the seed's todo file shape, or {"todos": [...]})."""
    if isinstance(items, dict) and isinstance(items.get("todos"), list):
        items = items["todos"]
    if not isinstance(items, list):
        raise SourceError(f"{name}: expected a JSON list of todo objects, got {type(items).__name__}")
    counts = Counts()
    for i, item in enumerate(items):
        where = f"{name}: item {i}"
        if not isinstance(item, dict):
            raise SourceError(f"{where}: expected an object, got {type(item).__name__}")
        status = _normalise(item.get("status", "pending"), STATUSES, _STATUS_ALIASES, "status", where)
        priority = _normalise(item.get("priority", "normal"), PRIORITIES, _PRIORITY_ALIASES, "priority", where)
        caps = item.get("capabilities", item.get("required_capabilities", [])) or []
        if isinstance(caps, str):
            caps = [c.strip() for c in caps.split(",") if c.strip()]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise SourceError(f"{where}: capabilities must be a list of names")
        counts.add(status, priority, caps, _created_at(item.get("created_at")))
    return counts


def read_sqlite(path: Path, timeout: float) -> Counts:
    """Aggregate the todos table in SQL (read-only: the agent never writes the backlog)."""
    if not path.exists():
        raise SourceError(f"sqlite {path}: file not found")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise SourceError(f"sqlite {path}: {exc}") from None
    try:
        rows = conn.execute(
            "SELECT status, priority, capabilities, COUNT(*), MIN(created_at) FROM todos"
            " GROUP BY status, priority, capabilities"
        ).fetchall()
    except sqlite3.Error as exc:
        raise SourceError(f"sqlite {path}: {exc}") from None
    finally:
        conn.close()
    counts = Counts()
    for status, priority, caps_json, n, oldest in rows:
        try:
            caps = json.loads(caps_json or "[]")
        except ValueError:
            caps = []
        counts.add(status, priority, caps, oldest, n)
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
    return count_items(items, f"json {path}")


async def read_http(client: httpx.AsyncClient, url: str, timeout: float) -> Counts:
    """GET a URL that returns the JSON todo list."""
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
    return count_items(items, f"http {url}")


@dataclass
class SourceStatus:
    spec: BacklogSource
    up: bool = False
    last_success: float = 0.0
    duration: float = 0.0
    error: str = ""
    counts: Counts = field(default_factory=Counts)


class BacklogMonitor:
    """Reads every source on its interval; `totals` is what the scrape reads."""

    def __init__(self, sources: list[BacklogSource], client: httpx.AsyncClient) -> None:
        self.client = client
        self.sources = {s.label: SourceStatus(s) for s in sources}
        self.totals = Counts()

    async def read(self, status: SourceStatus) -> None:
        """Read one source once and update its status (never raises for source errors)."""
        spec = status.spec
        started = time.perf_counter()
        try:
            if spec.kind == "sqlite":
                assert spec.path is not None
                counts = await asyncio.to_thread(read_sqlite, spec.path, spec.timeout)
            elif spec.kind == "json":
                assert spec.path is not None
                counts = await asyncio.to_thread(read_json_file, spec.path)
            else:
                assert spec.url is not None
                counts = await read_http(self.client, spec.url, spec.timeout)
        except SourceError as exc:
            status.duration = time.perf_counter() - started
            if status.up or status.error != str(exc):
                log.error("backlog source %s is down: %s", spec.label, exc)
            status.up = False
            status.error = str(exc)
            status.counts = Counts()
        else:
            status.duration = time.perf_counter() - started
            if not status.up and status.error:
                log.info("backlog source %s is up again", spec.label)
            status.up = True
            status.error = ""
            status.last_success = time.time()
            status.counts = counts
        self._total()

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

    async def run(self) -> None:
        """Read each source on its own interval, forever."""
        await asyncio.gather(*(self._source_loop(s) for s in self.sources.values()))
