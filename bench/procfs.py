"""Finding a supervisor's children in /proc, by the marker argument each child carries.

Every child is `sleep <marker>`, where the marker (a number of seconds, about 100+ days) is unique per
supervisor instance and slot, so a pid maps to (instance, slot) from its cmdline alone; membership of
the supervisor's process tree is checked through the ppid chain as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

SLEEP = "/bin/sleep"
MARKER_BASE = 10_000_000
MARKER_STRIDE = 100_000  # slots per instance


def marker(instance: int, slot: int) -> int:
    """The argument of `sleep` for this instance's slot (unique across one bench run)."""
    return MARKER_BASE + instance * MARKER_STRIDE + slot


def unmark(value: int) -> tuple[int, int]:
    """(instance, slot) of a marker."""
    return divmod(value - MARKER_BASE, MARKER_STRIDE)


def read_cmdline(pid: int) -> list[bytes] | None:
    """argv of a process, None when it is gone; [] for a zombie or a kernel thread."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw.split(b"\0")[:-1] if raw else []


def read_ppid(pid: int) -> int | None:
    """Parent pid, None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        return int(raw.rsplit(b")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return None


def child_marker(pid: int) -> int | None:
    """The marker of a bench child that has exec'd sleep, else None (not ours, or still pre-exec)."""
    argv = read_cmdline(pid)
    if not argv or len(argv) != 2 or not argv[0].endswith(b"sleep"):
        return None
    try:
        value = int(argv[1])
    except ValueError:
        return None
    return value if value >= MARKER_BASE else None


def under(pid: int, root: int, depth: int = 8) -> bool:
    """True when root is pid or one of its ancestors (bounded walk up the ppid chain)."""
    current: int | None = pid
    for _ in range(depth):
        if current is None or current <= 1:
            return False
        if current == root:
            return True
        current = read_ppid(current)
    return False


def all_pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


@dataclass
class Found:
    pid: int
    instance: int
    slot: int


class ProcScanner:
    """Sees new processes since the last call; cheap enough to run every millisecond.

    A new pid that is not yet a bench child but sits under a watched root may still be between fork
    and exec, so it is looked at again on the next call; anything else is remembered and skipped.
    """

    def __init__(self, roots: Iterable[int]) -> None:
        self.roots = set(roots)
        self.known: set[int] = set()

    def scan(self) -> list[Found]:
        """Bench children under a watched root that appeared since the last scan."""
        found: list[Found] = []
        live: set[int] = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            live.add(pid)
            if pid in self.known:
                continue
            value = child_marker(pid)
            if value is None:
                ppid = read_ppid(pid)
                if ppid is None or ppid not in self.roots:
                    self.known.add(pid)  # gone, or not a direct child of a supervisor we watch
                continue
            self.known.add(pid)
            instance, slot = unmark(value)
            if any(under(pid, root) for root in self.roots):
                found.append(Found(pid, instance, slot))
        # Forget pids that are gone: the kernel reuses them (pid_max is 32768 on small machines), and a
        # new child given one seen earlier must be seen as new (else a start-up waits for it until its timeout).
        self.known &= live
        return found


def children_of(pid: int) -> set[int]:
    """The live (and zombie) children of a process, from its threads' children files (no /proc scan)."""
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.update(map(int, f.read().split()))
        except OSError:
            continue
    return out


class ChildScanner:
    """Sees new bench children of chosen supervisors: what `ProcScanner` does, for a fraction of the cost.

    Reads only the kernel's list of each supervisor's direct children (every supervisor here forks its
    children itself) instead of every pid in /proc: a full pass over every process costs several times
    more, time the bench would take from the supervisors it measures on a small machine and add to every
    latency. A child that has not exec'd `sleep` yet (the agent's
    setpriv/prlimit chain, a fork before exec) is looked at again on the next call; the known set is the
    last list seen, so a pid the kernel reuses for a new child is seen as new.
    """

    def __init__(self, roots: Iterable[int]) -> None:
        self.known: dict[int, set[int]] = {root: children_of(root) for root in roots}

    def scan(self, roots: Iterable[int] | None = None) -> list[Found]:
        """Bench children of these roots (default: all) that appeared since the last scan of that root."""
        found: list[Found] = []
        for root in self.known if roots is None else roots:
            current = children_of(root)
            pending: set[int] = set()
            for pid in current - self.known[root]:
                value = child_marker(pid)
                if value is None:
                    pending.add(pid)  # not yet past its exec (or not a bench child: cheap to read again)
                    continue
                instance, slot = unmark(value)
                found.append(Found(pid, instance, slot))
            self.known[root] = current - pending
        return found


def descendants(root: int) -> list[int]:
    """Every live descendant of root (one full /proc pass)."""
    parents: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = read_ppid(pid)
        if ppid is not None:
            parents.setdefault(ppid, []).append(pid)
    out: list[int] = []
    stack = [root]
    while stack:
        for child in parents.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out
