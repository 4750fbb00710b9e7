"""`agent reexec` and SIGUSR2: the agent replaces its own process image (`execve`, same PID) and the new
image adopts the running components, so new code and a changed `listen` or `state_dir` take effect
without a component restart, as systemd's `daemon-reexec`.

Why this works: the components are children of this PID, and an exec keeps the PID, so they stay
its children (their parent-death signal does not fire) and their exits still reach this process. The
guardian's pipe is the one descriptor kept open across the exec; every other one is close-on-exec.

The steps, old image: preflight (the installed code, run in a subprocess, must import and accept the
config files: else the request is refused and nothing changes), take every component's lock (no
restart, scale or reload in flight), stop serving, flush the state dir, write `reexec.json` (config,
replicas, guardian, containment, fd limits) into the state dir, hold the stop signals (signals.py), exec from the
main thread (a parent-death signal fires when the *thread* that forked a child ends). New image:
`take_handover()` reads the file named by AGENT_REEXEC_HANDOVER; the parts are built around what
it describes (same cgroup subtree or marker, same guardian, nothing swept, the reaper collects the
children that died during the exec); then it serves on the new config's address. When the new
config does not load or bind, it runs on the previous image's config; when nothing works, it stops
the handed-over components cleanly (stop signal, grace, SIGKILL, guardian) before exiting.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config.loader import DEFAULT_CONFIG, ConfigError, load_config
from agent.daemon.handover import drop_reserve, reserve_handover

if TYPE_CHECKING:
    from agent.act.modes import Modes
    from agent.act.remediation import Remediator
    from agent.config.settings import AgentSettings
    from agent.supervise.process import ExitStatus, Reaper
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.reexec")

PREFLIGHT_TIMEOUT = 60.0
LOCK_TIMEOUT = 30.0

# The new code, run as it would run after the exec: it must import the whole agent and accept the files.
_PREFLIGHT = ("import sys, agent.daemon.app, agent.daemon.reexec\n"
              "from agent.cli.main import main\n"
              "sys.exit(main(['check-config', *sys.argv[1:]]))\n")


@dataclass(frozen=True)
class Refusal:
    """Why a reexec was not started; nothing changed. `status` is the HTTP code (422 invalid config)."""

    status: int
    error: str
    errors: tuple[str, ...] = ()

    def describe(self) -> str:
        return "\n".join([self.error, *(f"  {e}" for e in self.errors)])


async def preflight(reaper: Reaper, paths: list[Path] | None, timeout: float = PREFLIGHT_TIMEOUT) -> Refusal | None:
    """Run the installed code in a subprocess against the config files; None when it would start.

    Spawned through the reaper (its waitpid(-1) would steal the exit from subprocess.run).
    """
    # The files the agent runs on, named, so the check never searches (the embedded demo when it runs on that).
    argv = [sys.executable, "-c", _PREFLIGHT, *(str(p) for p in paths or [DEFAULT_CONFIG])]
    loop = asyncio.get_running_loop()
    done: asyncio.Future[ExitStatus] = loop.create_future()

    def finished(status: ExitStatus) -> None:
        if not done.done():
            done.set_result(status)

    with tempfile.TemporaryFile() as out:
        try:
            pid = reaper.spawn(argv, finished, stdout=out.fileno())
        except OSError as exc:
            return Refusal(409, f"cannot run the installed agent ({sys.executable}): {exc.strerror or exc}")
        try:
            status = await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await done
            return Refusal(409, f"the installed agent did not finish checking the config within {timeout:.0f}s")
        out.seek(0)
        lines = out.read().decode(errors="replace").splitlines()
    if status.code == 0:
        return None
    if status.code == 2:
        body = [line.strip() for line in lines[1:] if line.strip()] or lines
        return Refusal(422, f"invalid config: {lines[0] if lines else 'check-config failed'}", tuple(body))
    return Refusal(409, f"the installed agent does not start ({status.describe})", tuple(lines[-20:]))


async def quiesce(sup: Supervisor, timeout: float = LOCK_TIMEOUT) -> list[str]:
    """Take every component's lock, so no restart, scale or reload is in flight when the state is
    handed over; returns the components still busy after `timeout` (their locks are not held).

    Held locks are never released on success: the process image ends with them.
    """
    taken: list[asyncio.Lock] = []
    for rt in sup.components.values():
        try:
            await asyncio.wait_for(rt.lock.acquire(), timeout)
        except TimeoutError:
            for lock in taken:
                lock.release()
            return [rt.name]
        taken.append(rt.lock)
    return []


class Trigger:
    """Checks a reexec request (preflight, settle, quiesce) and, once accepted, tells the agent to hand over.

    Alerts accepted before the request are acted on by this image: after the preflight the agent stops
    accepting work (the webhook, the control API and /-/reload answer 503 with Retry-After, recording
    nothing), waits for the accepted actions to finish, and only then takes the components' locks. A
    refused reexec accepts work again; nothing answered 200 is left waiting on a lock the exec ends.
    """

    def __init__(self, sup: Supervisor, reaper: Reaper, paths: list[Path] | None, go: Callable[[], None],
                 modes: Modes, remediator: Remediator) -> None:
        self.sup, self.reaper, self.paths, self.go = sup, reaper, paths, go
        self.modes, self.remediator = modes, remediator
        self.accepted = False
        self._busy = False

    async def request(self) -> Refusal | None:
        """None when the reexec may go ahead (the caller then calls `go`); else why not, nothing changed."""
        if self.modes.closing:
            return Refusal(503, "the agent is shutting down")
        if self._busy or self.accepted:
            return Refusal(409, "a reexec is already in progress")
        self._busy = True
        try:
            refusal = await preflight(self.reaper, self.paths)
            if refusal is None:
                short = await asyncio.to_thread(reserve_handover, self.sup)
                refusal = Refusal(409, short) if short else None
            if refusal is None:
                refusal = await self._settle_and_quiesce()
                if refusal is not None:
                    drop_reserve(self.sup)
        finally:
            self._busy = False
        self.accepted = refusal is None
        if self.accepted:
            self.modes.commit()
        return refusal

    async def _settle_and_quiesce(self) -> Refusal | None:
        self.modes.pause("re-executing")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_TIMEOUT
        left = await self.remediator.settle(LOCK_TIMEOUT)
        refusal: Refusal | None
        if left:
            refusal = Refusal(409, f"{left} accepted alert action(s) still in flight after {LOCK_TIMEOUT:.0f}s "
                                   "(a slow restart or scale); try again")
        else:
            busy = await quiesce(self.sup, max(1.0, deadline - loop.time()))
            refusal = None if not busy else Refusal(
                409, f"component {busy[0]} stayed busy (a restart, scale or reload) for {LOCK_TIMEOUT:.0f}s; try again")
        if refusal is not None or self.modes.closing:
            self.modes.resume()
        return refusal

    def next_settings(self, current: AgentSettings) -> AgentSettings:
        """The agent settings the new image will use (what the files say now), for the caller to reach it."""
        try:
            return load_config(self.paths).agent if self.paths else current
        except ConfigError:
            return current

    async def on_signal(self) -> None:
        """SIGUSR2: the same checks; a refusal is logged."""
        refusal = await self.request()
        if refusal is not None:
            log.error("reexec (SIGUSR2) refused, nothing changed: %s", refusal.describe())
            return
        self.go()


