"""Size rotation of the component logs: copy-and-truncate, each log checked again about when its growth
rate says it will be full (agent/supervise/rotation.py runs the loop)."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

# The shortest delay between two checks of one growing log: a log that fills faster than this is caught
# late by what its child writes in about this long (see docs/operations.md, "Spawns and component logs").
FASTEST_CHECK = 0.02
_LINE_SEARCH = 64 * 1024  # how far past the cut a backup may skip to start at a whole line


def _copy_tail(src: Path, dst: Path, max_bytes: int) -> None:
    """Copy the last `max_bytes` of src (from the first line start in them) to dst, in the kernel."""
    # The backup is created 0600, then given the log's own mode and group (0640 with agent.log_group).
    with open(src, "rb") as fin, open(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fout:
        source = os.fstat(fin.fileno())
        os.fchmod(fout.fileno(), stat.S_IMODE(source.st_mode))
        if os.fstat(fout.fileno()).st_gid != source.st_gid:
            os.fchown(fout.fileno(), -1, source.st_gid)
        start = max(0, source.st_size - max_bytes)
        if start:
            fin.seek(start - 1)
            if fin.read(1) != b"\n":
                line = fin.readline(_LINE_SEARCH)
                if line.endswith(b"\n"):
                    start = fin.tell()
        # Up to the end as it is now, not as it was: what the child writes meanwhile is kept, not lost.
        while sent := os.sendfile(fout.fileno(), fin.fileno(), start, 1 << 20):
            start += sent


def rotate_if_large(path: Path, max_bytes: int, backups: int) -> bool:
    """Copy-and-truncate rotation of a file a child holds open with O_APPEND.

    The child keeps writing to the same descriptor; O_APPEND puts its next write at the new end, so the
    file cannot be renamed away from it. The backup keeps the newest `max_bytes` (from a line start):
    when a check comes late, the older overshoot is dropped rather than kept, so each backup stays
    near `max_bytes`. Lines written between the end of the copy and the truncate are lost (microseconds).
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    _rotate(path, max_bytes, backups)
    return True


def _rotate(path: Path, max_bytes: int, backups: int) -> None:
    """`rotate_if_large` once the file is known to be over `max_bytes`."""
    if backups == 0:
        os.truncate(path, 0)
        return
    # The copy is made aside and renamed in: a reader never finds `.1` empty or half written.
    fresh = path.with_name(f".{path.name}.1.new")
    try:
        _copy_tail(path, fresh, max_bytes)
    except OSError:
        # A copy cut short (a full disk) would hold the little space left until the next try: remove it.
        with contextlib.suppress(OSError):
            fresh.unlink()
        raise
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    os.replace(fresh, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)


# The most logs one `check` looks at: with many components every idle log comes due at about the same
# moment, and one pass over all of them held the interpreter lock long enough to delay the event loop
# (a restart). The caller calls again at once when more are due.
BATCH = 64
# A log as the rotator keys it. The agent passes strings: a Path each costs more memory at many
# replicas (docs/benchmarks.md, Memory).
LogPath = str | Path


class LogRotator:
    """Rotates component logs, checking each one again about when its growth rate says it will be full.

    The delay before the next check at most doubles from one check to the next: a child that stalls
    for a moment (a loaded machine) shows a low rate once, and when it resumes at full speed the check
    after comes twice as late, not `slowest` late. A new or idle log works up to `slowest` in a few
    checks from FASTEST_CHECK.

    The logs wait in a heap by due time: a `check` looks only at those due (at most `batch` of them),
    not at every log, and syncs its set of logs only when it is handed a different list (the caller
    keeps one list while the components do not change).

    `check` does blocking file work (stat, copy, truncate): the agent calls it in a thread of its own.
    """

    def __init__(self, max_bytes: int, backups: int, slowest: float,
                 clock: Callable[[], float] = time.monotonic, batch: int = BATCH) -> None:
        self.max_bytes, self.backups, self.slowest, self._clock = max_bytes, backups, slowest, clock
        self.batch = batch
        self._paths: list[LogPath] | None = None  # the list last synced (compared by identity)
        self._heap: list[tuple[float, int, LogPath]] = []  # (due, ticket, path); stale when the ticket moved on
        self._ticket: dict[LogPath, int] = {}  # every log tracked, and the ticket of its live heap entry
        self._tickets = itertools.count()
        self._last: dict[LogPath, tuple[float, int]] = {}  # when last checked, and the size left then
        self._delays: dict[LogPath, float] = {}  # the delay last chosen, which the next may at most double
        self._errors: dict[LogPath, str] = {}

    def _schedule(self, path: LogPath, due: float) -> None:
        ticket = next(self._tickets)
        self._ticket[path] = ticket
        heapq.heappush(self._heap, (due, ticket, path))

    def _sync(self, paths: list[LogPath]) -> None:
        """Track these logs: new ones are due now, the others keep their schedule, the rest are forgotten."""
        self._paths = paths
        live = set(paths)
        for gone in [p for p in self._ticket if p not in live]:  # replicas that went away
            del self._ticket[gone]  # its heap entry is now stale: dropped when it comes up
            self._last.pop(gone, None)
            self._delays.pop(gone, None)
            self._errors.pop(gone, None)
        now = self._clock()
        for path in paths:
            if path not in self._ticket:
                self._schedule(path, now)
        if len(self._heap) > 2 * len(self._ticket) + self.batch:  # many stale entries: rebuild
            self._heap = [e for e in self._heap if self._ticket.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def check(self, paths: list[LogPath]) -> float:
        """Check the logs that are due (up to `batch`), rotate those over max_bytes; seconds until the
        next is due (0 when more are due already).

        Pass the same list object while the set of logs is unchanged: a different one is synced (O(N)).
        """
        if paths is not self._paths:
            self._sync(paths)
        heap, checked = self._heap, 0
        while heap and checked < self.batch:
            due, ticket, path = heap[0]
            now = self._clock()
            if due > now:
                break
            heapq.heappop(heap)
            if self._ticket.get(path) != ticket:
                continue  # forgotten, or rescheduled since
            checked += 1
            self._schedule(path, now + self._check_one(path, now))
        now = self._clock()
        while heap and self._ticket.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        return max(0.0, heap[0][0] - now) if heap else self.slowest

    def _check_one(self, path: LogPath, now: float) -> float:
        """Stat one log and rotate it when it is over max_bytes; the delay before its next check."""
        try:
            size = left = os.stat(path).st_size
            if size > self.max_bytes:
                _rotate(Path(path), self.max_bytes, self.backups)
                left = os.stat(path).st_size
        except FileNotFoundError:
            size = left = 0
        except OSError as exc:
            if self._errors.get(path) != str(exc):  # once per problem, not once per check
                logging.getLogger("agent").error("cannot rotate %s: %s", path, exc)
                self._errors[path] = str(exc)
            return self.slowest
        self._errors.pop(path, None)
        delay = min(self._delay(path, now, size, left), 2 * self._delays.get(path, FASTEST_CHECK / 2))
        self._delays[path] = delay
        self._last[path] = (now, left)
        return delay

    def _delay(self, path: LogPath, now: float, size: int, left: int) -> float:
        last = self._last.get(path)
        if last is None or now <= last[0] or size <= last[1]:
            return self.slowest
        rate = (size - last[1]) / (now - last[0])  # bytes per second since the last check
        return min(self.slowest, max(FASTEST_CHECK, (self.max_bytes - left) / rate))
