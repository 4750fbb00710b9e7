"""Process trees read straight from /proc: one stat file per process, children from the kernel's
children files, no host-wide scan. The root is injectable, so tests point it at a fixture tree.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

PF_EXITING = 0x4  # task flag: the process is in do_exit (its memory may already be gone)


def _read(path: str) -> bytes:
    """A whole /proc file, without a Python file object (half the cost of `open().read()`). Read to the
    end: a read may return less than a file holds (the children files come a page at a time)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        if not data:
            return data
        chunks = [data]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _fd_dir_sizes(root: str) -> bool:
    """Whether a /proc/<pid>/fd directory's size is its count of open descriptors (Linux 6.2+): one
    stat instead of listing it. Only for the real /proc (a fixture tree's directories have other sizes);
    older kernels give 0."""
    try:
        if os.stat(root).st_dev != os.stat("/proc").st_dev:
            return False
        return os.stat(f"{root}/self/fd").st_size > 0
    except OSError:
        return False


@dataclass
class Usage:
    """A component's use, summed over every replica's process tree."""

    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    threads: int = 0
    open_fds: int = 0


class ProcFS:
    """Reads process trees straight from /proc (one stat file per process, no host-wide scan).

    The root is injectable, so tests can point it at a fixture tree. Children come from
    /proc/<pid>/task/<tid>/children (Linux 3.5+ with CONFIG_PROC_CHILDREN); without it, one scan of
    every /proc/<pid>/stat per pass builds the parent map.
    """

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self.tick = float(os.sysconf("SC_CLK_TCK"))
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.children_files = os.path.exists(f"{root}/self/task/{os.getpid()}/children") or os.path.exists(
            f"{root}/{os.getpid()}/task/{os.getpid()}/children")
        self._ppid_map: dict[int, list[int]] | None = None
        self.fd_sizes = _fd_dir_sizes(root)

    def stat(self, pid: int) -> tuple[int, float, int, int] | None:
        """(ppid, CPU seconds incl. reaped children, threads, RSS bytes), or None when gone."""
        try:
            data = _read(f"{self.root}/{pid}/stat")
        except OSError:
            return None
        fields = data[data.rfind(b")") + 2:].split()
        try:
            ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            return int(fields[1]), ticks / self.tick, int(fields[17]), int(fields[21]) * self.page
        except (IndexError, ValueError):
            return None

    def state(self, pid: int) -> str | None:
        """The one-letter state of a process ('Z' for a zombie), or None when it is gone."""
        try:
            data = _read(f"{self.root}/{pid}/stat")
        except OSError:
            return None
        return data[data.rfind(b")") + 2:][:1].decode() or None

    def living(self, pid: int) -> bool:
        """True unless the process is gone, a zombie, or already exiting (PF_EXITING set)."""
        try:
            data = _read(f"{self.root}/{pid}/stat")
        except OSError:
            return False
        fields = data[data.rfind(b")") + 2:].split()
        try:
            return fields[0] not in (b"Z", b"X") and not int(fields[6]) & PF_EXITING
        except (IndexError, ValueError):
            return False

    def fds(self, pid: int) -> int:
        try:
            if self.fd_sizes:
                return os.stat(f"{self.root}/{pid}/fd").st_size
            return len(os.listdir(f"{self.root}/{pid}/fd"))
        except OSError:
            return 0

    def begin_pass(self) -> None:
        """Forget the previous pass's parent map (only used without children files)."""
        self._ppid_map = None

    def children(self, pid: int, threads: int = 0) -> list[int]:
        """Pids of the process's children; `threads` (from `stat`) 1 spares listing its threads."""
        if self.children_files:
            if threads == 1:  # its one thread is the leader, whose tid is the pid (else: list them)
                with contextlib.suppress(OSError):
                    return [int(c) for c in _read(f"{self.root}/{pid}/task/{pid}/children").split()]
            out: list[int] = []
            try:
                tids = os.listdir(f"{self.root}/{pid}/task")
            except OSError:
                return out
            for tid in tids:
                try:
                    out.extend(int(c) for c in _read(f"{self.root}/{pid}/task/{tid}/children").split())
                except OSError:
                    continue
            return out
        if self._ppid_map is None:
            self._ppid_map = {}
            for name in os.listdir(self.root):
                if name.isdigit():
                    st = self.stat(int(name))
                    if st is not None:
                        self._ppid_map.setdefault(st[0], []).append(int(name))
        return self._ppid_map.get(pid, [])

    def tree(self, root: int) -> tuple[Usage, list[int]]:
        """Usage summed over a process and its descendants, and their pids."""
        usage = Usage()
        pids: list[int] = []
        unvisited = [root]
        while unvisited:
            pid = unvisited.pop()
            st = self.stat(pid)
            if st is None:
                continue
            pids.append(pid)
            usage.cpu_seconds += st[1]
            usage.threads += st[2]
            usage.rss_bytes += st[3]
            usage.open_fds += self.fds(pid)
            unvisited.extend(self.children(pid, st[2]))
        return usage, pids
