"""Reading the logs back: the files that hold a component's output, their last lines (on into the rotated
backups), and the newest lines across replicas, merged by the time each line carries.

The replicas write their files themselves (their stdout is the file; agent/supervise/replica.py names them)
and the agent writes agent.log (agent/supervise/logs.py); `agent logs` and `agent status NAME` read them
here (agent/cli/logview.py).
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

AGENT = "agent"  # `agent logs agent`: the agent's own log, log_dir/agent.log
_BLOCK = 1 << 16  # bytes read at a time from a file's end


@dataclass(frozen=True)
class Stream:
    """One log file of a component: a replica's output (`web.1`), or its stderr kept apart (`web.1.err`)."""

    label: str  # the file's name without `.log`: what a line is prefixed with when several files are shown
    path: Path
    replica: int


def streams(log_dir: Path, name: str) -> list[Stream]:
    """The log files in `log_dir` of component `name` (`NAME.log`, `NAME.N.log`, and `NAME[.N].err.log` when
    stderr goes to its own file), by replica; the agent's own for `agent`."""
    if name == AGENT:
        return [Stream(AGENT, log_dir / "agent.log", 0)]
    pattern = re.compile(rf"{re.escape(name)}(?:\.(\d+))?(\.err)?\.log")
    found = []
    for path in log_dir.glob(f"{name}*.log"):  # a name has no glob characters (agent/config/base.py NAME_PATTERN)
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match.group(1) or 0), bool(match.group(2)), path))
    return [Stream(path.name.removesuffix(".log"), path, replica) for replica, _, path in sorted(found)]


def tail(path: Path, count: int) -> list[str]:
    """The last `count` lines of a log file, taken on from its rotated backups (`path.1`, `path.2`, ...)
    when the file holds fewer (it was just rotated). OSError when the file cannot be read."""
    lines = _tail(path, count)
    backup = 1
    while len(lines) < count:
        older = path.with_name(f"{path.name}.{backup}")
        try:
            lines = _tail(older, count - len(lines)) + lines
        except FileNotFoundError:
            break
        backup += 1
    return lines


def _tail(path: Path, count: int) -> list[str]:
    """The last `count` lines of one file, read backwards from its end a block at a time."""
    if count <= 0:
        return []
    with open(path, "rb") as f:
        start = f.seek(0, 2)
        data = b""
        while start > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, start)
            start -= step
            f.seek(start)
            data = f.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    if start > 0:
        lines = lines[1:]  # began mid-line
    return lines[-count:]


_STAMP = re.compile(r"\[?(\d{4})[-/](\d\d)[-/](\d\d)[T ](\d\d):(\d\d):(\d\d)([.,]\d+)?\s?(Z|[+-]\d\d:?\d\d)?")
_JSON_KEYS = ("ts", "time", "timestamp", "@timestamp")


def line_time(line: str) -> float | None:
    """When a log line says it was written (epoch seconds): the date and time it begins with (RFC 3339 or
    ISO 8601: `2026-03-01T14:02:11.123Z`, `2026-03-01 14:02:11,123`; local time without an offset), or a JSON
    line's `ts`, `time`, `timestamp` or `@timestamp` (such a time, or epoch seconds or milliseconds); None
    when it says nothing."""
    if line.startswith("{"):
        try:
            document = json.loads(line)
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        for key in _JSON_KEYS:
            value = document.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return value / 1000 if value > 1e11 else float(value)
            if isinstance(value, str) and (stamp := _stamp(value)) is not None:
                return stamp
        return None
    return _stamp(line)


def _stamp(text: str) -> float | None:
    match = _STAMP.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7), match.group(8)
    tz = None
    if zone == "Z":
        tz = UTC
    elif zone:
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:  # not a date (month 13): not a time stamp after all
        return None
    return moment.timestamp() + (float("0." + fraction[1:]) if fraction else 0.0)


def newest(read: Sequence[tuple[Stream, list[str]]], count: int) -> list[tuple[Stream, str]]:
    """The newest `count` lines of these files together, oldest first, each with its file.

    When every file's lines carry times (`line_time`), the lines are merged by them: a line without one
    (a traceback's next line) counts as written with the line before it. Otherwise no order between files
    is known, and the files' last lines are taken in turn, the most recently written file first; they are
    shown a file at a time, that file last.
    """
    read = [(stream, lines) for stream, lines in read if lines]
    if count <= 0 or not read:
        return []
    timed = [[line_time(line) for line in lines] for _, lines in read]
    if all(any(t is not None for t in times) for times in timed):
        files = [_carried(stream, lines, times) for (stream, lines), times in zip(read, timed, strict=True)]
        merged = list(heapq.merge(*files, key=lambda entry: entry[0]))  # keeps each file's own order
        return [(stream, line) for _, stream, line in merged[-count:]]
    by_age = sorted(read, key=lambda entry: _modified(entry[0].path), reverse=True)
    taken = [0] * len(by_age)
    total = 0
    while total < count and any(taken[i] < len(lines) for i, (_, lines) in enumerate(by_age)):
        for i, (_, lines) in enumerate(by_age):
            if taken[i] < len(lines) and total < count:
                taken[i] += 1
                total += 1
    return [(stream, line) for i in reversed(range(len(by_age))) for stream, lines in [by_age[i]]
            for line in lines[len(lines) - taken[i]:]]


def _carried(stream: Stream, lines: Iterable[str], times: list[float | None]) -> list[tuple[float, Stream, str]]:
    """Each line with its time: its own, else the one before it (the first time, for the lines before it)."""
    last = next(t for t in times if t is not None)
    out = []
    for line, t in zip(lines, times, strict=True):
        last = last if t is None else t
        out.append((last, stream, line))
    return out


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
