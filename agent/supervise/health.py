"""Observations that drive restarts: probe results and memory samples, counted per replica.

A replica that fails `failure_threshold` probes in a row past its startup grace, or whose process tree
is over its memory limit for two samples, is restarted, within the circuit breaker's bounds; an external
component's probe results are its health only (it is not ours to restart).
"""

from __future__ import annotations

import logging

from agent.supervise import policy
from agent.supervise.lifecycle import Lifecycle
from agent.supervise.policy import Circuit, ExitAction
from agent.supervise.replica import Replica, ReplicaState, Runtime

log = logging.getLogger("agent.supervisor")


class Health:
    """Records what probes and resource sampling observe of the replicas, and restarts those that fail."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

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
        """Record one RSS sample of a replica's process tree; two over the limit in a row restart it, or open
        its circuit when it was restarted `max_restarts` times within the window already."""
        rt = self.lifecycle.components[name]
        rep = rt.replicas.get(index)
        limit = rt.spec.limits.memory_bytes
        if rep is None or rep.pid != pid or limit is None or rep.stopping:
            return
        rep.rss_samples = [*rep.rss_samples[-3:], rss]
        if policy.over_memory_limit(rep.rss_samples, limit):
            rep.rss_samples = []
            detail = f"replica {index} used {rss} bytes, over its memory limit {limit}, in two samples"
            self.lifecycle.background(self._resource_restart(rt, rep, rep.generation, detail))

    async def _resource_restart(self, rt: Runtime, rep: Replica, generation: int, detail: str) -> None:
        # Decided and carried out under the component's lock, so no other restart slips in between: the
        # count within the window is the one the decision saw.
        lc = self.lifecycle
        async with rt.lock:
            if (rep.generation != generation or rep.pid is None or rep.stopping or rt.manual_stop
                    or rt.circuit is Circuit.OPEN or rt.retired or lc.shutting_down):
                return  # ended, stopped or restarted meanwhile; or held by a manual stop or an open circuit
            now = lc.clock()
            rt.history = policy.prune_history(rt.history, now, rt.spec.restart.window)
            decision = policy.decide_resource_restart(history=rt.history, circuit=rt.circuit, now=now,
                                                      settings=rt.spec.restart)
            opens = decision.action is ExitAction.OPEN_CIRCUIT
            log.warning("component %s %s; %s", rt.name, detail, "opening its circuit" if opens else "restarting")
            await lc.stop_replica(rt, rep)
            if opens:
                rep.state = ReplicaState.EXITED  # down, for the trial start after the cooldown
                lc.circuits.open(rt, f"{decision.reason}; {detail}")
            elif lc.respawn(rt, rep, "resource"):
                lc.notices.restarted(rt.name, "resource", f"{detail}; started again")
