"""The agent's own log (JSON lines, or readable lines on a terminal); the component logs' rotation is in
agent/supervise/logrotate.py (its names are re-exported here).

A write of the agent's own log that fails (a full disk, a closed stderr) is counted and reported at most
once a minute (agent/supervise/logfailures.py), never as the logging module's traceback per line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from agent.config.accounts import group_id
from agent.supervise.logfailures import FailedWrites
from agent.supervise.logrotate import FASTEST_CHECK as FASTEST_CHECK
from agent.supervise.logrotate import LogPath as LogPath
from agent.supervise.logrotate import LogRotator as LogRotator
from agent.supervise.logrotate import rotate_if_large as rotate_if_large
from agent.supervise.state import settle_mode

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class LogFiles:
    """How the agent creates its log files and the log dir: 0600 in a 0700 directory, as component output
    can hold secrets; with `agent.log_group`, 0640 in a 2750 directory of that group, for people who read
    logs without root (the setgid bit gives new files the group too).

    An existing log file the agent opens is set to the same mode when it is a regular file of the agent's
    own: a log once made 0644 does not stay so, and a log linked to /dev/null or a FIFO is left as it is.
    """

    def __init__(self, gid: int | None = None) -> None:
        self.gid = gid
        self.file_mode = 0o600 if gid is None else 0o640
        self.dir_mode = 0o700 if gid is None else 0o2750

    @classmethod
    def of(cls, group: str | None) -> LogFiles:
        """For `agent.log_group` (validated by the config: the group exists)."""
        return cls(None if group is None else group_id(group))

    def make_dir(self, path: Path) -> None:
        """Create the log dir (and its parents) when missing, with this mode and group."""
        if path.is_dir():
            return
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._own(path, self.dir_mode)

    def _own(self, target: int | Path, mode: int) -> None:
        if self.gid is not None:
            os.chown(target, -1, self.gid)
        os.chmod(target, mode)

    def open(self, path: Path | str) -> int:
        """An O_APPEND descriptor of a log file (close-on-exec), created or set to this mode and group."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, self.file_mode)
        try:
            settle_mode(fd, self.file_mode, self.gid)
        except OSError:
            os.close(fd)
            raise
        return fd


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any `extra=` fields.

    The line is kept on the record: the stderr and file handlers share this formatter, and the rotating
    file handler formats each record twice (once to see whether it fits), so it is built once, not thrice.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: str | None = getattr(record, "_json_line", None)
        if line is None:
            line = self._build(record)
            record._json_line = line
        return line

    _second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def _build(self, record: logging.LogRecord) -> str:
        fields = {key: value for key, value in vars(record).items() if key not in _RESERVED and not key.startswith("_")}
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.msecs, record.levelname, record.name, record.getMessage(), fields, exc)

    def line(self, created: float, msecs: float, levelname: str, name: str, msg: str, fields: dict[str, Any],
             exc: str | None = None) -> str:
        """The JSON line of a record with these attributes and `extra=` fields (also for `log_direct`)."""
        second = int(created)
        cached = self._second  # read once: another thread may replace it meanwhile
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        entry: dict[str, Any] = {
            "ts": f"{cached[1]}.{int(msecs):03d}Z",
            "level": levelname.lower(),
            "logger": name,
            "msg": msg,
            **fields,
        }
        if exc is not None:
            entry["exc"] = exc
        return _ENCODE(entry)


# json.dumps with arguments builds an encoder per call: one, for every line.
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode


class ConsoleFormatter(logging.Formatter):
    """One readable line for a person at a terminal: local time, level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extra = [f"{k}={v}" for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")]
        if extra:
            line += "  " + " ".join(extra)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# The `file` label values of orchestrator_log_write_errors_total: one per handler the agent sets up.
LOG_FILES = ("agent.log", "stderr")
REPORTER = "agent.logs"  # the logger name of the reports of failed writes


class _LineWriter(logging.Handler):
    """A handler that formats a record once and hands the line to `write` (which log_direct calls too).

    A failed write is counted in `failures` and reported at most once a minute, to the agent's other log
    handlers; never a traceback per record. A record that cannot be formatted (a bad format string) is
    still the stdlib's `handleError`: a bug to see.
    """

    label = ""  # the `file` label of orchestrator_log_write_errors_total (one of LOG_FILES)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = FailedWrites(getattr(self, "baseFilename", self.label))  # the file's path, or stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self.write(line)

    def write(self, line: str) -> None:
        """Write a line (under the handler's lock); a failure is counted and reported, never raised."""
        try:
            self.write_line(line)
        except RecursionError:
            raise
        except Exception as exc:
            report = self.failures.failed(exc)
        else:
            if not self.failures.unreported:
                return
            report = self.failures.recovered()
        if report is not None:
            self._report(*report)

    def _report(self, level: int, msg: str) -> None:
        """Hand a report to the agent's other log handlers (and to this one once it writes again).

        Locks: a handler reporting to stderr waits for its lock; stderr reporting to another handler only
        takes its lock when free, so two handlers failing at once in two threads never wait on each other.
        A report that fails in turn is counted; the next one is not due for a minute, so this ends.
        """
        record = logging.LogRecord(REPORTER, level, __file__, 0, msg, (), None)
        for handler in logging.getLogger().handlers:
            if not isinstance(handler, _LineWriter) or (handler is self and level >= logging.ERROR):
                continue
            lock = handler.lock
            if lock is None or not lock.acquire(blocking=isinstance(handler, _Stderr) or handler is self):
                continue
            try:
                handler.write(handler.format(record))
            finally:
                lock.release()

    def write_line(self, line: str) -> None:
        raise NotImplementedError


def log_write_errors() -> dict[str, int]:
    """Failed writes of the agent's own log handlers (on the root logger), by `file` label, each at 0 first."""
    counts = dict.fromkeys(LOG_FILES, 0)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _LineWriter):
            counts[handler.label] += handler.failures.total
    return counts


def resume_log_write_errors(counts: object) -> None:
    """Go on from the counts `log_write_errors` gave the previous image (`agent reexec`, carry.py)."""
    if not isinstance(counts, dict):
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _LineWriter):
            value = counts.pop(handler.label, 0)  # once per label: two handlers of one label share it
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                handler.failures.total += value


class _Stderr(_LineWriter, logging.StreamHandler):
    """StreamHandler whose emit writes and flushes the line itself (the stdlib's goes through three calls)."""

    label = "stderr"

    def write_line(self, line: str) -> None:
        stream = self.stream
        stream.write(line + "\n")
        stream.flush()


class _RotatingFile(_LineWriter, RotatingFileHandler):
    """RotatingFileHandler that does per line only what a line needs: the webhook logs an audit line per
    decision, thousands a second under load, and the stdlib's handler stats the path twice per line (bpo-45401:
    never rotate a FIFO or a device), formats it twice and goes through five calls to write it.

    Here the open file's type is checked (fstat) once per file, at start and after each rotation, and its size
    with one fstat per line; each line is formatted once, rotated as the stdlib does, and written with one
    system call on the file's descriptor (no buffer: a line is in the file or its write failed). A line cut
    short (a full disk) is cut off again, so the next one does not start mid-line.
    """

    label = "agent.log"
    _regular: bool | None = None

    def __init__(self, filename: Path, files: LogFiles, **kwargs: Any) -> None:
        self.files = files  # before the base class opens the file
        super().__init__(filename, **kwargs)

    def _open(self) -> Any:
        stream = open(self.files.open(self.baseFilename), "a", encoding=self.encoding, errors=self.errors)  # noqa: SIM115
        self._regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
        return stream

    def write_line(self, text: str) -> None:
        data = (text + "\n").encode(self.encoding or "utf-8", self.errors or "strict")
        # None: delay was set, or a rotation failed to reopen; closed: a rotation's close failed (a full disk).
        if self.stream is None or self.stream.closed:
            self.stream = self._open()
        fd = self.stream.fileno()
        # The file's size now (also after someone truncated it): one fstat, where seeking to the end and
        # asking the text stream where it is took two system calls and four Python-level calls.
        size = os.fstat(fd).st_size if self._regular else 0
        if self._regular and self.maxBytes > 0 and size + len(data) >= self.maxBytes:
            self.doRollover()
            if self.stream is None or self.stream.closed:
                self.stream = self._open()
            fd = self.stream.fileno()
            size = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            if written and self._regular:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
            raise


_DIRECT = (_Stderr, _RotatingFile)


def _direct_handlers(logger: logging.Logger, level: int) -> list[Any] | None:
    """The handlers a record of `level` from `logger` would reach, when every one is the agent's own JSON
    handler and nothing else (a filter, another handler, another record factory) has a say; else None."""
    if logging.getLogRecordFactory() is not logging.LogRecord:
        return None
    found: list[Any] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if level < handler.level:
                continue
            if type(handler) not in _DIRECT or handler.filters or type(handler.formatter) is not JsonFormatter:
                return None
            found.append(handler)
        if not current.propagate:
            break
        current = current.parent
    return found or None


def log_direct(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """`logger.info(msg, extra=fields)`, the same line to the same handlers, without a LogRecord.

    The webhook logs an audit line per decision, and the logging module's record machinery (the caller's
    frame, a record of 20 attributes, the handler chain) cost more than building and writing the line. When
    a record would reach only the agent's own JSON handlers (stderr, agent.log), the line is built once and
    written and flushed to each, under its lock, as `emit` writes it; otherwise (a test's capture handler, the
    console formatter on a terminal, a filter) it goes through `logger.info`.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handlers = _direct_handlers(logger, logging.INFO)
    if handlers is None or not _RESERVED.isdisjoint(fields):
        logger.info(msg, extra=fields)
        return
    created = time.time()
    msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes it
    line = handlers[0].formatter.line(created, msecs, "INFO", logger.name, msg,
                                      {k: v for k, v in fields.items() if not k.startswith("_")})
    for handler in handlers:
        handler.acquire()
        try:
            handler.write(line)
        finally:
            handler.release()


def setup_logging(level: str, log_dir: Path | None, max_bytes: int = 10 << 20, backups: int = 3,
                  console: bool = False, files: LogFiles | None = None) -> None:
    """Lines to stderr (JSON, or readable with `console`) and, when a log dir is given, JSON lines to
    log_dir/agent.log (size-rotated): the file is for machines whatever the terminal shows."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = JsonFormatter()
    stderr = _Stderr(sys.stderr)
    stderr.setFormatter(ConsoleFormatter() if console else formatter)
    root.addHandler(stderr)
    if log_dir is not None:
        try:
            files = files or LogFiles()
            files.make_dir(log_dir)
            handler = _RotatingFile(log_dir / "agent.log", files, maxBytes=max_bytes, backupCount=backups,
                                    encoding="utf-8")
        except OSError as exc:
            root.addHandler(stderr)
            logging.getLogger("agent").error("cannot write %s/agent.log (%s); logging to stderr only",
                                             log_dir, exc)
        else:
            handler.setFormatter(formatter)
            root.addHandler(handler)
    root.setLevel(level)
    # Neither formatter writes a record's thread or process: not looking them up saves every line (an audit
    # line per webhook decision) a system call and a few lookups.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for noisy in ("uvicorn.access", "httpx", "httpcore", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The MCP SDK logs its own errors for every failed probe; the probe reports them once, clearly.
    logging.getLogger("mcp").setLevel(logging.CRITICAL)
