"""The one stop escalation for component processes: the stop signal, SIGCONT, a grace, then SIGKILL.

Every process of a replica gets the stop signal, as systemd's KillMode=control-group does, then SIGCONT
as systemd sends it: a stopped (SIGSTOP, SIGTSTP) process acts on the signal instead of waiting out the
grace for its SIGKILL. The lifecycle stops its replicas with `stop_process`; the hand-over of a re-exec
uses it for replicas of removed components, and `stop_unreaped` for the replicas of an image that
cannot run, which nobody reaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from agent.config.component import StopSettings
from agent.supervise.containment import Scope
from agent.supervise.flag import Flag
from agent.supervise.process import signal_group

log = logging.getLogger("agent.supervisor")

KILL_WAIT_SECONDS = 10.0  # after SIGKILL a process is gone within moments; bounded all the same
_POLL_SECONDS = 0.02


def _send(pid: int, signum: int, scope: Scope | None) -> None:
    """Signal every process of the slot (through the scope, else the group, else the pid alone)."""
    if scope is not None and scope.signal(signum, pid):
        return
    if signal_group(pid, signum):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _kill(pid: int, scope: Scope | None) -> None:
    if scope is not None:
        scope.kill(pid)
    signal_group(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def stop_process(pid: int, stop: StopSettings, exited: asyncio.Event | Flag, scope: Scope | None,
                       who: str) -> bool:
    """Stop `pid` and its slot as `stop` says, waiting on `exited` (set by whoever reaps it).

    `who` names it in the log ("component web replica 0"). True when it had to be SIGKILLed.
    """
    for signum in (stop.signum, signal.SIGCONT):
        _send(pid, signum, scope)
    try:
        await asyncio.wait_for(exited.wait(), stop.grace)
    except TimeoutError:
        log.warning("%s (pid %d) ignored %s for %.1fs; sending SIGKILL", who, pid, stop.signal, stop.grace)
        _kill(pid, scope)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exited.wait(), KILL_WAIT_SECONDS)
        killed = True
    else:
        killed = False
    if exited.is_set():
        log.info("%s (pid %d) stopped", who, pid)
    else:
        log.error("%s (pid %d) still there %.0fs after SIGKILL", who, pid, KILL_WAIT_SECONDS)
    return killed


async def stop_unreaped(pids: dict[int, StopSettings]) -> None:
    """Stop processes that no reaper watches (children of this process): the stop signal to each group,
    SIGCONT, the grace, then SIGKILL; each is reaped here, and given up KILL_WAIT_SECONDS after its SIGKILL."""
    loop = asyncio.get_running_loop()
    pending: dict[int, float] = {}
    killed: set[int] = set()
    for pid, stop in pids.items():
        for signum in (stop.signum, signal.SIGCONT):
            _send(pid, signum, None)
        pending[pid] = loop.time() + stop.grace
    while pending:
        for pid, deadline in list(pending.items()):
            if reaped(pid):
                del pending[pid]
            elif loop.time() < deadline:
                continue
            elif pid in killed:
                log.error("pid %d still there %.0fs after SIGKILL; giving up on it", pid, KILL_WAIT_SECONDS)
                del pending[pid]
            else:
                killed.add(pid)
                _kill(pid, None)
                pending[pid] = loop.time() + KILL_WAIT_SECONDS
                if reaped(pid):
                    del pending[pid]
        if pending:
            await asyncio.sleep(_POLL_SECONDS)


def reaped(pid: int) -> bool:
    """Reap pid if it exited; True when it is gone (or was reaped by someone else)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid
