"""The circuit breaker's timers: open after too many restarts, one trial start after the cooldown,
close when the trial runs long enough (or a human starts the component).

The decision to open is policy.decide_exit's; this module carries out the state changes and timers,
and calls back into the supervisor for the one thing it cannot do itself: spawn the trial replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from agent.supervise import policy
from agent.supervise.policy import Circuit
from agent.supervise.replica import Replica, ReplicaState, Runtime

log = logging.getLogger("agent.supervisor")


class CircuitBreaker:
    """Opens, trials and closes the circuits of a supervisor's components."""

    def __init__(self, *, spawn: Callable[[Runtime, Replica], bool], new_replica: Callable[[Runtime, int], Replica],
                 reconcile: Callable[[Runtime], object], persist: Callable[[], None],
                 closing: Callable[[], bool], changed: Callable[[Runtime, bool, str], None] = lambda rt, o, w: None,
                 ) -> None:
        self._spawn = spawn
        self._changed = changed  # (runtime, opened, why): the circuit opened, or closed after being open
        self._new_replica = new_replica
        self._reconcile = reconcile
        self._persist = persist
        self._closing = closing

    def open(self, rt: Runtime, reason: str, opened_wall: float | None = None) -> None:
        """No more restarts: backoffs in flight are cancelled, one trial is due after the cooldown."""
        rt.circuit = Circuit.OPEN
        rt.circuit_opened_wall = time.time() if opened_wall is None else opened_wall
        for rep in rt.replicas.values():
            if rep.state is ReplicaState.BACKOFF:
                if rep.timer is not None:
                    rep.timer.cancel()
                    rep.timer = None
                rep.state = ReplicaState.EXITED
        delay = policy.circuit_trial_due(rt.circuit_opened_wall, time.time(), rt.spec.restart.circuit_cooldown)
        log.error("component %s: circuit open (%s); no restarts for %.1fs, then one trial",
                  rt.name, reason, delay)
        self.schedule_trial(rt, delay)
        self._persist()
        self._tell(rt, True, f"{reason}; no restarts for {delay:.0f}s, then one trial start")

    def schedule_trial(self, rt: Runtime, delay: float) -> None:
        """The trial start, `delay` seconds from now (a restored open circuit keeps its cooldown)."""
        self.cancel(rt)
        rt.circuit_timer = asyncio.get_running_loop().call_later(delay, self._trial, rt)

    def cancel(self, rt: Runtime) -> None:
        """Drop a pending trial (a stop by hand, the agent stopping)."""
        if rt.circuit_timer is not None:
            rt.circuit_timer.cancel()
            rt.circuit_timer = None

    def _trial(self, rt: Runtime) -> None:
        rt.circuit_timer = None
        if rt.circuit is not Circuit.OPEN or rt.manual_stop or self._closing():
            return
        down = [r for r in rt.active() if not r.alive]
        if not down and len(rt.active()) >= rt.desired:
            self.close(rt, "nothing left to try")
            return
        rt.circuit = Circuit.HALF_OPEN
        self._persist()
        rep = down[0] if down else self._new_replica(rt, len(rt.replicas))
        log.warning("component %s: circuit half-open, one trial start of replica %d", rt.name, rep.index)
        if self._spawn(rt, rep):
            generation = rep.generation
            asyncio.get_running_loop().call_later(
                rt.spec.restart.backoff.reset_after, self._trial_passed, rt, rep, generation
            )

    def _trial_passed(self, rt: Runtime, rep: Replica, generation: int) -> None:
        if rt.circuit is Circuit.HALF_OPEN and rep.generation == generation and rep.alive:
            self.close(rt, f"trial ran {rt.spec.restart.backoff.reset_after:g}s")
            self._reconcile(rt)

    def close(self, rt: Runtime, why: str) -> None:
        """Restarts allowed again, with a fresh failure count."""
        self.cancel(rt)
        was_open = rt.circuit is not Circuit.CLOSED
        if was_open:
            log.info("component %s: circuit closed (%s)", rt.name, why)
        rt.circuit = Circuit.CLOSED
        rt.history.clear()
        for rep in rt.replicas.values():
            rep.failures = 0
        self._persist()
        if was_open:
            self._tell(rt, False, why)

    def _tell(self, rt: Runtime, opened: bool, why: str) -> None:
        # After the state changed: a listener that fails must not stop what follows (a restart by hand, the
        # reconcile after a trial that ran).
        try:
            self._changed(rt, opened, why)
        except Exception:
            log.exception("component %s: telling of the circuit change failed", rt.name)
