"""The guardian: a helper process that ends this agent's processes when the agent dies.

The agent holds the write end of a pipe to it. At EOF, which the kernel delivers even when the agent
is SIGKILLed, the guardian kills every process group still listed, the agent's cgroup subtree and every
process carrying the agent's environment marker. It is a POSIX shell script, not Python: a fraction of
a Python helper's resident memory.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Mapping, Sequence

from agent.supervise.process import ExitStatus, Reaper

log = logging.getLogger("agent.process")


class Guardian:
    """A helper process that ends this agent's processes when the agent's pipe closes.

    It holds the process groups of the live replicas plus, depending on the containment mechanism,
    the agent's cgroup subtree or its environment marker. If it dies, a new one is started at once
    and told everything again, so an agent crash later is still covered.
    """

    def __init__(self, reaper: Reaper, setup: Sequence[str] = (), *, adopt: Mapping[str, object] | None = None) -> None:
        self._reaper = reaper
        self._setup = list(setup)
        self._groups: set[int] = set()
        # Changes to the groups not yet written: sent as one write once the current callback is done
        # (a restart's remove and add), not each on its own in the middle of the restart.
        self._pending: list[str] = []
        self._write_fd = -1
        self._closed = False
        self._started = 0.0
        self.pid = 0
        self.alive = False
        self.restarts = 0
        if adopt is not None and self._adopt(adopt):
            return
        self._start()

    def hand_over(self) -> dict[str, object]:
        """What a new image of this process needs to keep this guardian (`agent reexec`).

        The pipe's write end is made inheritable so it survives the exec: closing it would make the
        guardian kill everything.
        """
        self._flush()
        if self.alive and self._write_fd >= 0:
            os.set_inheritable(self._write_fd, True)
        return {"pid": self.pid if self.alive else 0, "fd": self._write_fd if self.alive else -1,
                "groups": sorted(self._groups), "restarts": self.restarts}

    def _adopt(self, record: Mapping[str, object]) -> bool:
        """Keep the guardian the previous image handed over; False when there is none to keep."""
        pid, fd, groups, restarts = record.get("pid"), record.get("fd"), record.get("groups"), record.get("restarts")
        self._groups = {g for g in groups if isinstance(g, int)} if isinstance(groups, list) else set()
        self.restarts = restarts if isinstance(restarts, int) else 0
        if not (isinstance(pid, int) and isinstance(fd, int) and pid > 0 and fd >= 0):
            return False
        try:
            os.set_inheritable(fd, False)  # components started from now on must not hold it
            os.fstat(fd)
        except OSError:
            log.error("the guardian pipe (fd %d) did not survive the exec; starting a new guardian", fd)
            return False
        self.pid, self._write_fd, self.alive, self._started = pid, fd, True, time.monotonic()
        self._reaper.adopt(pid, self._exited)
        return True

    def _start(self) -> None:
        if self._closed or self.alive:
            return
        read_fd, write_fd = os.pipe()
        try:
            os.set_blocking(write_fd, True)
            self.pid = self._reaper.spawn(
                ["/bin/sh", "-c", _GUARDIAN_SOURCE, "agent-guardian"],
                self._exited,
                stdin=read_fd,
                die_with_parent=False,
            )
        except OSError as exc:
            os.close(write_fd)
            log.error("cannot start the guardian process (%s); retrying in 1s", exc.strerror or exc)
            self._reaper.loop.call_later(1.0, self._start)
            return
        finally:
            os.close(read_fd)
        self._write_fd = write_fd
        self.alive = True
        self._started = time.monotonic()
        self._pending.clear()  # a new guardian is told every group below
        self._send("".join(f"{line}\n" for line in self._setup) + "".join(f"+{g}\n" for g in self._groups))

    def _exited(self, status: ExitStatus) -> None:
        self.alive = False
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self._closed:
            return
        self.restarts += 1
        # A guardian that cannot even stay up for a second is retried once a second, not in a loop.
        delay = 1.0 if time.monotonic() - self._started < 1.0 else 0.0
        log.warning("guardian process (pid %d) %s; starting a new one%s", self.pid, status.describe,
                    f" in {delay:g}s" if delay else "")
        self._reaper.loop.call_later(delay, self._start)

    def _send(self, text: str) -> None:
        if not self.alive or self._write_fd < 0 or not text:
            return
        try:
            os.write(self._write_fd, text.encode())
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            # Dying: its exit is reaped shortly and the replacement is told everything.

    def configure(self, line: str) -> None:
        """Tell this and every later guardian a setting (a cgroup subtree, an environment marker)."""
        self._setup.append(line)
        self._send(f"{line}\n")

    def add(self, pgid: int) -> None:
        """Cover a process group (once: an adopted one is already listed)."""
        if pgid in self._groups:
            return
        self._groups.add(pgid)
        self._queue(f"+{pgid}\n")

    def remove(self, pgid: int) -> None:
        """Stop covering a process group (it is gone)."""
        self._groups.discard(pgid)
        self._queue(f"-{pgid}\n")

    def _queue(self, line: str) -> None:
        """Send a change once the event loop's current callback returns.

        A write wakes the guardian, which on a busy machine can take the CPU from the agent in the
        middle of a restart (a delay per write that grows with the number of components);
        the remove and the add of a restart now go together, after the new child is started. The
        groups are a backstop (the cgroup, the environment marker and each child's parent-death
        signal cover the same processes), so this moment of delay leaves nothing uncovered that an
        agent crash could leak.
        """
        if not self._pending:
            self._reaper.loop.call_soon(self._flush)
        self._pending.append(line)

    def _flush(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._send(text)

    def close(self) -> None:
        """Close the pipe: the guardian kills what is left and exits."""
        self._flush()
        self._closed = True
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1


# A POSIX shell script (far less resident memory than a Python helper), in its own session.
# Reads "+pgid" / "-pgid" lines, "c<dir>" (the agent's cgroup subtree) and "e<VAR=prefix>" (the
# environment marker). At EOF (the agent is gone) it SIGKILLs every group still listed, kills every
# cgroup under the subtree and removes it, and SIGKILLs every process whose environment carries the
# marker (repeated while new ones appear, at most 20 rounds).
# The groups are one shell variable each (`agent_pg_<pgid>`, set and unset: a hash lookup), listed at
# EOF with `set`. A list in one string cost dash O(length^2) per removal, CPU taken from the agent
# and the child it was starting on a small machine at every restart. `set`
# prints a value with a newline over several lines, but a line of its own `agent_pg_<digits>='1'`
# can only come from one of ours (a quote inside a value is printed escaped).
_GUARDIAN_SOURCE = """
trap '' INT HUP
cg=''
mark=''
while IFS= read -r line; do
  case "$line" in
    +*) g=${line#+}
        case "$g" in ''|*[!0-9]*) ;; *) eval "agent_pg_$g=1" ;; esac ;;
    -*) g=${line#-}
        case "$g" in ''|*[!0-9]*) ;; *) unset "agent_pg_$g" ;; esac ;;
    c*) cg=${line#c} ;;
    e*) mark=${line#e} ;;
  esac
done
set | while IFS= read -r line; do
  case "$line" in
    agent_pg_*"='1'") g=${line%%=*}; g=${g#agent_pg_}
        case "$g" in ''|*[!0-9]*) ;; *) kill -s KILL -- "-$g" 2>/dev/null ;; esac ;;
  esac
done
if [ -n "$cg" ] && [ -d "$cg" ]; then
  for d in "$cg"/*/; do
    if [ -f "${d}cgroup.kill" ]; then echo 1 > "${d}cgroup.kill"
    elif [ -f "${d}cgroup.procs" ]; then kill -s KILL $(cat "${d}cgroup.procs"); fi
  done 2>/dev/null
  n=0
  while [ -d "$cg" ] && [ $n -lt 50 ]; do
    rmdir "$cg"/*/ "$cg" 2>/dev/null || sleep 0.1
    n=$((n+1))
  done
fi
if [ -n "$mark" ]; then
  n=0
  while [ $n -lt 20 ]; do
    found=''
    for f in $(grep -lsz -- "^$mark" /proc/[0-9]*/environ); do
      p=${f#/proc/}; p=${p%/environ}
      [ "$p" = "$$" ] || found="$found $p"
    done
    [ -n "$found" ] || break
    kill -s KILL $found 2>/dev/null
    n=$((n+1))
  done
fi
"""
