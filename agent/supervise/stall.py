"""Noticing that the agent itself did not run for a while (SIGSTOP, a paused VM, a starved host).

A replica's run time decides whether its backoff resets, and the agent measures it when it reaps the
exit. After a stall that reap comes late: a child that died 3 s into a 10 s stall would be credited
with 13 s. A tick every `interval` seconds tells when the loop last ran; a gap above `threshold`
is a stall, and a run that overlaps one is credited only up to the stall's start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("agent.stall")


class StallWatch:
    """Ticks on the event loop and remembers the recent stalls as (last tick before, first tick after)."""

    def __init__(self, clock: Callable[[], float], interval: float = 0.5, threshold: float = 2.0,
                 keep: int = 16) -> None:
        self.clock = clock
        self.interval = interval
        self.threshold = threshold
        self.keep = keep
        self.stalls: list[tuple[float, float]] = []
        self.last = clock()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin ticking on the running loop."""
        if self._timer is None:
            self.last = self.clock()
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        """Stop ticking."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self.note(self.clock())
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def note(self, now: float) -> None:
        """Record that the loop runs at `now`; a gap since the last note above the threshold is a stall."""
        if self._timer is None:
            return
        if now - self.last > self.threshold:
            log.warning("the agent did not run for %.1fs (stopped or starved); run times that span it "
                        "do not reset backoff", now - self.last)
            self.stalls = [*self.stalls[-(self.keep - 1):], (self.last, now)]
        self.last = now

    def ran_for(self, started_at: float, now: float) -> float:
        """How long a process started at `started_at` can be vouched to have run, seen at `now`."""
        self.note(now)
        credited = now - started_at
        for before, after in self.stalls:
            if after > started_at and before < now:
                credited = min(credited, max(0.0, before - started_at))
        return credited
