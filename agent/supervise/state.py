"""The state dir: what must survive an agent restart, checked against a strict schema when read, written
atomically (temp + fsync + rename) by a writer thread so that no fsync runs on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

from agent.supervise.policy import Circuit

log = logging.getLogger("agent.state")

STATE_FILE = "state.json"
RETRY_SECONDS = 5.0  # while writing fails, how often the writer tries the last snapshot again


class ComponentRecord(BaseModel):
    """What is remembered of one component; strict: `"false"` is not a boolean, `1e400` not a count."""

    model_config = ConfigDict(strict=True, extra="forbid")
    desired: int | None = Field(None, ge=0)
    manual_stop: bool = False
    circuit: Circuit = Circuit.CLOSED
    circuit_opened_at: FiniteFloat = Field(0.0, ge=0)


class StateFile(BaseModel):
    """state.json. Keys of its own are strict; unknown top-level keys are kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow")
    components: dict[str, ComponentRecord] = Field(default_factory=dict)
    emergency_stop: bool = False


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_whole(path, data, os.replace)


def atomic_create_bytes(path: Path, data: bytes) -> None:
    """Create a file that does not exist yet (FileExistsError when it does), written whole or not at all:
    linked in under its name once synced, so a full disk or a crash leaves no file, never an empty one."""
    _write_whole(path, data, _link_or_rename)


def _link_or_rename(tmp: str, path: Path) -> None:
    """A hard link (fails when `path` exists); where the file system has none (some FUSE and SMB mounts),
    a rename after a check, which a file made in between would lose to."""
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.replace(tmp, path)


def _write_whole(path: Path, data: bytes, place: Callable[[str, Path], None]) -> None:
    """The bytes into a temporary file (0600) beside `path`, synced, then `place`d under its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        place(tmp, path)
        _sync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # gone already after a rename; still there after a link or a failure


def private(fd: int) -> None:
    """Set an open file of the agent's own to 0600 (one made by an older agent, or under another umask)."""
    settle_mode(fd, 0o600)


def settle_mode(fd: int, mode: int, gid: int | None = None) -> None:
    """Give an open regular file of the agent's own this mode (and group). Anything else is left alone: a
    path linked to /dev/null or a FIFO, or a file someone else owns."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        return
    if gid is not None and st.st_gid != gid:
        os.fchown(fd, -1, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def _sync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, data: Any) -> None:
    """atomic_write_bytes of a JSON document."""
    atomic_write_bytes(path, _encode(data))


def _encode(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


M = TypeVar("M", bound=BaseModel)


def load_document(path: Path, model: type[M]) -> M:
    """Read a state file; a missing file is the default, an unreadable one is set aside (`.corrupt`) and logged.

    pydantic parses the JSON itself (jiter, which stops at a nesting depth of a few hundred instead of
    recursing like Python's json), so no content can raise anything but a ValidationError here.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return model()
    except OSError as exc:
        log.error("cannot read state file %s (%s); starting afresh", path, exc)
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        reason = "; ".join(_describe(err) for err in exc.errors(include_url=False)[:5])
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except OSError as exc:
        log.error("state file %s is corrupt (%s) and cannot be set aside (%s); starting afresh",
                  path, reason, exc)
        return model()
    log.error("state file %s is corrupt (%s); kept as %s, starting afresh", path, reason, aside)
    return model()


def _describe(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"])
    shown = repr(err["input"])[:40] if err["type"] != "json_invalid" else ""
    return f"{where or '(file)'}: {err['msg']}" + (f", got {shown}" if shown else "")


class JsonStore(Generic[M]):
    """A JSON document in the state dir, saved whole on every change by one writer thread.

    `save()` takes a snapshot of `data` on the caller's thread (so it is consistent) and returns; the
    writer writes the newest snapshot (older ones not yet written are skipped: only the last counts).
    A crash loses at most the snapshot being written; `close()` writes the last one. While writes fail,
    the last snapshot is tried again every RETRY_SECONDS, so the file catches up when the disk recovers.
    """

    def __init__(self, path: Path, model: type[M]) -> None:
        self.path = path
        self.loaded: M = load_document(self.path, model)
        self.data: dict[str, Any] = self.loaded.model_dump(mode="json")
        self.write_errors = 0  # failed writes since start (exported as a counter)
        self._failing = False
        self._cond = threading.Condition()
        self._snapshot: bytes | None = None
        self._queued = 0  # generations: snapshots queued, and the last one written or given up on
        self._done = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def save(self) -> None:
        """Queue the current data for writing; never blocks on the disk."""
        blob = _encode(self.data)
        with self._cond:
            self._snapshot = blob
            self._queued += 1
            if self._closed:  # after close() (a late change at shutdown): write it here
                self._snapshot = None
                generation = self._queued
            else:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
                return
        self._write(blob)
        with self._cond:
            self._done = max(self._done, generation)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every snapshot queued so far is written; True when the last write succeeded."""
        with self._cond:
            target = self._queued
            self._cond.wait_for(lambda: self._done >= target, timeout)
            return self._done >= target and not self._failing

    def close(self, timeout: float = 10.0) -> bool:
        """Write the last snapshot and stop the writer thread (at shutdown)."""
        written = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return written

    def _run(self) -> None:
        retry: bytes | None = None  # the last snapshot, when writing it failed: tried again every RETRY_SECONDS
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._snapshot is not None or self._closed,
                                    RETRY_SECONDS if retry is not None else None)
                if self._snapshot is None:
                    if self._closed or retry is None:
                        return
                    blob, generation = retry, self._done
                else:
                    blob, generation, self._snapshot = self._snapshot, self._queued, None
            retry = None if self._write(blob) else blob
            with self._cond:
                self._done = max(self._done, generation)
                self._cond.notify_all()

    def _write(self, blob: bytes) -> bool:
        """One atomic write; a failure (disk full, read-only) is logged once per streak and counted."""
        try:
            atomic_write_bytes(self.path, blob)
        except Exception as exc:
            self.write_errors += 1
            if not self._failing:
                log.error("cannot write state file %s (%s); running on, state kept in memory and written "
                          "again", self.path, exc)
            self._failing = True
            return False
        if self._failing:
            log.warning("state file %s writable again", self.path)
        self._failing = False
        return True


class StateStore(JsonStore[StateFile]):
    """state.json: desired replicas, manual stops, circuits, the emergency stop."""

    def __init__(self, state_dir: Path, name: str = STATE_FILE) -> None:
        super().__init__(state_dir / name, StateFile)
