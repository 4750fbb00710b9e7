"""The replica lifecycle engine: spawn into the replica's scope, notice exits at once, restart with
backoff and circuit breaker, reconcile replicas with the target, stop with escalation, watch the
replicas a previous image handed over.

The supervisor (agent/supervise/supervisor.py) drives it through its public methods; with
agent/supervise/stopping.py it is the only code that starts, signals or reaps component processes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from agent.config.models import Config
from agent.config.settings import AgentSettings
from agent.supervise import launch, policy
from agent.supervise.circuit import CircuitBreaker
from agent.supervise.containment import Containment, Scope
from agent.supervise.guardian import Guardian
from agent.supervise.logs import LogFiles
from agent.supervise.notices import Notices
from agent.supervise.policy import Circuit, ExitAction
from agent.supervise.process import ExitStatus, Reaper, signal_group
from agent.supervise.replica import (
    CommandError,
    Replica,
    ReplicaState,
    Runtime,
    external_refusal,
    new_runtime,
)
from agent.supervise.stall import StallWatch
from agent.supervise.state import StateStore
from agent.supervise.stopping import stop_process
from agent.supervise.tracking import TrackingContainment

log = logging.getLogger("agent.supervisor")

DURABLE_WAIT_SECONDS = 2.0  # how long an action that stops processes waits for its state to be on disk


class Lifecycle:
    """Spawns, reaps, restarts with backoff and reconciles the replicas of one agent's components.

    Owns the runtimes (`components`), the circuit breaker and the state dir record. The `Supervisor`
    holds one and turns commands and observations into calls to its public methods.
    """

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
        self.reaper = reaper
        self.guardian = guardian
        self.containment = containment or TrackingContainment(lambda: set(reaper.running()))
        self.stalls = StallWatch(clock)
        self.notices = Notices()  # the restarts and circuit changes it decides by itself, for the history
        self.circuits = CircuitBreaker(spawn=self.spawn, new_replica=self.new_replica, reconcile=self.reconcile,
                                       persist=self.persist, closing=lambda: self.shutting_down,
                                       changed=self.notices.circuit_changed)
        self.store = store
        self.clock = clock
        self.rand = rand
        self.log_dir = config.agent.log_dir
        self.log_files = LogFiles.of(config.agent.log_group)
        self.shutting_down = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Called with (runtime, replica) after every successful spawn (the probe runner listens).
        self.spawn_listeners: list[Callable[[Runtime, Replica], None]] = []
        # Called when a replica or a component is added or removed (the log rotator rebuilds its list
        # of logs then, instead of every round).
        self.layout_listeners: list[Callable[[], None]] = []
        self.components: dict[str, Runtime] = {
            name: new_runtime(name, spec) for name, spec in config.components.items()
        }
        self._restore()

    # --- state dir ---------------------------------------------------------------------------

    def _restore(self) -> None:
        # The store checked the file against its schema (a bad one was set aside): entries are typed.
        for name, entry in self.store.loaded.components.items():
            rt = self.components.get(name)
            if rt is None or rt.external:  # an external one has no saved state that applies
                continue
            rt.manual_stop = entry.manual_stop
            rt.circuit = entry.circuit
            rt.circuit_opened_wall = entry.circuit_opened_at
            if entry.desired is None:
                continue
            bounds = rt.spec.replicas
            rt.desired = policy.clamp_replicas(entry.desired, bounds.min, bounds.max)
            if rt.desired != entry.desired:
                log.warning("component %s: saved replicas %d outside [%d, %d]; using %d",
                            name, entry.desired, bounds.min, bounds.max, rt.desired)

    def persist(self) -> None:
        """Save desired replicas, manual stops and circuits (the store's writer thread does the fsync)."""
        self.store.data["components"] = {
            rt.name: {
                "desired": rt.desired,
                "manual_stop": rt.manual_stop,
                "circuit": rt.circuit.value,
                "circuit_opened_at": rt.circuit_opened_wall,
            }
            for rt in self.components.values()
        }
        self.store.save()

    async def persist_durably(self) -> None:
        """Save, and wait (bounded) until it is on disk: write-ahead for an action that stops
        processes, so an agent killed in the middle of it restores the new state, not the old one."""
        self.persist()
        await asyncio.to_thread(self.store.flush, DURABLE_WAIT_SECONDS)

    def use_logs(self, settings: AgentSettings) -> None:
        """Where and how replicas started from now on write their logs (a reload's `log_dir`, `log_group`)."""
        self.log_dir = settings.log_dir
        self.log_files = LogFiles.of(settings.log_group)

    # --- helpers ---------------------------------------------------------------------------

    def get(self, name: str) -> Runtime:
        """The runtime of a configured component, or CommandError."""
        rt = self.components.get(name)
        if rt is None:
            raise CommandError(f"unknown component {name!r}")
        return rt

    def get_run(self, name: str) -> Runtime:
        """The runtime of a component the agent runs (CommandError for an unknown or external one)."""
        rt = self.get(name)
        if rt.external:
            raise CommandError(external_refusal(name))
        return rt

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` as a task of this lifecycle (logged if it fails, cancelled by `cancel_background`)."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_task_failure)

    def begin_shutdown(self) -> None:
        """Nothing restarts or spawns from here on; the stall watch stops."""
        self.shutting_down = True
        self.stalls.stop()

    def cancel_background(self) -> None:
        """Cancel the tasks `background` started (the agent is stopping)."""
        for task in list(self._tasks):
            task.cancel()

    def _scope(self, rt: Runtime, rep: Replica) -> Scope:
        if rep.scope is None:
            rep.scope = self.containment.scope(rt.name, rep.index)
        return rep.scope

    # --- spawning and exits -------------------------------------------------------------------

    def spawn(self, rt: Runtime, rep: Replica) -> bool:
        """Start one replica; a spawn that fails for any reason goes down the backoff path."""
        if rt.retired or rt.external:  # removed by a reload while this waited; or not ours to run
            rep.state = ReplicaState.STOPPED
            return False
        rep.generation += 1
        rep.launch = rt.launch
        rep.stopping = False
        rep.ready = False
        rep.became_ready.clear()
        rep.probe_ok = None
        rep.probe_failures = rep.probe_successes = 0
        rep.probe_ever_ok = False
        rep.rss_samples = []
        rep.exited.clear()
        generation = rep.generation
        try:
            pid = launch.start(self.reaper, rt.name, rt.spec, rep.index, log_dir=self.log_dir,
                               files=self.log_files, scope=lambda: self._scope(rt, rep),
                               on_exit=lambda status: self._on_exit(rt, rep, generation, status))
        except Exception as exc:
            if isinstance(exc, OSError):
                why = exc.strerror or str(exc)
                if exc.filename:
                    why = f"{why}: {exc.filename}"
            else:
                log.exception("component %s replica %d: unexpected error while starting", rt.name, rep.index)
                why = repr(exc)
            log.error("component %s replica %d: cannot start %s: %s",
                      rt.name, rep.index, rt.spec.argv[0], why)
            rep.started_at = self.clock()
            rep.pid = None
            asyncio.get_running_loop().call_soon(self._spawn_failed, rt, rep, generation, why)
            return False
        rep.pid = pid
        rep.started_at = self.clock()
        rep.started_wall = time.time()
        rep.state = ReplicaState.STARTING
        if self.guardian is not None:
            self.guardian.add(pid)
        log.info("component %s replica %d started (pid %d)", rt.name, rep.index, pid)
        for listener in self.spawn_listeners:
            listener(rt, rep)
        if rt.spec.probe is None:
            if rt.spec.ready_after > 0:
                rep.timer = asyncio.get_running_loop().call_later(
                    rt.spec.ready_after, self.mark_ready, rt, rep, generation)
            else:
                self.mark_ready(rt, rep, generation)
        return True

    def respawn(self, rt: Runtime, rep: Replica, reason: str) -> bool:
        """Count a commanded restart of a stopped replica and start it again (not while shutting down);
        True when a successor was started.

        Restarts ordered by alerts count toward `max_restarts` like exits do: a component that alerts keep
        restarting opens its circuit, so a human looks (docs/remediation.md). Manual and reload ones do not.
        """
        rt.restarts[reason] += 1
        if reason not in ("manual", "reload"):  # commanded by a person: not a failure for the circuit breaker
            rt.history.append(self.clock())
        rt.last_reason = reason
        rt.last_restart_wall = time.time()
        if self.shutting_down:
            return False
        self.spawn(rt, rep)
        return True

    def _spawn_failed(self, rt: Runtime, rep: Replica, generation: int, why: str = "") -> None:
        """No process was created: count it under its own reason and retry through backoff."""
        if rep.generation != generation or rep.pid is not None:
            return
        rep.exited.set()
        self.check_ready(rt)
        if rep.stopping or self.shutting_down or rt.manual_stop or rep.index >= rt.desired:
            rep.state = ReplicaState.STOPPED
            rep.stopping = False
            return
        self._after_failure(rt, rep, None, 0.0, "spawn", f"cannot start {rt.spec.argv[0]}: {why}")

    def mark_ready(self, rt: Runtime, rep: Replica, generation: int) -> None:
        """The replica's run `generation` is ready (unless it has ended or is stopping since)."""
        if rep.generation != generation or rep.pid is None or rep.stopping:
            return
        rep.timer = None
        rep.ready = True
        rep.became_ready.set()
        rep.state = ReplicaState.RUNNING
        self.check_ready(rt)

    def check_ready(self, rt: Runtime) -> None:
        """Set or clear the component's readiness: every active replica up to the target is ready."""
        active = rt.active()
        if rt.target > 0 and len(active) >= rt.target and all(r.ready for r in active):
            rt.ready_event.set()
        else:
            rt.ready_event.clear()

    def _on_exit(self, rt: Runtime, rep: Replica, generation: int, status: ExitStatus) -> None:
        if rep.generation != generation:
            return
        pid = rep.pid
        if pid is not None:
            # Whatever the leader left behind goes with it: its group, and anything that left the
            # group (setsid, double fork) but not the replica's cgroup or environment marker.
            signal_group(pid, signal.SIGKILL)
            try:
                self._scope(rt, rep).kill(None)
            except OSError as exc:  # out of descriptors, say: restart anyway, the next exit tries again
                log.error("component %s replica %d: cannot end what it left behind: %s",
                          rt.name, rep.index, exc.strerror or exc)
            if self.guardian is not None:
                self.guardian.remove(pid)
        now = self.clock()
        ran_for = self.stalls.ran_for(rep.started_at, now)
        rep.pid = None
        rep.ready = False
        rep.became_ready.clear()
        if rep.timer is not None:
            rep.timer.cancel()
            rep.timer = None
        rt.last_exit = status
        self.check_ready(rt)
        if rep.stopping or self.shutting_down:
            rep.state = ReplicaState.STOPPED
            rep.stopping = False
            rep.exited.set()
            return
        rep.exited.set()
        log.warning("component %s replica %d (pid %s) %s after %.3fs",
                    rt.name, rep.index, pid, status.describe, ran_for)
        if rt.manual_stop or rep.index >= rt.desired:
            rep.state = ReplicaState.STOPPED
            return
        self._after_failure(rt, rep, status.code, ran_for, "exit", f"ended ({status.describe}) after {ran_for:.1f}s")

    def _after_failure(self, rt: Runtime, rep: Replica, code: int | None, ran: float, reason: str, detail: str) -> None:
        """Apply restart policy, backoff and circuit breaker after an unplanned end of a replica (`detail`)."""
        now = self.clock()
        rt.history = policy.prune_history(rt.history, now, rt.spec.restart.window)
        decision = policy.decide_exit(
            exit_code=code,
            ran_for=ran,
            previous_failures=rep.failures,
            history=rt.history,
            circuit=rt.circuit,
            now=now,
            settings=rt.spec.restart,
            rand=self.rand(),
        )
        rep.failures = decision.failures
        if decision.action is ExitAction.STAY_DOWN:
            rep.state = ReplicaState.EXITED
            log.info("component %s replica %d stays down (%s)", rt.name, rep.index, decision.reason)
            return
        if decision.action is ExitAction.OPEN_CIRCUIT:
            rep.state = ReplicaState.EXITED
            self.circuits.open(rt, decision.reason)
            return
        rt.history.append(now)
        rt.restarts[reason] += 1
        rt.last_reason = reason
        rt.last_restart_wall = time.time()
        if decision.delay <= 0:
            self.spawn(rt, rep)
        else:
            rep.state = ReplicaState.BACKOFF
            log.info("component %s replica %d restarts in %.3fs (failure %d in a row)",
                     rt.name, rep.index, decision.delay, decision.failures)
            generation = rep.generation
            rep.timer = asyncio.get_running_loop().call_later(
                decision.delay, self._backoff_done, rt, rep, generation
            )
        self.notices.after_failure(rt, rep, reason, detail, decision)  # told once the restart is under way

    def _backoff_done(self, rt: Runtime, rep: Replica, generation: int) -> None:
        rep.timer = None
        if rep.generation != generation or rep.state is not ReplicaState.BACKOFF:
            return
        if rt.manual_stop or self.shutting_down or rep.index >= rt.desired or rt.circuit is Circuit.OPEN:
            rep.state = ReplicaState.STOPPED
            return
        self.spawn(rt, rep)

    # --- reconciling replicas -----------------------------------------------------------------

    def new_replica(self, rt: Runtime, index: int) -> Replica:
        """A stopped replica in slot `index` of the component."""
        rep = Replica(index=index)
        rep.exited.set()
        rt.replicas[index] = rep
        self.layout_changed()
        return rep

    def layout_changed(self) -> None:
        """Tell the layout listeners that a replica or a component came or went."""
        for listener in self.layout_listeners:
            listener()

    def reconcile(self, rt: Runtime, revive_exited: bool = False) -> list[Replica]:
        """Start missing replicas below the target; return those above it (for the caller to stop)."""
        if rt.external:  # never spawned
            return []
        if not self.shutting_down and rt.circuit is Circuit.CLOSED:
            for index in range(rt.target):
                rep = rt.replicas.get(index) or self.new_replica(rt, index)
                revive = revive_exited and rep.state is ReplicaState.EXITED
                if rep.state is ReplicaState.STOPPED or revive:
                    self.spawn(rt, rep)
        self.check_ready(rt)
        return [r for i, r in sorted(rt.replicas.items()) if i >= rt.target and r.state is not ReplicaState.STOPPED]

    async def stop_replica(self, rt: Runtime, rep: Replica) -> None:
        """Stop one replica with its component's stop settings; it stays stopped (no restart)."""
        if rep.timer is not None:
            rep.timer.cancel()
            rep.timer = None
        if rep.pid is None:
            rep.state = ReplicaState.STOPPED
            return
        pid = rep.pid
        rep.stopping = True
        rep.state = ReplicaState.STOPPING
        who = f"component {rt.name} replica {rep.index}"
        await stop_process(pid, rt.spec.stop, rep.exited, self._scope(rt, rep), who)
        if not rep.exited.is_set():  # beyond SIGKILL for now (uninterruptible sleep): the slot waits for its exit
            await rep.exited.wait()
            log.info("%s (pid %d) stopped", who, pid)

    async def stop_replicas(self, rt: Runtime, replicas: list[Replica]) -> None:
        """Stop these replicas at once; those above the desired count are dropped with their scope."""
        await asyncio.gather(*(self.stop_replica(rt, r) for r in replicas))
        for rep in replicas:
            if rep.index >= rt.desired and rep.state is ReplicaState.STOPPED:
                rt.replicas.pop(rep.index, None)
                self.layout_changed()
                if rep.scope is not None:
                    rep.scope.release()

    async def stop_every(self, rt: Runtime) -> None:
        """Stop every replica of the component at once (their slots are kept)."""
        await asyncio.gather(*(self.stop_replica(rt, r) for r in rt.replicas.values()))

    async def restart_failed(self, rt: Runtime, rep: Replica, generation: int, reason: str, detail: str = "") -> None:
        """Stop a replica found failing (its run `generation`, for `detail`) and restart it as its restart
        policy says, as if it had exited; the caller holds the component's lock."""
        if rep.generation != generation or rep.pid is None:
            return
        ran_for = self.stalls.ran_for(rep.started_at, self.clock())
        await self.stop_replica(rt, rep)
        if not self.shutting_down and not rt.manual_stop:
            self._after_failure(rt, rep, None, ran_for, reason, detail)

    # --- agent reexec: replicas a previous image of this process started ------------------------

    def watch_adopted(self, rt: Runtime, rep: Replica) -> None:
        """Take over a live replica the previous image ran (its pid, generation and times are restored):
        its exit is noticed and handled like any other, its readiness timer runs on."""
        pid, generation = rep.pid, rep.generation
        assert pid is not None
        rep.exited.clear()
        self._scope(rt, rep)
        self.reaper.adopt(pid, lambda status: self._on_exit(rt, rep, generation, status))
        if self.guardian is not None:
            self.guardian.add(pid)
        log.info("component %s replica %d adopted (pid %d)", rt.name, rep.index, pid)
        for listener in self.spawn_listeners:
            listener(rt, rep)
        if not rep.ready and rt.spec.probe is None:
            remaining = max(0.0, rt.spec.ready_after - (self.clock() - rep.started_at))
            rep.timer = asyncio.get_running_loop().call_later(remaining, self.mark_ready, rt, rep, generation)


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
