"""Observations that drive restarts: probe results and memory samples, counted per replica.

A replica that fails `failure_threshold` probes in a row past its startup grace, or whose process tree
is over its memory limit for two samples, is restarted; an external component's probe results are its
health only (it is not ours to restart).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from agent.supervise import policy
from agent.supervise.lifecycle import Lifecycle
from agent.supervise.policy import Circuit
from agent.supervise.replica import Replica, ReplicaState, Runtime
from agent.supervise.rollout import RollResult

log = logging.getLogger("agent.supervisor")


class Health:
    """Records what probes and resource sampling observe of the replicas, and restarts those that fail."""

    def __init__(self, lifecycle: Lifecycle, *, restart: Callable[[str, int], Coroutine[Any, Any, RollResult]]) -> None:
        self.lifecycle = lifecycle
        self.restart = restart  # (component, replica index): the supervisor's restart for a resource reason

    def report_probe(self, name: str, index: int, generation: int, ok: bool, error: str = "") -> None:
        """Record one probe result; after failure_threshold failures past the startup grace, restart."""
        rt = self.lifecycle.components[name]
        rep = rt.replicas.get(index)
        probe = rt.spec.probe
        if rep is None or probe is None or rep.generation != generation or rep.pid is None or rep.stopping:
            return
        rep.count_probe(ok, error)
        if ok:
            if rep.probe_successes >= probe.success_threshold:
                rep.probe_ok = True
                rep.probe_ever_ok = True
                if not rep.ready:
                    self.lifecycle.mark_ready(rt, rep, generation)
            return
        if rep.probe_failures < probe.failure_threshold:
            return
        rep.probe_ok = False
        in_grace = not rep.probe_ever_ok and self.lifecycle.clock() - rep.started_at < probe.startup_grace
        if not probe.restart or in_grace or self.lifecycle.shutting_down or rt.circuit is Circuit.OPEN:
            return
        log.warning("component %s replica %d failed %d probes in a row (%s); restarting",
                    name, index, rep.probe_failures, error)
        detail = f"failed {rep.probe_failures} {probe.kind} probes in a row ({error})"
        rep.probe_failures = 0
        self.lifecycle.background(self._probe_restart(rt, rep, generation, detail))

    async def _probe_restart(self, rt: Runtime, rep: Replica, generation: int, detail: str) -> None:
        async with rt.lock:
            await self.lifecycle.restart_failed(rt, rep, generation, "probe", detail)

    def report_external(self, name: str, observed: Replica, ok: bool, error: str = "") -> None:
        """Record one probe result of an external component: its health, never an action (not ours)."""
        rt = self.lifecycle.components.get(name)
        probe = rt.spec.probe if rt is not None else None
        if rt is None or probe is None or rt.observed is not observed:
            return
        observed.count_probe(ok, error)
        if ok:
            if observed.probe_successes >= probe.success_threshold:
                if observed.probe_ok is not True:
                    log.info("external component %s is up (%s probe passes)", name, probe.kind)
                observed.probe_ok = observed.probe_ever_ok = observed.ready = True
                observed.state = ReplicaState.RUNNING
                rt.ready_event.set()  # its dependents may start
            return
        if observed.probe_failures >= probe.failure_threshold:
            if observed.probe_ok is not False:
                log.warning("external component %s is down: %d %s probes failed in a row (%s)",
                            name, observed.probe_failures, probe.kind, error)
            observed.probe_ok = observed.ready = False
            rt.ready_event.clear()

    def report_memory(self, name: str, index: int, pid: int, rss: int) -> None:
        """Record one RSS sample of a replica's process tree; two over the limit in a row restart it."""
        rt = self.lifecycle.components[name]
        rep = rt.replicas.get(index)
        limit = rt.spec.limits.memory_bytes
        if rep is None or rep.pid != pid or limit is None or rep.stopping:
            return
        rep.rss_samples = [*rep.rss_samples[-3:], rss]
        if policy.over_memory_limit(rep.rss_samples, limit):
            log.warning("component %s replica %d uses %d bytes, over its limit %d for two samples; restarting",
                        name, index, rss, limit)
            rep.rss_samples = []
            detail = f"replica {index} used {rss} bytes, over its memory limit {limit}, in two samples"
            self.lifecycle.background(self._resource_restart(name, index, detail))

    async def _resource_restart(self, name: str, index: int, detail: str) -> None:
        done = await self.restart(name, index)
        if done.started:  # restarted (not held by a manual stop or an open circuit)
            self.lifecycle.notices.restarted(name, "resource", f"{detail}; started again")
