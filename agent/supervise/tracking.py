"""Containment by environment marker, where no writable cgroup v2 tree exists: every child carries
`<MARKER>=<instance>/<component>/<index>`, and the agent, a child subreaper, finds the descendants
that daemonised among its own children by that inherited marker."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
from collections.abc import Callable, Iterator

from agent.supervise.containment import KILL_ROUNDS, MARKER, Containment, Mechanism, Scope, send_signal
from agent.supervise.procfs import ProcFS

log = logging.getLogger("agent.containment")


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
