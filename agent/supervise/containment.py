"""Containment: everything a replica started goes with it, including descendants that left its group.

Two mechanisms, chosen once at start:

- `cgroup`: each replica slot gets a cgroup v2 directory under a subtree of the agent's own cgroup;
  the child is moved into it right after the fork (by a worker thread: a migration can wait ~12 ms
  for an RCU grace period), so no later `setsid` or double fork leaves it, and `cgroup.kill` ends
  the whole slot: systemd's `KillMode=control-group`, without needing systemd. The child also
  carries the environment marker below, which covers what it forks before the move lands.
- `tracking`: where no writable cgroup v2 tree exists. Every child gets an environment marker naming
  its replica; the agent is a child subreaper, so descendants that daemonise are re-parented to it,
  and their inherited marker (read from /proc/PID/environ) says whose they are. A process that clears
  its environment and is orphaned escapes this (documented in docs/operations.md).

The guardian (agent.supervise.process.Guardian) is told the cgroup subtree or the marker, so it can end the
same processes when the agent itself dies.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import errno
import logging
import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from agent.supervise.procfs import ProcFS

log = logging.getLogger("agent.containment")

MARKER = "ORCHESTRATOR_AGENT_SCOPE"
KILL_ROUNDS = 20  # a fork bomb that outruns 20 rounds of SIGKILL is reported, not chased forever


class Mechanism(enum.StrEnum):
    CGROUP = "cgroup"
    TRACKING = "tracking"


class ContainmentError(Exception):
    """The requested mechanism cannot be used here."""


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


def send_signal(pids: list[int], sig: int) -> int:
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            continue
        except PermissionError:
            log.warning("no permission to signal pid %d", pid)
    return sent


class Scope:
    """One replica slot: what runs in it, how to start into it, how to signal and end all of it."""

    __slots__ = ()  # one or two per replica: no instance dict (docs/benchmarks.md, Memory)

    def spawning(self) -> contextlib.AbstractContextManager[dict[str, str]]:
        """Around the fork: yields environment entries the child must carry."""
        raise NotImplementedError

    def adopt(self, pid: int) -> None:
        """The fork happened: `pid` is this slot's new leader."""

    def members(self, leader: int | None) -> list[int]:
        """Live processes of this slot (the leader, its descendants and any daemon it left)."""
        raise NotImplementedError

    def signal(self, sig: int, leader: int | None) -> int:
        """Send sig to every member; returns how many got it."""
        return send_signal(self.members(leader), sig)

    def kill(self, leader: int | None) -> set[int]:
        """SIGKILL every member until none is left; returns the pids that were alive when signalled."""
        raise NotImplementedError

    def release(self) -> None:
        """The slot is gone for good (scaled down): drop what it holds."""


class Containment:
    """The mechanism chosen for this agent, and the scopes of its replica slots."""

    mechanism: Mechanism
    detail: str = ""

    def scope(self, component: str, index: int) -> Scope:
        raise NotImplementedError

    def guardian_lines(self) -> list[str]:
        """What a guardian must be told to end this agent's processes when the agent dies."""
        return []

    def record(self) -> dict[str, object]:
        """What a later agent needs to sweep this one's leftovers (kept in the state dir)."""
        return {"mechanism": self.mechanism.value}

    def close(self) -> None:
        """The agent stops: every slot has been stopped; remove what is left."""


# --- cgroup v2 ------------------------------------------------------------------------------


class CgroupScope(Scope):
    __slots__ = ("_path", "has_kill", "marked", "owner")

    def __init__(self, owner: CgroupContainment | None, path: Path, has_kill: bool,
                 marked: TrackingScope | None = None) -> None:
        self.owner = owner  # None for a dead agent's slot being swept: nothing is spawned into it
        self._path = str(path)  # a string kept, a Path made when used: a Path is 0.3 KB a replica
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
    migration waits for an RCU grace period (about 12 ms here, unless the cgroup2 mount has
    `favordynmods`), which must not block the event loop or the restart. What the child forks in
    that window is still found by the environment marker every child carries, so each slot is
    also a tracking scope, and kill() ends both.
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


# --- tracking by environment marker -------------------------------------------------------


def _has_entry(pid: int, entry: bytes, proc: str = "/proc") -> bool:
    try:
        with open(f"{proc}/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except OSError:
        return False


class TrackingScope(Scope):
    __slots__ = ("entry", "marker", "owner")

    def __init__(self, owner: TrackingContainment, marker: str) -> None:
        self.owner = owner
        self.marker = marker
        self.entry = f"{MARKER}={marker}".encode()

    @contextlib.contextmanager
    def spawning(self) -> Iterator[dict[str, str]]:
        yield {MARKER: self.marker}

    def members(self, leader: int | None) -> list[int]:
        procfs = self.owner.procfs
        procfs.begin_pass()
        roots = [] if leader is None else [leader]
        # Daemons the slot left were re-parented to the agent (a subreaper): among the agent's own
        # children, those that are not a tracked leader, with this slot's marker.
        tracked = self.owner.tracked()
        roots += [p for p in procfs.children(os.getpid())
                  if p != leader and p not in tracked and _has_entry(p, self.entry, procfs.root)]
        out: list[int] = []
        seen: set[int] = set()
        while roots:
            pid = roots.pop()
            if pid in seen:
                continue
            seen.add(pid)
            state = procfs.state(pid)
            if state is None or state == "Z":
                continue
            if procfs.living(pid):  # one already in do_exit needs no signal; its children still may
                out.append(pid)
            roots.extend(procfs.children(pid))
        return out

    def kill(self, leader: int | None) -> set[int]:
        killed: set[int] = set()
        for _ in range(KILL_ROUNDS):
            pids = self.members(leader)
            if not pids:
                return killed
            send_signal(pids, signal.SIGKILL)
            killed.update(pids)
        log.error("scope %s: processes still appearing after %d rounds of SIGKILL", self.marker, KILL_ROUNDS)
        return killed

    def forget(self) -> tuple[str, int]:
        """Drop this slot from its containment (which made it on demand); returns its (component, index)."""
        head, _, index = self.marker.rpartition("/")
        key = (head[len(self.owner.instance) + 1:], int(index))
        if self.owner._scopes.get(key) is self:
            del self.owner._scopes[key]
        return key

    def release(self) -> None:
        # A slot a scale-down or a reload ended: an agent whose reloads add and remove components
        # would otherwise keep one for every replica it ever ran.
        self.forget()


class TrackingContainment(Containment):
    """Replica slots known by an inherited environment marker `<instance>/<component>/<index>`."""

    mechanism = Mechanism.TRACKING

    def __init__(self, tracked: Callable[[], set[int]], proc: str = "/proc", instance: str | None = None) -> None:
        # A new token per agent; the same one after `agent reexec`, whose children carry it.
        self.instance = instance or secrets.token_hex(6)
        self.tracked = tracked
        self.procfs = ProcFS(proc)
        self.detail = f"{MARKER}={self.instance}/..."
        self._scopes: dict[tuple[str, int], TrackingScope] = {}

    def scope(self, component: str, index: int) -> Scope:
        key = (component, index)
        if key not in self._scopes:
            self._scopes[key] = TrackingScope(self, f"{self.instance}/{component}/{index}")
        return self._scopes[key]

    def close(self) -> None:
        for scope in self._scopes.values():
            scope.kill(None)

    def guardian_lines(self) -> list[str]:
        return [f"e{MARKER}={self.instance}/"]

    def record(self) -> dict[str, object]:
        return {"mechanism": self.mechanism.value, "marker": f"{MARKER}={self.instance}/"}


# --- choosing ---------------------------------------------------------------------------------


def choose(setting: str, tracked: Callable[[], set[int]]) -> Containment:
    """`auto` takes cgroup v2 when a writable tree exists, else tracking; `cgroup` insists on it."""
    if setting != Mechanism.TRACKING:
        mount, home = cgroup2_mount(), own_cgroup()
        try:
            if mount is None or home is None:
                raise ContainmentError("no cgroup v2 mount in /proc/self/mountinfo")
            return CgroupContainment(mount, home, tracked)
        except ContainmentError as exc:
            if setting == Mechanism.CGROUP:
                raise
            log.info("%s; tracking descendants by environment marker instead", exc)
    return TrackingContainment(tracked)


def restore(record: Mapping[str, object], tracked: Callable[[], set[int]]) -> Containment:
    """The containment a previous image of this same process used (`record()`), taken over after
    `agent reexec`: the same environment marker and, for cgroup, the same subtree and slots.
    ContainmentError when the record does not describe one this process can take over.
    """
    marker = record.get("marker")
    prefix = f"{MARKER}="
    if not (isinstance(marker, str) and marker.startswith(prefix) and marker.endswith("/")):
        raise ContainmentError(f"no environment marker in the handed-over containment {dict(record)}")
    instance = marker[len(prefix):-1]
    if record.get("mechanism") == Mechanism.TRACKING:
        return TrackingContainment(tracked, instance=instance)
    mount, home = cgroup2_mount(), own_cgroup()
    if mount is None or home is None:
        raise ContainmentError("no cgroup v2 mount in /proc/self/mountinfo")
    containment = CgroupContainment(mount, home, tracked, instance=instance)
    if str(containment.base) != record.get("cgroup"):
        raise ContainmentError(f"the handed-over cgroup {record.get('cgroup')} is not this process's "
                               f"{containment.base}")
    return containment
