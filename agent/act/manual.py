"""Commands given by hand (the control API's verbs, the autonomy mode, the emergency stop): the rules
around each supervisor command, and one audit entry for each, with source "cli".

The answers are plain values; agent/http/control.py turns them into JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.act.plan import Plan, Result

if TYPE_CHECKING:  # types only: none of them imports this module
    from agent.act.modes import Modes
    from agent.act.remediation import Remediator
    from agent.config.settings import Autonomy
    from agent.supervise.rollout import RollResult
    from agent.supervise.supervisor import Supervisor

REEXEC_SETTLE = 35.0  # an emergency stop waits this long for a pending re-exec to go ahead or be refused


@dataclass(frozen=True)
class Restarted:
    """What a restart by hand did (`roll`), or why it restarted nothing (`held`, "" when it acted)."""

    held: str = ""
    roll: RollResult | None = None


@dataclass(frozen=True)
class Started:
    """A start by hand: the component's desired replicas now, and the dependencies started first."""

    desired: int
    dependencies: list[str]


@dataclass(frozen=True)
class EmergencyStopped:
    """An emergency stop: `deferred` names the pending re-exec whose new image stops every component as it
    starts ("" when every component was stopped here), `seconds` how long it took."""

    deferred: str
    seconds: float


class Manual:
    """The commands an operator gives by hand, each audited: restart, scale, start, stop, the autonomy
    mode and the emergency stop."""

    def __init__(self, sup: Supervisor, remediator: Remediator, modes: Modes) -> None:
        self.sup = sup
        self.remediator = remediator
        self.modes = modes

    def held_reason(self, name: str) -> str:
        """Why a restart by hand of `name` would restart nothing, and what lifts it; "" when it would act."""
        if self.modes.emergency:
            return "emergency stop in force; `agent autonomy on` lifts it"
        if self.sup.components[name].manual_stop:
            return f"component {name!r} is stopped by hand; `agent start {name}` starts it"
        return ""

    async def restart(self, name: str, replica: int | None, all_at_once: bool) -> Restarted:
        """Restart one replica, all at once, or rolling; refused (audited, `held`) when it would restart nothing."""
        held = self.held_reason(name)
        if held:  # restarting nothing and answering success would tell a script it was done
            self._audit(name, "restart", Result.REJECTED, held)
            return Restarted(held=held)
        done = await self.sup.restart(name, "manual", replica=replica, all_at_once=all_at_once)
        self._audit(name, "restart", Result.FAILED if done.halted else Result.EXECUTED, done.describe())
        return Restarted(roll=done)

    async def scale(self, name: str, replicas: int) -> int:
        """Set the desired replicas; returns those desired before."""
        before = await self.sup.scale(name, replicas, "manual")
        self._audit(name, "scale_to", Result.EXECUTED, f"replicas {before} -> {replicas}", replicas)
        return before

    async def start(self, name: str) -> Started:
        """Start a component, and first the dependencies that are not running (each audited)."""
        started = await self.sup.start(name, "manual", with_dependencies=True)
        for dep in started:
            self._audit(dep, "start", Result.EXECUTED, f"started by hand: a dependency of {name}")
        self._audit(name, "start", Result.EXECUTED, "started by hand")
        return Started(self.sup.components[name].desired, started)

    async def stop(self, name: str, with_dependents: bool) -> list[str]:
        """Stop a component (held until a start by hand); returns its running dependents: stopped first
        with `with_dependents`, else left running on it."""
        dependents = await self.sup.stop(name, "manual", with_dependents=with_dependents)
        for dep in dependents if with_dependents else ():
            self._audit(dep, "stop", Result.EXECUTED, f"stopped by hand: depends on {name}")
        said = "stopped by hand"
        if dependents and not with_dependents:
            said += f"; still running on it: {', '.join(dependents)}"
        self._audit(name, "stop", Result.EXECUTED, said)
        return dependents

    def set_autonomy(self, mode: Autonomy) -> None:
        """Change the autonomy mode (`on` also lifts an emergency stop)."""
        self.modes.set_autonomy(mode)
        self._audit("", "autonomy", Result.EXECUTED, f"autonomy {mode.value}")

    async def emergency_stop(self) -> EmergencyStopped:
        """Autonomy off, held on disk first, then every component stopped; while a re-exec is pending
        and does not settle, its new image stops them as it starts."""
        started = time.perf_counter()
        modes = self.modes
        await modes.hold_emergency()  # durable first: a new image (after a re-exec) starts stopped
        if modes.paused and not await modes.settled(REEXEC_SETTLE):
            # A re-exec holds every component's lock: its new image stops every component at start.
            self._audit("", "emergency_stop", Result.EXECUTED, "autonomy off; every component is stopped by "
                        "the re-executed agent as it starts")
            return EmergencyStopped(modes.paused, round(time.perf_counter() - started, 3))
        await self.sup.emergency_stop()
        self._audit("", "emergency_stop", Result.EXECUTED, "every component stopped; autonomy off")
        return EmergencyStopped("", round(time.perf_counter() - started, 3))

    def _audit(self, component: str, action: str, result: Result, reason: str, target: int | None = None) -> None:
        plan = Plan("manual", component, action, "", result, reason, target)
        self.remediator.record(None, plan, result, reason, "", source="cli")
