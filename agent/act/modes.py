"""Autonomy mode and emergency stop: what the automation may do, and its persistence.

The webhook reads these, the control API changes them, `/metrics` exports them; none of them needs
the rest of the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent.config.settings import Autonomy
from agent.supervise.state import StateStore

log = logging.getLogger("agent")


class Modes:
    """The autonomy mode, the emergency stop (kept in the state dir) and whether the agent is closing."""

    def __init__(self, store: StateStore, default: Autonomy) -> None:
        self.store = store
        self.emergency = bool(store.data.get("emergency_stop", False))
        self.autonomy = Autonomy.OFF if self.emergency else default
        self.closing = False  # set at shutdown: new webhook and control work is refused (503)
        # Why new webhook and control work is refused for now (503 with Retry-After), "" when it is not:
        # a re-exec settling what was accepted before it takes every component's lock.
        self.paused = ""
        self._settled = asyncio.Event()  # set while not paused, or once the pause ends in a re-exec
        self._settled.set()

    @property
    def refusing(self) -> str:
        """Why new work is refused (503), "" when it is accepted."""
        return "shutting down" if self.closing else self.paused

    def pause(self, why: str) -> None:
        """Refuse new webhook and control work (503, retry) until `resume` or the end of this image."""
        self.paused = why
        self._settled.clear()

    def resume(self) -> None:
        """Accept work again (the re-exec was refused)."""
        self.paused = ""
        self._settled.set()

    def commit(self) -> None:
        """The pause ends with this process image (the re-exec goes ahead): stop waiting for it."""
        self._settled.set()

    async def settled(self, timeout: float) -> bool:
        """Wait (bounded) for a pause to end; True when work is accepted again."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        return not self.paused

    def set_autonomy(self, mode: Autonomy) -> None:
        """Change the autonomy mode; `on` also lifts an emergency stop."""
        self.autonomy = mode
        if mode is Autonomy.ON and self.emergency:
            self.emergency = False
            self.store.data["emergency_stop"] = False
            self.store.save()
            log.warning("emergency stop lifted: autonomy on")
        log.info("autonomy set to %s", mode.value)

    async def hold_emergency(self) -> None:
        """Autonomy off and the emergency flag on, on disk before this returns."""
        self.emergency = True
        self.autonomy = Autonomy.OFF
        self.store.data["emergency_stop"] = True
        self.store.save()
        # Durable before anything is stopped: an agent killed right after must come back stopped.
        if not await asyncio.to_thread(self.store.flush, 5.0):
            log.error("emergency stop could not be written to %s; it holds until this agent stops",
                      self.store.path)
        log.critical("EMERGENCY STOP: stopping every component, autonomy off until `agent autonomy on`")
