"""Containment: everything a replica started goes with it, including descendants that left its group.

Two mechanisms, chosen once at start:

- `cgroup`: each replica slot gets a cgroup v2 directory under a subtree of the agent's own cgroup;
  the child is moved into it right after the fork (by a worker thread: a migration can wait for an
  RCU grace period), so no later `setsid` or double fork leaves it, and `cgroup.kill` ends
  the whole slot: systemd's `KillMode=control-group`, without needing systemd. The child also
  carries the environment marker below, which covers what it forks before the move lands.
- `tracking`: where no writable cgroup v2 tree exists. Every child gets an environment marker naming
  its replica; the agent is a child subreaper, so descendants that daemonise are re-parented to it,
  and their inherited marker (read from /proc/PID/environ) says whose they are. A process that clears
  its environment and is orphaned escapes this (documented in docs/operations.md).

The guardian (agent/supervise/guardian.py) is told the cgroup subtree or the marker, so it can end the
same processes when the agent itself dies.

This module holds what every mechanism provides (`Containment`, its `Scope`s); agent/supervise/cgroup.py
and agent/supervise/tracking.py implement them, agent/supervise/choice.py picks one.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os

log = logging.getLogger("agent.containment")

MARKER = "ORCHESTRATOR_AGENT_SCOPE"
KILL_ROUNDS = 20  # a fork bomb that outruns 20 rounds of SIGKILL is reported, not chased forever


class Mechanism(enum.StrEnum):
    CGROUP = "cgroup"
    TRACKING = "tracking"


class ContainmentError(Exception):
    """The requested mechanism cannot be used here."""


def send_signal(pids: list[int], sig: int) -> int:
    """Send sig to each of pids; returns how many got it."""
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

    def flush(self) -> None:
        """Wait for the work in flight to be done (a cgroup's moves of new children into their slots)."""

    def close(self) -> None:
        """The agent stops: every slot has been stopped; remove what is left."""
