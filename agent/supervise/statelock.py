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

The owner writes its pid into the file for the refusal message only; nothing trusts it to decide.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import sys
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

    def release(self) -> None:
        """Unlock by closing the descriptor; the file stays (removing it would let two agents lock two
        different inodes under the same name)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def _record_pid(self) -> None:
        # Through a descriptor of its own, closed at once: closing it leaves the lock alone (flock, unlike
        # fcntl's POSIX locks, belongs to the one open file description), and the one held stays read-only.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        except OSError as exc:  # a full or read-only disk: the lock holds all the same
            log.warning("cannot record this agent's pid in %s (%s): a refused second agent will not be told "
                        "which pid holds the state dir", self.path, exc.strerror or exc)


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
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    with contextlib.suppress(OSError, ValueError, IndexError):
        st = os.fstat(fd)
        where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if fields[1] == "FLOCK" and fields[5] == where:
                return int(fields[4])
    return None
