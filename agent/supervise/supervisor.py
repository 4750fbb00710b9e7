"""The supervisor: the commands everything else uses (`restart`, `scale`, `start`, `stop`,
`emergency_stop`, `shutdown`, `reconfigure`), each with a reason, and the observations that drive
restarts (probe results, memory samples). It holds the lifecycle engine (agent/supervise/lifecycle.py)
and calls it through its public methods; rolling restarts are in agent/supervise/rollout.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config.changes import ReloadPlan, launch_key
from agent.config.component import Component
from agent.config.models import Config
from agent.supervise import adoption, policy, rollout
from agent.supervise.containment import Containment
from agent.supervise.guardian import Guardian
from agent.supervise.health import Health
from agent.supervise.lifecycle import Lifecycle
from agent.supervise.policy import Circuit
from agent.supervise.process import Reaper
from agent.supervise.replica import CommandError, Replica, ReplicaState, Runtime, new_runtime, watch_external
from agent.supervise.rollout import RollResult
from agent.supervise.state import StateStore

log = logging.getLogger("agent.supervisor")


class Supervisor:
    """Owns the component processes of one agent: the commands on them, carried out by its lifecycle."""

    def __init__(
        self,
        config: Config,
        reaper: Reaper,
        store: StateStore,
        *,
        guardian: Guardian | None = None,
        containment: Containment | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.order = config.start_order()
        self.lifecycle = lc = Lifecycle(config, reaper, store, guardian=guardian, containment=containment,
                                        clock=clock, rand=rand)
        self.reaper = reaper
        self.store = store
        self.components = lc.components  # the lifecycle's runtimes, in start order
        # Called with (runtime, replica) after every successful spawn (the probe runner listens).
        self.spawn_listeners = lc.spawn_listeners
        # Called when a replica or a component is added or removed (the log rotator rebuilds its list
        # of logs then, instead of every round).
        self.layout_listeners = lc.layout_listeners
        # Called with (runtime, previous spec) after a reload gave a component a new spec.
        self.spec_listeners: list[Callable[[Runtime, Component], None]] = []
        # Called with (component, why) when a rolling restart halts (the app records it in the history
        # and counts orchestrator_rollout_halted_total).
        self.roll_listeners: list[Callable[[str, str], None]] = []
        # Called with (component, reason, detail) for each restart the agent decides by itself (exit, probe,
        # resource, spawn), and with (component, opened, why) when a circuit opens or closes (the app records
        # them in the history beside the alert actions).
        self.restart_listeners = lc.notices.restart_listeners
        self.circuit_listeners = lc.notices.circuit_listeners
        # Called with the runtime of an external component whose watch (re)starts: added by a reload or
        # given a new spec (the probe runner listens; at start it watches every external itself).
        self.watch_listeners: list[Callable[[Runtime], None]] = []
        self.health = Health(lc)

    @property
    def shutting_down(self) -> bool:
        """True from `begin_shutdown` on: nothing restarts any more."""
        return self.lifecycle.shutting_down

    @property
    def log_dir(self) -> Path:
        """Where replicas started from now on write their logs."""
        return self.lifecycle.log_dir

    def persist(self) -> None:
        """Save desired replicas, manual stops and circuits to the state dir."""
        self.lifecycle.persist()

    def hand_over(self) -> dict[str, Any]:
        """Every component's run-time state and live replicas, as JSON, for `agent reexec`."""
        return adoption.hand_over(self.components)

    def adopt(self, components: dict[str, Any]) -> list[tuple[str, int, int]]:
        """Take over the replicas the previous image ran; returns those of components no longer run here."""
        return adoption.adopt(self.lifecycle, components)

    # --- commands ----------------------------------------------------------------------------

    async def start_all(self, ready_timeout: float | None = None) -> None:
        """Start every component in dependency order; a dependent waits until its dependencies are ready."""
        self.lifecycle.stalls.start()
        for name in self.order:
            rt = self.components.get(name)
            if rt is None or rt.retired or rt.external:  # removed by a reload meanwhile; or not ours to run
                continue
            for dep in rt.spec.depends_on:
                if dep in self.components:
                    await self._wait_ready(self.components[dep], ready_timeout)
            if rt.circuit is Circuit.OPEN:
                delay = policy.circuit_trial_due(rt.circuit_opened_wall, time.time(),
                                                 rt.spec.restart.circuit_cooldown)
                log.warning("component %s: circuit open (restored); trial in %.1fs", name, delay)
                self.lifecycle.circuits.schedule_trial(rt, delay)
                continue
            if rt.circuit is Circuit.HALF_OPEN:
                rt.circuit = Circuit.OPEN
                self.lifecycle.circuits.schedule_trial(rt, 0.0)
                continue
            if rt.manual_stop:
                log.info("component %s stays stopped (stopped by hand; `agent start %s` starts it)", name, name)
                continue
            async with rt.lock:
                # Replicas above the target exist only when adopted after `agent reexec` (bounds changed).
                await self.lifecycle.stop_replicas(rt, self.lifecycle.reconcile(rt))

    async def _wait_ready(self, rt: Runtime, timeout: float | None) -> None:
        if rt.target == 0 or rt.circuit is not Circuit.CLOSED:
            return
        if timeout is None:
            timeout = rt.spec.probe.startup_grace if rt.spec.probe else rt.spec.ready_after + 5.0
        try:
            await asyncio.wait_for(rt.ready_event.wait(), timeout)
        except TimeoutError:
            log.warning("component %s not ready after %.1fs; starting its dependents anyway", rt.name, timeout)

    async def restart(self, name: str, reason: str, replica: int | None = None,
                      all_at_once: bool = False) -> RollResult:
        """Restart running replicas: one (`replica`), all at once, or, with several, rolling one at a time."""
        rt = self.lifecycle.get_run(name)
        async with rt.lock:
            if replica is not None and replica not in rt.replicas:
                raise CommandError(f"component {name!r} has no replica {replica}")
            if reason == "manual" and rt.circuit is not Circuit.CLOSED:
                self.lifecycle.circuits.close(rt, "restarted by hand")
            if rt.manual_stop or rt.circuit is Circuit.OPEN:
                return RollResult(0)
            # Replicas below the desired count that have no slot yet: a circuit restored open at start,
            # or a reload that replaced the component while it was open, left none. A restart by hand that
            # closed the circuit used to start nothing then (found by the interleaving harness).
            missing = [i for i in range(rt.target) if i not in rt.replicas] if replica is None else []
            targets = [r for r in rt.active() if replica is None or r.index == replica]
            if replica is None and not all_at_once and len(targets) > 1:
                done = await self.roll(rt, targets, reason)
            else:
                await asyncio.gather(*(self.lifecycle.stop_replica(rt, r) for r in targets))
                done = RollResult(len(targets), started=sum(self.lifecycle.respawn(rt, rep, reason) for rep in targets))
            if missing and not self.shutting_down and rt.circuit is Circuit.CLOSED:
                self.lifecycle.reconcile(rt)
                revived = sum(1 for i in missing if i in rt.replicas and rt.replicas[i].pid is not None)
                done.started += revived
                done.replaced += revived
            return done

    async def roll(self, rt: Runtime, replicas: list[Replica], reason: str) -> RollResult:
        """Replace these replicas one at a time, each successor ready first (the caller holds rt.lock);
        the roll listeners hear why when it halts."""
        done = await rollout.roll(self.lifecycle, rt, replicas, reason)
        if done.halted:
            for listener in self.roll_listeners:
                listener(rt.name, done.reason)
        return done

    async def scale(self, name: str, replicas: int, reason: str) -> int:
        """Set desired replicas (within min/max); starts or stops only the difference."""
        rt = self.lifecycle.get_run(name)
        bounds = rt.spec.replicas
        if not bounds.min <= replicas <= bounds.max:
            raise CommandError(f"component {name!r}: {replicas} replicas is outside [{bounds.min}, {bounds.max}]")
        async with rt.lock:
            before = rt.desired
            rt.desired = replicas
            await self.lifecycle.persist_durably()
            if before != replicas:
                log.info("component %s scaled %d -> %d (%s)", name, before, replicas, reason)
            await self.lifecycle.stop_replicas(rt, self.lifecycle.reconcile(rt))
            return before

    async def start(self, name: str, reason: str, *, with_dependencies: bool = False,
                    ready_timeout: float | None = None) -> list[str]:
        """Start a component: clears a manual stop; a component at 0 replicas goes to max(min, 1).

        `with_dependencies` first starts, in dependency order, every dependency (direct or not) that
        is not running, each waited ready (bounded as at start-up) before the next; returns their names.
        """
        self.lifecycle.get_run(name)  # an unknown or external component is refused before anything starts
        started: list[str] = []
        if with_dependencies:
            for dep in self.dependencies(name):
                rt = self.lifecycle.get(dep)
                if not rt.external and (rt.target == 0 or rt.running_count == 0):
                    await self._start_one(dep, reason)
                    started.append(dep)
                await self._wait_ready(rt, ready_timeout)
        await self._start_one(name, reason)
        return started

    async def _start_one(self, name: str, reason: str) -> None:
        rt = self.lifecycle.get_run(name)
        async with rt.lock:
            if reason == "manual":
                rt.manual_stop = False
                self.lifecycle.circuits.close(rt, "started by hand")
            elif rt.manual_stop:
                raise CommandError(f"component {name!r} was stopped by hand; only `agent start` starts it")
            if rt.desired == 0:
                rt.desired = max(rt.spec.replicas.min, 1)
            self.persist()
            self.lifecycle.reconcile(rt, revive_exited=True)

    async def stop(self, name: str, reason: str, *, with_dependents: bool = False) -> list[str]:
        """Stop every replica; a manual stop holds until a manual start.

        With `with_dependents`, the running components that depend on it (directly or not) are stopped
        first, in reverse dependency order, the same way. Returns the running dependents: those
        stopped first, or (without the flag) those left running on a stopped dependency.
        """
        self.lifecycle.get_run(name)  # an unknown or external component is refused before anything stops
        dependents = [d for d in self.dependents(name)
                      if self.components[d].running_count and not self.components[d].external]
        if with_dependents:
            for dep in dependents:
                await self._stop_one(dep, reason)
        await self._stop_one(name, reason)
        return dependents

    async def _stop_one(self, name: str, reason: str) -> None:
        rt = self.lifecycle.get_run(name)
        async with rollout.taking_over(rt, abort=True):  # a rolling restart in progress gives way at once
            if reason == "manual":
                # Stopped by hand: no trial start later; `agent start` begins afresh.
                rt.manual_stop = True
                self.lifecycle.circuits.cancel(rt)
                rt.circuit = Circuit.CLOSED
            await self.lifecycle.persist_durably()
            await self.lifecycle.stop_every(rt)
            self.lifecycle.check_ready(rt)

    def dependencies(self, name: str) -> list[str]:
        """What `name` depends on, directly or not, in start order (dependencies first)."""
        needed: set[str] = set()
        pending = list(self.lifecycle.get(name).spec.depends_on)
        while pending:
            dep = pending.pop()
            if dep not in needed and dep in self.components:
                needed.add(dep)
                pending += self.components[dep].spec.depends_on
        return [n for n in self.order if n in needed]

    def dependents(self, name: str) -> list[str]:
        """What depends on `name`, directly or not, in stop order (reverse start order)."""
        self.lifecycle.get(name)
        found = {name}
        for other in self.order:  # start order: a dependency is met before whatever depends on it
            rt = self.components.get(other)
            if rt is not None and any(d in found for d in rt.spec.depends_on):
                found.add(other)
        return [n for n in reversed(self.order) if n in found and n != name]

    async def emergency_stop(self) -> None:
        """Stop everything at once, held as a manual stop of every component."""
        await asyncio.gather(*(self._stop_one(name, "manual") for name, rt in self.components.items()
                               if not rt.external))

    def begin_shutdown(self) -> None:
        """No restart, trial or roll goes on from here: a roll in flight returns after the replica in hand,
        saying what it started (so an action in flight finishes, and its audit tells the truth)."""
        self.lifecycle.begin_shutdown()
        for rt in self.components.values():
            self.lifecycle.circuits.cancel(rt)
            rt.roll_abort.set()  # a rolling restart stops waiting for its successor

    async def shutdown(self) -> None:
        """Stop all components in reverse dependency order (not remembered as manual stops)."""
        self.begin_shutdown()
        for name in reversed(self.order):
            rt = self.components[name]
            await self.lifecycle.stop_every(rt)
        self.lifecycle.cancel_background()

    # --- config reload ------------------------------------------------------------------------

    async def reconfigure(self, config: Config, plan: ReloadPlan, *, hold_new: bool = False) -> None:
        """Apply a validated config as `plan` says; `hold_new` keeps added components stopped (emergency stop).

        Removed components stop in reverse dependency order; every kept component gets its new spec
        (desired count clamped to the new bounds, extra replicas stopped, missing ones started); those
        whose launch settings changed are replaced one replica at a time; added ones start in
        dependency order. Each component's part runs under its lock, so it never interleaves with a
        restart, scale or webhook action on that component.
        """
        for name in plan.removed:
            await self._retire(self.components[name])
        self.config = config
        self.order = config.start_order()
        self.lifecycle.use_logs(config.agent)
        rolls = []
        for name in self.order:
            rt = self.components.get(name)
            if rt is None:
                added = new_runtime(name, config.components[name])
                added.manual_stop = hold_new
                self.components[name] = added
                self.lifecycle.layout_changed()
                continue
            if name not in plan.replaced and name not in plan.updated:
                rt.spec = config.components[name]  # an equal spec: nothing to apply, a roll goes on
                continue
            # A rolling restart in progress finishes the replica in hand, then this plan takes over.
            async with rollout.taking_over(rt):
                self._respec(rt, config.components[name])
                await self.lifecycle.stop_replicas(rt, self.lifecycle.reconcile(rt))
            if name in plan.replaced:
                rolls.append(self.replace_stale(rt))
        # Kept in start order: the status table and the metrics list components as the config does.
        ordered = {name: self.components[name] for name in self.order}
        self.components.clear()
        self.components.update(ordered)
        self.persist()
        await asyncio.gather(*rolls)
        for name in plan.added:
            rt = self.components[name]
            if rt.external:
                for listener in self.watch_listeners:
                    listener(rt)
                continue
            for dep in rt.spec.depends_on:
                await self._wait_ready(self.components[dep], None)
            async with rt.lock:
                self.lifecycle.reconcile(rt)

    def _respec(self, rt: Runtime, spec: Component) -> None:
        """Give a kept component its new spec; what the agent enforces reads the spec, so this applies it."""
        previous = rt.spec
        rt.spec = spec
        rt.launch = launch_key(spec)
        if spec.external:  # (a change between external and run by the agent is a remove + add)
            if (previous.probe, previous.replicas) != (spec.probe, spec.replicas):
                watch_external(rt)
                for watcher in self.watch_listeners:
                    watcher(rt)
            for listener in self.spec_listeners:
                listener(rt, previous)
            return
        bounds = spec.replicas
        clamped = policy.clamp_replicas(rt.desired, bounds.min, bounds.max)
        if clamped != rt.desired:
            log.info("component %s: desired replicas %d -> %d (new bounds [%d, %d])",
                     rt.name, rt.desired, clamped, bounds.min, bounds.max)
            rt.desired = clamped
        if previous.probe is not None and spec.probe is None:
            # No probe any more: a live replica is ready as a probe-less one is once started.
            for rep in rt.replicas.values():
                rep.probe_ok = None
                rep.probe_failures = rep.probe_successes = 0
                if rep.pid is not None and not rep.stopping and not rep.ready:
                    self.lifecycle.mark_ready(rt, rep, rep.generation)
        for listener in self.spec_listeners:
            listener(rt, previous)

    async def replace_stale(self, rt: Runtime) -> None:
        """Replace, one at a time, the running replicas launched with settings a reload changed."""
        async with rollout.taking_over(rt):
            stale = [r for r in rt.active() if r.pid is not None and r.launch != rt.launch]
            if stale and not rt.manual_stop:
                log.info("component %s: launch settings changed; replacing %d replica(s) one at a time",
                         rt.name, len(stale))
                await self.roll(rt, stale, "reload")

    async def _retire(self, rt: Runtime) -> None:
        """Stop a component a reload removed (its stop settings) and forget it."""
        rt.retired = True
        async with rollout.taking_over(rt, abort=True):
            self.lifecycle.circuits.cancel(rt)
            await self.lifecycle.stop_every(rt)
            for rep in rt.replicas.values():
                rep.state = ReplicaState.STOPPED
                if rep.scope is not None:
                    rep.scope.release()
        self.components.pop(rt.name, None)
        self.lifecycle.layout_changed()
        log.info("component %s removed from the config: stopped", rt.name)

    # --- observations from probes and resource sampling ---------------------------------------

    def report_probe(self, name: str, index: int, generation: int, ok: bool, error: str = "") -> None:
        """Record one probe result; after failure_threshold failures past the startup grace, restart."""
        self.health.report_probe(name, index, generation, ok, error)

    def report_external(self, name: str, observed: Replica, ok: bool, error: str = "") -> None:
        """Record one probe result of an external component: its health, never an action (not ours)."""
        self.health.report_external(name, observed, ok, error)

    def report_memory(self, name: str, index: int, pid: int, rss: int) -> None:
        """Record one RSS sample of a replica's process tree; two over the limit in a row restart it."""
        self.health.report_memory(name, index, pid, rss)
