"""What a dead agent left: `containment.json` in the state dir records which cgroup subtree or
environment marker an agent used, so the next start with the same state dir can end whatever the
agent and its guardian did not (both SIGKILLed together, say).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path

from agent.supervise.cgroup import CgroupScope, rmdir_when_empty
from agent.supervise.containment import KILL_ROUNDS, MARKER, Containment, send_signal
from agent.supervise.procfs import ProcFS
from agent.supervise.state import atomic_write_json

log = logging.getLogger("agent.containment")


def sweep_cgroup(base: Path) -> set[int]:
    """End every process left in a dead agent's cgroup subtree and remove it; returns their pids."""
    killed: set[int] = set()
    if not base.is_dir():
        return killed
    slots = sorted(p for p in base.iterdir() if p.is_dir())
    for slot in slots:
        killed |= CgroupScope(None, slot, (slot / "cgroup.kill").exists()).kill(None)
    for slot in slots:
        rmdir_when_empty(slot)
    rmdir_when_empty(base)
    return killed


def sweep_marked(prefix: str, proc: str = "/proc") -> set[int]:
    """SIGKILL every process whose environment has an entry starting with `prefix`; returns their pids."""
    needle = prefix.encode()
    me = os.getpid()
    killed: set[int] = set()
    for _ in range(KILL_ROUNDS):
        found = []
        for name in os.listdir(proc):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"{proc}/{name}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if any(e.startswith(needle) for e in env.split(b"\0")):
                found.append(int(name))
        procfs = ProcFS(proc)
        found = [p for p in found if procfs.living(p)]
        if not found:
            break
        send_signal(found, signal.SIGKILL)
        killed.update(found)  # one that takes a moment to die is signalled again, counted once
    return killed


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2:].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class Ledger:
    """`containment.json` in the state dir: whose processes may still be out there after a crash."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "containment.json"

    def sweep_previous(self) -> int:
        """End what a dead previous agent (same state dir) left behind; returns how many processes."""
        try:
            previous = json.loads(self.path.read_text(encoding="utf-8"))
            pid, ticks = int(previous["pid"]), int(previous["start_ticks"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s (%s)", self.path, exc)
            return 0
        if pid != os.getpid() and _start_ticks(pid) == ticks:
            log.error("the agent that recorded %s (pid %d) is still running: not touching its processes",
                      self.path, pid)
            return 0
        # A union: a process the cgroup sweep signalled may still be listed (its SIGKILL not yet
        # taken) when the marker sweep looks, and it is one process, not two.
        killed: set[int] = set()
        cgroup, marker = previous.get("cgroup"), previous.get("marker")
        if isinstance(cgroup, str) and cgroup.rsplit("/", 1)[-1].startswith("orchestrator-agent."):
            killed |= sweep_cgroup(Path(cgroup))
        if isinstance(marker, str) and marker.startswith(f"{MARKER}="):
            killed |= sweep_marked(marker)
        if killed:
            log.warning("ended %d process(es) left by the previous agent (pid %d)", len(killed), pid)
        return len(killed)

    def write(self, containment: Containment) -> None:
        """Record this agent; a crash leaves it for the next start to sweep."""
        record = {"pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()), **containment.record()}
        try:
            atomic_write_json(self.path, record)
        except OSError as exc:
            log.error("cannot write %s (%s): a crash would leave processes the next start cannot find",
                      self.path, exc.strerror or exc)

    def clear(self) -> None:
        """A clean stop leaves nothing to sweep."""
        with contextlib.suppress(OSError):
            self.path.unlink()
