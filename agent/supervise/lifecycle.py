"""The replica lifecycle engine: spawn into the replica's scope, notice exits at once, restart with
backoff and circuit breaker, reconcile replicas with the target, stop with escalation.

With agent/supervise/supervisor.py (the commands on top of it) this is the only code that starts, signals or
reaps component processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from agent.config.changes import launch_key
from agent.config.component import Component, substitute
from agent.config.models import Config
from agent.supervise import launch, policy
from agent.supervise.circuit import CircuitBreaker
from agent.supervise.containment import Containment, Scope, TrackingContainment
from agent.supervise.guardian import Guardian
from agent.supervise.handover import restore_runtime, runtime_record
from agent.supervise.logs import LogFiles
from agent.supervise.policy import Circuit, ExitAction
from agent.supervise.process import ExitStatus, Reaper, signal_group
from agent.supervise.replica import (
    CommandError,
    Replica,
    ReplicaState,
    Runtime,
    external_refusal,
    replica_log_path,
)
from agent.supervise.stall import StallWatch
from agent.supervise.state import StateStore
from agent.supervise.stopping import stop_process

log = logging.getLogger("agent.supervisor")

DURABLE_WAIT_SECONDS = 2.0  # how long an action that stops processes waits for its state to be on disk

class Lifecycle:
    """Spawns, reaps, restarts with backoff and reconciles the replicas of one agent's components.

    The engine under `Supervisor`, which adds the commands and the observations that drive it.
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
        self.config = config
        self.reaper = reaper
        self.guardian = guardian
        self.containment = containment or TrackingContainment(lambda: set(reaper.running()))
        self.stalls = StallWatch(clock)
        self.circuits = CircuitBreaker(spawn=self._spawn, new_replica=self._new_replica, reconcile=self._reconcile,
                                       persist=self.persist, closing=lambda: self.shutting_down)
        self.store = store
        self.clock = clock
        self.rand = rand
        self.log_dir = config.agent.log_dir
        self.log_files = LogFiles.of(config.agent.log_group)
        self.order = config.start_order()
        self.shutting_down = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Called with (runtime, replica) after every successful spawn (the probe runner listens).
        self.spawn_listeners: list[Callable[[Runtime, Replica], None]] = []
        # Called with (runtime, previous spec) after a reload gave a component a new spec.
        self.spec_listeners: list[Callable[[Runtime, Component], None]] = []
        # Called with (component, why) when a rolling restart halts (the app records it in the history
        # and counts orchestrator_rollout_halted_total).
        self.roll_listeners: list[Callable[[str, str], None]] = []
        # Called with the runtime of an external component whose watch (re)starts: added by a reload or
        # given a new spec (the probe runner listens; at start it watches every external itself).
        self.watch_listeners: list[Callable[[Runtime], None]] = []
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

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_task_failure)

    def _scope(self, rt: Runtime, rep: Replica) -> Scope:
        if rep.scope is None:
            rep.scope = self.containment.scope(rt.name, rep.index)
        return rep.scope

    # --- spawning and exits -------------------------------------------------------------------

    def _spawn(self, rt: Runtime, rep: Replica) -> bool:
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
            pid = self._start_process(rt, rep, generation)
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
            asyncio.get_running_loop().call_soon(self._spawn_failed, rt, rep, generation)
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
                    rt.spec.ready_after, self._mark_ready, rt, rep, generation)
            else:
                self._mark_ready(rt, rep, generation)
        return True

    def _start_process(self, rt: Runtime, rep: Replica, generation: int) -> int:
        """Open the replica's log (and stderr file) and fork it into its scope; raises whatever stops that."""
        spec = rt.spec
        who = launch.identity(spec)  # before anything is opened: an unknown user fails here
        env = launch.environment(spec, rep.index, who)
        env["AGENT_COMPONENT"] = rt.name
        env["AGENT_REPLICA"] = str(rep.index)
        path = replica_log_path(self.log_dir, rt.name, rep.index)
        try:
            self.log_files.make_dir(self.log_dir)
            fd = self.log_files.open(path)
        except OSError as exc:
            log.error("component %s: cannot open log %s (%s); output goes to /dev/null", rt.name, path, exc)
            fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        err_fd = None
        try:
            err_fd = launch.open_stderr(self.log_dir, rt.name, spec, rep.index, self.log_files)
            scope = self._scope(rt, rep)
            with scope.spawning() as extra:
                pid = self.reaper.spawn(
                    [substitute(arg, rep.index) for arg in spec.argv],
                    lambda status: self._on_exit(rt, rep, generation, status),
                    env={**env, **extra},
                    cwd=spec.cwd,
                    stdout=fd,
                    stderr=err_fd,
                    identity=who,
                    umask=spec.umask_bits,
                )
        finally:
            os.close(fd)
            if err_fd is not None:
                os.close(err_fd)
        scope.adopt(pid)
        return pid

    def _respawn(self, rt: Runtime, rep: Replica, reason: str) -> bool:
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
        self._spawn(rt, rep)
        return True

    def _spawn_failed(self, rt: Runtime, rep: Replica, generation: int) -> None:
        """No process was created: count it under its own reason and retry through backoff."""
        if rep.generation != generation or rep.pid is not None:
            return
        rep.exited.set()
        self._check_ready(rt)
        if rep.stopping or self.shutting_down or rt.manual_stop or rep.index >= rt.desired:
            rep.state = ReplicaState.STOPPED
            rep.stopping = False
            return
        self._after_failure(rt, rep, None, 0.0, "spawn")

    def _mark_ready(self, rt: Runtime, rep: Replica, generation: int) -> None:
        if rep.generation != generation or rep.pid is None or rep.stopping:
            return
        rep.timer = None
        rep.ready = True
        rep.became_ready.set()
        rep.state = ReplicaState.RUNNING
        self._check_ready(rt)

    def _check_ready(self, rt: Runtime) -> None:
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
        self._check_ready(rt)
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
        self._after_failure(rt, rep, status.code, ran_for, "exit")

    def _after_failure(self, rt: Runtime, rep: Replica, exit_code: int | None, ran_for: float, reason: str) -> None:
        """Apply restart policy, backoff and circuit breaker after an unplanned end of a replica."""
        now = self.clock()
        rt.history = policy.prune_history(rt.history, now, rt.spec.restart.window)
        decision = policy.decide_exit(
            exit_code=exit_code,
            ran_for=ran_for,
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
            self._spawn(rt, rep)
            return
        rep.state = ReplicaState.BACKOFF
        log.info("component %s replica %d restarts in %.3fs (failure %d in a row)",
                 rt.name, rep.index, decision.delay, decision.failures)
        generation = rep.generation
        rep.timer = asyncio.get_running_loop().call_later(
            decision.delay, self._backoff_done, rt, rep, generation
        )

    def _backoff_done(self, rt: Runtime, rep: Replica, generation: int) -> None:
        rep.timer = None
        if rep.generation != generation or rep.state is not ReplicaState.BACKOFF:
            return
        if rt.manual_stop or self.shutting_down or rep.index >= rt.desired or rt.circuit is Circuit.OPEN:
            rep.state = ReplicaState.STOPPED
            return
        self._spawn(rt, rep)

    # --- reconciling replicas -----------------------------------------------------------------

    def _new_replica(self, rt: Runtime, index: int) -> Replica:
        rep = Replica(index=index)
        rep.exited.set()
        rt.replicas[index] = rep
        self._layout_changed()
        return rep

    def _layout_changed(self) -> None:
        for listener in self.layout_listeners:
            listener()

    def _reconcile(self, rt: Runtime, revive_exited: bool = False) -> list[Replica]:
        """Start missing replicas below the target; return those above it (for the caller to stop)."""
        if rt.external:  # never spawned
            return []
        if not self.shutting_down and rt.circuit is Circuit.CLOSED:
            for index in range(rt.target):
                rep = rt.replicas.get(index) or self._new_replica(rt, index)
                revive = revive_exited and rep.state is ReplicaState.EXITED
                if rep.state is ReplicaState.STOPPED or revive:
                    self._spawn(rt, rep)
        self._check_ready(rt)
        return [r for i, r in sorted(rt.replicas.items()) if i >= rt.target and r.state is not ReplicaState.STOPPED]

    async def _stop_replica(self, rt: Runtime, rep: Replica) -> None:
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

    async def _stop_replicas(self, rt: Runtime, replicas: list[Replica]) -> None:
        await asyncio.gather(*(self._stop_replica(rt, r) for r in replicas))
        for rep in replicas:
            if rep.index >= rt.desired and rep.state is ReplicaState.STOPPED:
                rt.replicas.pop(rep.index, None)
                self._layout_changed()
                if rep.scope is not None:
                    rep.scope.release()

    # --- agent reexec: handing the running replicas to a new image of this process -------------

    def hand_over(self) -> dict[str, Any]:
        """Every component's run-time state and live replicas, as JSON, for `agent reexec`.

        Monotonic times are per boot, so they mean the same to the new image (same process, same boot).
        """
        return {rt.name: runtime_record(rt) for rt in self.components.values()}

    def adopt(self, components: dict[str, Any]) -> list[tuple[str, int, int]]:
        """Take over the replicas the previous image ran (`hand_over()`): same pids, nothing restarted.

        Call before the loop runs anything else: a replica that died during the exec is a zombie that
        the reaper collects next, and it is then restarted like any exit. Returns (component, index,
        pid) of live replicas whose component is no longer configured, for the caller to stop.
        """
        leftovers: list[tuple[str, int, int]] = []
        for name, entry in components.items():
            rt = self.components.get(name)
            if rt is None or rt.external:  # gone, or external now: its old processes are not ours to keep
                leftovers += [(name, r["index"], r["pid"]) for r in entry["replicas"] if r["pid"]]
                continue
            restore_runtime(rt, entry)
            for record in entry["replicas"]:
                rep = rt.replicas.get(record["index"]) or self._new_replica(rt, record["index"])
                rep.failures = record["failures"]
                if record["pid"]:
                    self._adopt_replica(rt, rep, record)
            self._check_ready(rt)
        self.persist()  # into this image's state dir, which may be a new one
        return leftovers

    def _adopt_replica(self, rt: Runtime, rep: Replica, record: dict[str, Any]) -> None:
        rep.pid = pid = record["pid"]
        rep.generation = generation = record["generation"]
        rep.started_at, rep.started_wall = record["started_at"], record["started_wall"]
        # What it was launched with: when the file changed that since, the next reload replaces it.
        rep.launch = record.get("launch", rt.launch)
        rep.ready = rep.probe_ever_ok = record["ready"]
        rep.state = ReplicaState.RUNNING if rep.ready else ReplicaState.STARTING
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
            rep.timer = asyncio.get_running_loop().call_later(remaining, self._mark_ready, rt, rep, generation)


def new_runtime(name: str, spec: Component) -> Runtime:
    """A component's runtime before anything ran: its start count, no restart counted (a Counter reads
    0 for a reason never counted; none is stored until counted: 0.2 KB a component)."""
    rt = Runtime(name=name, spec=spec, desired=spec.replicas.start_count, launch=launch_key(spec))
    if spec.external:
        watch_external(rt)
    return rt


def watch_external(rt: Runtime) -> None:
    """An external component is desired once while it has a probe and `replicas` allows one (the seed's
    `enabled: false` gives 0): then `observed` holds its probe state, fresh, until the first result."""
    spec = rt.spec
    rt.desired = 1 if spec.probe is not None and spec.replicas.start_count > 0 else 0
    rt.observed = Replica(0, state=ReplicaState.STARTING) if rt.desired else None
    rt.ready_event.clear()


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
