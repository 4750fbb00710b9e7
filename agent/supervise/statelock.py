"""One agent per state dir: an exclusive `flock` on the file `lock` in the state dir, as Prometheus locks
its data directory, taken before anything starts (before the ledger sweep, before any component) and
held for the life of the process.

Without it, a second `agent run` on the same state dir started every component again and both agents
wrote state.json. Why `flock` and not a pid file: the lock belongs to the open file description, so the
kernel drops it when the last descriptor to it closes. A SIGKILLed agent leaves the file but not the
lock, and the next start is never blocked by a stale one. And a descriptor kept open across `execve()`
keeps the lock: `agent reexec` makes it inheritable, hands its number over, and the new image adopts it,
with no moment at which the dir is unlocked. Otherwise the descriptor is close-on-exec, so no component
or guardian holds it (a leftover child would keep the dir locked after the agent died).

The owner writes its pid into the file for the refusal message, and a clean exit adds a `stopped` line to
it (while the lock is still held, so no successor's pid is overwritten): `agent --once` reads both, with
`probe()`, to tell an agent that was stopped from one that died. Nothing in the agent trusts the file to
decide who owns the dir; the lock does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("agent.statelock")

LOCK_FILE = "lock"
ENV_FD = "AGENT_REEXEC_LOCK_FD"  # the inherited descriptor, closed by a new image that cannot read its handover


class StateDirOwned(Exception):
    """Another process holds the state dir's lock: this agent must start nothing."""

    def __init__(self, state_dir: Path, holder: int | None) -> None:
        self.state_dir, self.holder = state_dir, holder
        who = f"pid {holder}" if holder else "a process whose pid it did not record"
        super().__init__(f"state dir {state_dir} is owned by another agent ({who} holds {state_dir / LOCK_FILE}); "
                         "stop that agent, or give this one another agent.state_dir")


class StateLock:
    """The held lock: an open descriptor with `LOCK_EX` on `<state_dir>/lock`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def take(cls, state_dir: Path, inherited: StateLock | None = None) -> StateLock:
        """Lock `state_dir` (it exists); `inherited`, the lock a previous image of this process held, is
        kept as it is when it is this dir's. StateDirOwned when another process holds it, OSError when
        the file cannot be opened."""
        path = state_dir / LOCK_FILE
        if inherited is not None and inherited.covers(path):
            return inherited
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StateDirOwned(state_dir, holder) from None
        except OSError:
            os.close(fd)
            raise
        lock = cls(path, fd)
        lock._record_pid()
        return lock

    @classmethod
    def adopt(cls, record: Any) -> StateLock | None:
        """The lock the previous image handed over (`{"fd", "path"}` from reexec.json), None when there is
        none (an older agent held none) or the descriptor is not that file's lock any more."""
        if not isinstance(record, dict) or not isinstance(record.get("fd"), int) or record["fd"] < 0:
            return None
        lock = cls(Path(str(record.get("path"))), record["fd"])
        try:
            if not lock.covers(lock.path):
                raise OSError(errno.ESTALE, "the descriptor is another file's")
            # Held already by this very open file description: the call returns at once, and proves it.
            fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.set_inheritable(lock.fd, False)  # components started from now on must not hold it
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            print(f"warning: agent reexec: the state dir lock {lock.path} (fd {lock.fd}) was not handed over "
                  f"({exc.strerror or exc}); it is taken again", file=sys.stderr)
            return None
        return lock

    def covers(self, path: Path) -> bool:
        """True when this descriptor is the file at `path` (the same inode)."""
        try:
            mine, there = os.fstat(self.fd), os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def record(self) -> dict[str, Any]:
        """For reexec.json: the descriptor to adopt and the file it locks."""
        return {"fd": self.fd, "path": str(self.path.absolute())}

    def keep_across_exec(self, keep: bool = True) -> None:
        """Let the descriptor (and with it the lock) survive the exec; `keep=False` undoes it."""
        os.set_inheritable(self.fd, keep)

    def release(self, stopped: bool = True) -> None:
        """Unlock by closing the descriptor; the file stays (removing it would let two agents lock two
        different inodes under the same name). `stopped` first records the time in it: this agent let the
        dir go on purpose (it stopped, or moved to another dir), so `agent --once` does not report it dead.
        A start that failed passes False: nothing supervises the dir, and nobody stopped it."""
        if self.fd >= 0:
            if stopped:
                self._write(f"{os.getpid()}\n{STOPPED} {time.time():.3f}\n", "the time it stopped")
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def _record_pid(self) -> None:
        self._write(f"{os.getpid()}\n", "this agent's pid")

    def _write(self, text: str, what: str) -> None:
        # Through a descriptor of its own, closed at once: closing it leaves the lock alone (flock, unlike
        # fcntl's POSIX locks, belongs to the one open file description), and the one held stays read-only.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as exc:  # a full or read-only disk: the lock holds all the same
            log.warning("cannot record %s in %s (%s): a refused second agent is not told which pid holds the "
                        "state dir, and `agent --once` cannot tell a stop from a crash", what, self.path,
                        exc.strerror or exc)


STOPPED = "stopped"  # the lock file's line `stopped <epoch>`, written by a clean exit


@dataclass(frozen=True)
class LockProbe:
    """What the lock file of a state dir says, read without taking the lock (`probe`)."""

    exists: bool  # False: no agent ever ran with this state dir (or the dir is gone)
    held: bool | None  # None: /proc/locks could not tell
    pid: int | None  # the last holder as it recorded itself, else as /proc/locks lists it
    alive: bool | None  # whether that pid exists now (None without a pid)
    stopped_at: float | None  # when that holder released it on purpose; None after a crash or while held
    error: str = ""  # why the file could not be read (permissions), when it could not


def probe(state_dir: Path) -> LockProbe:
    """Read-only: is `<state_dir>/lock` there, is it held (from /proc/locks, so a check never takes the
    lock, even for an instant, and never keeps an agent from starting), by whom, and did its last holder
    stop on purpose."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            st, text = os.fstat(fd), os.pread(fd, 256, 0).decode(errors="replace")
        finally:
            os.close(fd)
    except FileNotFoundError:
        return LockProbe(False, False, None, None, None)
    except OSError as exc:
        return LockProbe(True, None, None, None, None, f"cannot read {path}: {exc.strerror or exc}")
    lines = text.splitlines()
    pid = _int(lines[0]) if lines else None
    stopped_at = None
    for line in lines[1:]:
        word, _, when = line.partition(" ")
        if word == STOPPED:
            with contextlib.suppress(ValueError):
                stopped_at = float(when)
    holders = _flock_holders(st)
    held = None if holders is None else bool(holders)
    if holders:
        stopped_at = None  # a new holder that has not recorded its own pid yet
        if pid not in holders:
            pid = min(holders)
    alive = None if pid is None else _alive(pid)
    return LockProbe(True, held, pid, alive, stopped_at)


def _open(path: Path) -> int:
    """The lock file, created 0600 when absent, never through a symlink; held read-only (flock needs no
    write access), so the agent keeps no file open for writing: its disk can still be remounted read-only,
    and an existing lock file on a read-only disk still locks."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    return fd


def _holder(fd: int) -> int | None:
    """The pid holding the lock: as the holder recorded it, else as /proc/locks lists the inode's flock."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(os.pread(fd, 64, 0).decode().splitlines()[0])
    with contextlib.suppress(OSError):
        holders = _flock_holders(os.fstat(fd))
        if holders:
            return next(iter(holders))
    return None


def _flock_holders(st: os.stat_result) -> set[int] | None:
    """The pids /proc/locks lists with a flock on this inode (an empty set: nobody holds it); None when
    /proc/locks cannot be read."""
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    found: set[int] = set()
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; a blocked waiter's line has "->" after the
        # number and one field more.
        if "->" in fields:
            continue
        with contextlib.suppress(IndexError, ValueError):
            if fields[1] == "FLOCK" and fields[5] == where:
                found.add(int(fields[4]))
    return found


def _int(text: str) -> int | None:
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists and is no zombie (it may be another program: pids are reused)."""
    with contextlib.suppress(OSError, IndexError):
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return stat_line[stat_line.rindex(")") + 2:][:1] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
