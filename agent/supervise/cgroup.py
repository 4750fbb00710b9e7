"""Containment by cgroup v2: each replica slot is a cgroup directory under a subtree of the agent's own
cgroup, ended whole with `cgroup.kill` (or rounds of SIGKILL where the kernel lacks it)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.supervise.containment import (
    KILL_ROUNDS,
    Containment,
    ContainmentError,
    Mechanism,
    Scope,
    send_signal,
)
from agent.supervise.procfs import ProcFS
from agent.supervise.tracking import TrackingContainment, TrackingScope

log = logging.getLogger("agent.containment")


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """The first cgroup v2 mount point, read from mountinfo (works for unified and hybrid layouts)."""
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                pre, sep, post = line.partition(" - ")
                if sep and post.split(" ", 1)[0] == "cgroup2":
                    return Path(pre.split(" ")[4].replace("\\040", " "))
    except OSError:
        return None
    return None


def own_cgroup(proc_cgroup: str = "/proc/self/cgroup") -> str | None:
    """This process's cgroup v2 path (the `0::` line), e.g. `/system.slice/agent.service`."""
    try:
        with open(proc_cgroup, encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return None


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


class CgroupScope(Scope):
    __slots__ = ("_path", "has_kill", "marked", "owner")

    def __init__(self, owner: CgroupContainment | None, path: Path, has_kill: bool,
                 marked: TrackingScope | None = None) -> None:
        self.owner = owner  # None for a dead agent's slot being swept: nothing is spawned into it
        self._path = str(path)  # a string kept, a Path made when used: a Path costs more per replica
        self.has_kill = has_kill
        # The same slot tracked by environment marker: covers what forked before the move (below).
        self.marked = marked

    @contextlib.contextmanager
    def spawning(self) -> Iterator[dict[str, str]]:
        assert self.marked is not None
        with self.marked.spawning() as env:
            yield env

    @property
    def path(self) -> Path:
        return Path(self._path)

    def adopt(self, pid: int) -> None:
        assert self.owner is not None
        self.owner.move(pid, self.path)

    def _procs(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def members(self, leader: int | None) -> list[int]:
        marked = self.marked.members(leader) if self.marked is not None else []
        return sorted(set(self._procs()) | set(marked))

    def kill(self, leader: int | None) -> set[int]:
        # A set, not a count: the marker and the cgroup find the same processes.
        killed = self.marked.kill(leader) if self.marked is not None else set()
        pids = self._procs()
        if not pids:
            return killed
        if os.getpid() in pids:  # never: the agent never enters a slot; refuse anyway
            log.critical("refusing to kill cgroup %s: the agent itself is in it", self.path)
            return killed
        # Counted: members not already on their way out (cgroup.procs still lists a process that
        # is in do_exit, e.g. one ended by its parent-death signal a moment ago).
        procfs = ProcFS()
        if self.has_kill:
            killed.update(p for p in pids if procfs.living(p))
            _write(self.path / "cgroup.kill", "1")
            return killed
        for _ in range(KILL_ROUNDS):  # no cgroup.kill (Linux < 5.14): signal the members until none is left
            pids = self._procs()
            if not pids:
                break
            killed.update(p for p in pids if procfs.living(p))
            send_signal(pids, signal.SIGKILL)
        return killed

    def release(self) -> None:
        rmdir_when_empty(self.path)
        if self.owner is None or self.marked is None or self.path.exists():
            return  # still busy (its members are ended at close): kept
        key = self.marked.forget()
        if self.owner._scopes.get(key) is self:
            del self.owner._scopes[key]


class CgroupContainment(Containment):
    """Replica slots as cgroup v2 directories under `<agent's cgroup>/orchestrator-agent.<pid>`.

    A child is moved into its slot's cgroup right after the fork, by a worker thread: a cgroup
    migration waits for an RCU grace period (unless the cgroup2 mount has `favordynmods`), which
    must not block the event loop or the restart. What the child forks in that window is still
    found by the environment marker every child carries, so each slot is also a tracking scope,
    and kill() ends both.
    """

    mechanism = Mechanism.CGROUP

    def __init__(self, mount: Path, home: str, tracked: Callable[[], set[int]], instance: str | None = None) -> None:
        self.home = mount / home.lstrip("/")
        self.base = self.home / f"orchestrator-agent.{os.getpid()}"
        self.detail = str(self.base)
        self.has_kill = False
        self.tracking = TrackingContainment(tracked, instance=instance)
        self._scopes: dict[tuple[str, int], CgroupScope] = {}
        self._mover: concurrent.futures.ThreadPoolExecutor | None = None
        if instance is not None:  # adopted after `agent reexec`: the subtree and its slots exist, in use
            if not self.base.is_dir():
                raise ContainmentError(f"the cgroup subtree {self.base} handed over is gone")
            self.has_kill = (self.base / "cgroup.kill").exists()
            return
        try:
            self.base.mkdir(exist_ok=True)
            trial = self.base / "_trial"
            trial.mkdir(exist_ok=True)
            try:
                probe = subprocess.Popen(["sleep", "5"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                try:
                    _write(trial / "cgroup.procs", str(probe.pid))
                    self.has_kill = (trial / "cgroup.kill").exists()
                finally:
                    probe.kill()
                    probe.wait()
            finally:
                rmdir_when_empty(trial)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.base.rmdir()
            raise ContainmentError(f"cgroup v2 at {self.home} is not usable: {exc.strerror or exc}") from None

    def move(self, pid: int, path: Path) -> None:
        """Move a new child into a slot's cgroup, off the calling thread (in spawn order)."""
        if self._mover is None:
            self._mover = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cgroup-mover")
        self._mover.submit(self._move, pid, path)

    def _move(self, pid: int, path: Path) -> None:
        try:
            path.mkdir(exist_ok=True)
            _write(path / "cgroup.procs", str(pid))
        except ProcessLookupError:
            pass  # it ended before it could be moved: nothing to contain
        except OSError as exc:
            log.error("cannot move pid %d into %s: %s; it is contained by its environment marker only",
                      pid, path, exc.strerror or exc)

    def flush(self) -> None:
        """Wait for the moves asked for so far (tests, and before closing)."""
        if self._mover is not None:
            self._mover.submit(lambda: None).result()

    def scope(self, component: str, index: int) -> Scope:
        key = (component, index)
        if key not in self._scopes:
            marked = self.tracking.scope(component, index)
            assert isinstance(marked, TrackingScope)
            self._scopes[key] = CgroupScope(self, self.base / f"{component}.{index}", self.has_kill, marked)
        return self._scopes[key]

    def guardian_lines(self) -> list[str]:
        return [f"c{self.base}", *self.tracking.guardian_lines()]

    def record(self) -> dict[str, object]:
        return {**self.tracking.record(), "mechanism": self.mechanism.value, "cgroup": str(self.base)}

    def close(self) -> None:
        self.flush()
        if self._mover is not None:
            self._mover.shutdown(wait=True)
            self._mover = None
        for scope in list(self._scopes.values()):  # a released slot leaves the map
            scope.kill(None)
            scope.release()
        with contextlib.suppress(OSError):  # a slot released before its last move re-made it: empty
            for leftover in [d for d in self.base.iterdir() if d.is_dir()]:
                rmdir_when_empty(leftover)
        rmdir_when_empty(self.base)


def rmdir_when_empty(path: Path, attempts: int = 200) -> None:
    # Killed processes leave the cgroup within microseconds, but asynchronously: rmdir says EBUSY
    # until they have.
    for _ in range(attempts):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                log.warning("cannot remove cgroup %s: %s", path, exc.strerror)
                return
            os.sched_yield()
    log.warning("cgroup %s still busy; left in place", path)
