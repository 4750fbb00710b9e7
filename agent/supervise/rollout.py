"""Rolling replacement of a component's replicas: one at a time, each successor ready before the next
old replica stops.

Stop before start (Kubernetes' maxSurge 0, maxUnavailable 1): replicas often share a port pattern
through `{replica}`, so a successor can only bind once its predecessor is gone. With n replicas, at
most one is down at any moment.

`Supervisor.restart` rolls a component with several replicas; the config reload rolls the replicas
whose launch settings changed. The caller holds the component's lock for the whole roll, so scales,
webhook actions and other restarts of that component never interleave with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.config.component import Component
from agent.supervise.replica import Replica, Runtime

if TYPE_CHECKING:
    from agent.supervise.lifecycle import Lifecycle

log = logging.getLogger("agent.supervisor")

# How long a successor may take to get ready when the component has no probe and no
# rollout.ready_timeout: long enough for a slow start, short enough that a halt shows the same hour.
DEFAULT_READY_TIMEOUT = 60.0


@dataclass
class RollResult:
    """What a restart or roll did: `replaced` successors started (in a roll: started and ready);
    `started` successors started, ready or not (a roll cut short or halted leaves one not ready)."""

    replaced: int
    halted: bool = False
    interrupted: bool = False
    reason: str = ""
    # Old replicas not replaced (after a halt, an interruption or an abort), in index order.
    remaining: list[Replica] = field(default_factory=list)
    started: int = -1

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.replaced

    def describe(self) -> str:
        """`restarted 2 replica(s) (1 ready), then stopped: stopped` and the like, for the audit."""
        said = f"restarted {self.started} replica(s)"
        if self.started != self.replaced:
            said += f" ({self.replaced} ready)"
        if self.halted or self.interrupted:
            said += f", then {'halted' if self.halted else 'stopped'}: {self.reason}"
        return said


def ready_timeout(spec: Component) -> float:
    """`rollout.ready_timeout`, else the probe's startup grace, else DEFAULT_READY_TIMEOUT."""
    if spec.rollout.ready_timeout is not None:
        return spec.rollout.ready_timeout
    return spec.probe.startup_grace if spec.probe is not None else DEFAULT_READY_TIMEOUT


async def roll(lc: Lifecycle, rt: Runtime, replicas: list[Replica], reason: str) -> RollResult:
    """Replace `replicas` in index order, each successor ready before the next stops; the lock is held.

    A successor not ready within `ready_timeout` halts the roll: the old replicas not yet reached keep
    running, the successor stays under its restart policy, and the result says why.
    `rt.roll_interrupt` (set between two replicas) ends the roll after the replica in hand;
    `rt.roll_abort` (a stop, the shutdown) ends it at once.
    """
    todo = sorted(replicas, key=lambda r: r.index)
    timeout = ready_timeout(rt.spec)
    replaced = started = 0
    for i, rep in enumerate(todo):
        if lc.shutting_down or rt.roll_abort.is_set():
            return RollResult(replaced, interrupted=True, reason="stopped", remaining=todo[i:], started=started)
        if i and rt.roll_interrupt.is_set():
            log.info("component %s: rolling restart handed over after %d of %d replica(s)",
                     rt.name, replaced, len(todo))
            return RollResult(replaced, interrupted=True, reason="taken over", remaining=todo[i:], started=started)
        await lc.stop_replica(rt, rep)
        if lc.respawn(rt, rep, reason):
            started += 1
        if await _ready(rt, rep, timeout):
            replaced += 1
            continue
        if lc.shutting_down or rt.roll_abort.is_set():
            return RollResult(replaced, interrupted=True, reason="stopped", remaining=todo[i + 1:], started=started)
        why = (f"replica {rep.index} not ready {timeout:g}s after its restart; halted after {replaced} of "
               f"{len(todo)} replaced, {len(todo) - i - 1} old replica(s) keep running")
        log.warning("component %s: rolling restart halted: %s", rt.name, why)
        return RollResult(replaced, halted=True, reason=why, remaining=todo[i + 1:], started=started)
    return RollResult(replaced, started=started)


async def _ready(rt: Runtime, rep: Replica, timeout: float) -> bool:
    """Wait (bounded) until the replica's new run is ready or the roll is aborted; True when ready."""
    waits = {asyncio.ensure_future(rep.became_ready.wait()), asyncio.ensure_future(rt.roll_abort.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return rep.became_ready.is_set()


@contextlib.asynccontextmanager
async def taking_over(rt: Runtime, *, abort: bool = False) -> AsyncIterator[None]:
    """Hold the component's lock, asking a roll that holds it to stop early.

    Without `abort` the roll finishes the replica in hand (its successor ready) and returns the rest
    (the reload, which then rolls what its own plan needs); with `abort` it returns at once (a stop).
    """
    event = rt.roll_abort if abort else rt.roll_interrupt
    event.set()
    try:
        async with rt.lock:
            event.clear()
            yield
    finally:
        event.clear()
