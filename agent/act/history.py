"""What the remediation remembers across an agent restart: the timestamps behind its cooldown and
scale-down stabilisation (`remediation.json`), and the decisions `agent history` shows (`history.jsonl`).

Without them a restarted agent would scale down at once after a scale-up, and forget what it did.
Both are checked when read, as state.json is: a bad `remediation.json` is set aside (`.corrupt`) and
the agent starts with no timestamps; unreadable lines of `history.jsonl` are dropped, the file set
aside and the readable entries written back.

`remediation.json` is small and saved whole by the StateStore writer thread. The history is
appended by a writer thread of its own, in batches of the lines of up to 50 ms (never an fsync, never a
disk wait on the event loop), and compacted to the last `max_entries` entries when it holds twice as many.

When a write fails (disk full, read-only) its lines stay queued, in order, and the writer tries again every
RETRY_SECONDS: what is decided meanwhile reaches the file once space returns. The queue then holds at most
`max_entries` lines (no more than the history shows); older unwritten lines are dropped, counted
(`dropped`, on /metrics) and logged once per streak, as are the lines still queued when the agent stops
or re-executes on a broken disk. A half-written append is cut off again, so no torn line is left behind.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, TypeAdapter, ValidationError

from agent.supervise.state import JsonStore, atomic_write_bytes, private

log = logging.getLogger("agent.remediation")

STAMPS_FILE = "remediation.json"
HISTORY_FILE = "history.jsonl"
MAX_LINE_BYTES = 64 * 1024
BATCH_SECONDS = 0.05  # the writer thread gathers lines this long before it writes them
RETRY_SECONDS = 1.0  # after a failed write, the writer tries its queued lines again this much later

Stamp = Annotated[FiniteFloat, Field(ge=0)]


class StampsFile(BaseModel):
    """remediation.json: per component, when an alert last restarted it and last scaled it up (epoch s);
    and when the alert pipeline's last heartbeat came (agent/act/pipeline.py)."""

    model_config = ConfigDict(strict=True, extra="allow")
    last_scale_up: dict[str, Stamp] = Field(default_factory=dict)
    last_alert_restart: dict[str, Stamp] = Field(default_factory=dict)
    last_heartbeat: Stamp | None = None


class Stamps:
    """The cooldown and stabilisation timestamps and the last heartbeat, kept in memory and saved whole on
    every change."""

    def __init__(self, state_dir: Path) -> None:
        self.store = JsonStore(state_dir / STAMPS_FILE, StampsFile)
        self.last_scale_up: dict[str, float] = dict(self.store.loaded.last_scale_up)
        self.last_alert_restart: dict[str, float] = dict(self.store.loaded.last_alert_restart)
        self.last_heartbeat: float | None = self.store.loaded.last_heartbeat

    def keep_only(self, names: Collection[str]) -> None:
        """Forget the components no longer configured (one added again under the name starts with no
        cooldown), in memory and in remediation.json; at start and after every reload."""
        gone = [n for n in (*self.last_scale_up, *self.last_alert_restart) if n not in names]
        for name in gone:
            self.last_scale_up.pop(name, None)
            self.last_alert_restart.pop(name, None)
        if gone:
            self.save()

    def save(self) -> None:
        self.store.data["last_scale_up"] = dict(self.last_scale_up)
        self.store.data["last_alert_restart"] = dict(self.last_alert_restart)
        self.store.data["last_heartbeat"] = self.last_heartbeat
        self.store.save()

    def save_heartbeat(self, ts: float) -> None:
        """Remember the last heartbeat (queued for the writer thread: a failed write is counted, never raised)."""
        self.last_heartbeat = ts
        self.save()

    def close(self, timeout: float = 10.0) -> bool:
        return self.store.close(timeout)


@dataclass
class AuditEntry:
    """One `agent history` entry: a remediation decision or a manual command, as shown and as written."""

    # Lines read back from history.jsonl are validated against these fields, strictly.
    __pydantic_config__ = ConfigDict(strict=True, extra="forbid")
    ts: FiniteFloat
    alertname: str
    component: str
    action: str
    result: str
    reason: str
    fingerprint: str
    status: str
    trace_id: str
    source: str = "webhook"
    target: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_LINE = TypeAdapter(AuditEntry)
# json.dumps with arguments builds an encoder per call: one, for every line of the history.
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":")).encode


def _encode(entry: Any) -> bytes:
    return _ENCODE(vars(entry)).encode()


class History:
    """The last `max_entries` decisions, in memory and in `history.jsonl`."""

    def __init__(self, path: Path | None, max_entries: int = 1000) -> None:
        self.path = path
        self.max_entries = max_entries
        self.entries: collections.deque[AuditEntry] = collections.deque(maxlen=max_entries)
        # Each entry's line as appended (None: read from the file, encoded again when the file is compacted),
        # so a compaction joins the lines it has instead of encoding a thousand entries again.
        self._encoded: collections.deque[bytes | None] = collections.deque(maxlen=max_entries)
        self.write_errors = 0
        self.dropped = 0  # lines that never reached the file (exported as a counter)
        self._lines = 0  # lines in the file as written (compaction when it holds 2 x max_entries)
        self._failing = False
        self._dropping = False  # lines were dropped since the last good write (logged once per streak)
        self._torn = False  # an append could not be cut off again: the next write replaces the file
        self._held = False  # the last write failed: the queue holds lines for the retry, bounded by max_entries
        self._retry_at = 0.0  # while writes fail: when the writer tries its queued lines again (monotonic)
        self._cond = threading.Condition()
        self._queue: collections.deque[bytes] = collections.deque()  # lines not yet written, oldest first
        self._closed = False
        self._thread: threading.Thread | None = None
        if path is not None:
            self._load(path)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read the history %s (%s); starting with an empty history", path, exc)
            return
        bad, reason = 0, ""
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = _LINE.validate_json(line)
            except ValidationError as exc:
                bad += 1
                if not reason:
                    err = exc.errors(include_url=False)[0]
                    where = ".".join(str(p) for p in err["loc"])
                    reason = f"line {number}: {where + ': ' if where else ''}{err['msg']}"
                continue
            self.entries.append(entry)
            self._encoded.append(None)
            self._lines += 1
        if bad:
            aside = path.with_name(path.name + ".corrupt")
            try:
                os.replace(path, aside)
                self._rewrite(list(zip(self.entries, self._encoded, strict=True)))
            except OSError as exc:
                log.error("history %s: %d unreadable line(s) (%s); could not set it aside: %s",
                          path, bad, reason, exc)
                return
            log.error("history %s: %d unreadable line(s) (first: %s); kept as %s, the %d readable entries "
                      "rewritten", path, bad, reason, aside, len(self.entries))

    def append(self, entry: Any) -> None:
        """Keep an entry and queue its line for the writer thread (returns at once)."""
        line = None
        if self.path is not None:
            line = _encode(entry)
        with self._cond:
            self.entries.append(entry)
            self._encoded.append(line)
            # A line the reader would not take back is kept in memory only.
            if line is None or self._closed or len(line) > MAX_LINE_BYTES:
                return
            self._queue.append(line + b"\n")
            if self._held and len(self._queue) > self.max_entries:
                self._drop(len(self._queue) - self.max_entries)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
                self._thread.start()
            if len(self._queue) == 1:  # the writer sleeps only on an empty queue: wake it once per batch
                self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer thread (at shutdown and before a reexec); lines the disk
        still refuses then are dropped and counted."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _drop(self, n: int) -> None:
        """Under the lock: forget the `n` oldest unwritten lines, counted, and logged once per streak."""
        for _ in range(n):
            self._queue.popleft()
        self.dropped += n
        if not self._dropping:
            log.error("history %s: more than %d lines wait for the disk; the oldest are dropped (counted in "
                      "orchestrator_history_entries_dropped_total)", self.path, self.max_entries)
        self._dropping = True

    def _wait_for_work(self) -> None:
        """Under the lock: until the history closes, or lines are queued and no failed write holds them back."""
        while not self._closed:
            if self._queue:
                wait = self._retry_at - time.monotonic()
                if wait <= 0:
                    return
                self._cond.wait(wait)
            else:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._wait_for_work()
                # Lines that come within BATCH_SECONDS go out in one write: a webhook under load decides
                # thousands of times a second, and a wake-up and a write for each cost it a quarter of its time.
                self._cond.wait_for(lambda: self._closed, BATCH_SECONDS)
                batch = list(self._queue)
                self._queue.clear()
                if not batch and self._closed:
                    return
                # Taken with the batch: the snapshot holds exactly the lines queued so far.
                snapshot = list(zip(self.entries, self._encoded, strict=True)) \
                    if self._torn or self._lines + len(batch) >= 2 * self.max_entries else None
            error = self._write(batch, snapshot)
            with self._cond:
                self._held = error is not None
                if error is None:
                    continue
                self.write_errors += 1
                # Kept, in order, before what came meanwhile, and tried again: the file catches up once
                # space returns. Bounded as the history is: the oldest go beyond max_entries.
                self._queue.extendleft(reversed(batch))
                if len(self._queue) > self.max_entries:
                    self._drop(len(self._queue) - self.max_entries)
                self._retry_at = time.monotonic() + RETRY_SECONDS
                if self._closed:  # the last try at shutdown: what is left is lost
                    left = len(self._queue)
                    self._queue.clear()
                    self.dropped += left
                    log.error("history %s: %d line(s) not written at shutdown (%s); they are lost", self.path,
                              left, error)
                    return

    def _write(self, batch: list[bytes], snapshot: list[tuple[Any, bytes | None]] | None) -> OSError | None:
        """Write a batch (or the snapshot, replacing the file); the error when it failed."""
        assert self.path is not None
        try:
            if snapshot is not None:
                self._rewrite(snapshot)
                self._torn = False
            else:
                self._append(b"".join(batch))
                self._lines += len(batch)
        except OSError as exc:
            if not self._failing:
                log.error("cannot write the history %s (%s); it is kept in memory, its lines queued and tried "
                          "again every %g s", self.path, exc, RETRY_SECONDS)
            self._failing = True
            return exc
        if self._failing:
            log.warning("history %s writable again", self.path)
        self._failing = self._dropping = False
        return None

    def _append(self, blob: bytes) -> None:
        """Append whole lines: a write cut short (a full disk) is cut off again, so no torn line stays."""
        assert self.path is not None
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            private(fd)
            size = os.fstat(fd).st_size
            view = memoryview(blob)
            try:
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                if len(view) < len(blob):
                    try:
                        os.ftruncate(fd, size)
                    except OSError:
                        self._torn = True
                raise
        finally:
            os.close(fd)

    def _rewrite(self, entries: list[tuple[Any, bytes | None]]) -> None:
        """Replace the file with these entries, each as its line if it has one (atomic: the old file or the new one)."""
        assert self.path is not None
        blob = b"".join((_encode(e) if line is None else line) + b"\n" for e, line in entries)
        atomic_write_bytes(self.path, blob)
        self._lines = len(entries)
