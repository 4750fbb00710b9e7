"""The replica and component model: states, what the supervisor knows about each, where logs go.

Plain data with derived properties; only supervise/ changes it (the supervisor, its lifecycle, the
health observations in health.py and a re-exec's adoption in adoption.py), and the collectors and the
status document read it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from dataclasses import dataclass, field
from pathlib import Path

from agent.config.changes import launch_key
from agent.config.component import Component, substitute
from agent.supervise.containment import Scope
from agent.supervise.flag import Flag
from agent.supervise.policy import Circuit
from agent.supervise.process import ExitStatus

REASONS = ("exit", "probe", "alert", "manual", "resource", "spawn", "reload")


class ReplicaState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"


class ComponentState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    EXITED = "exited"
    CIRCUIT_OPEN = "circuit_open"
    HALF_OPEN = "half_open"
    EXTERNAL = "external"  # no command: watched (probed), never run by the agent; health is in `up`


class CommandError(Exception):
    """A command that cannot be carried out (unknown component, out of bounds, ...)."""


def external_refusal(name: str) -> str:
    """Why an action on an external component is refused (API 409, webhook `rejected`)."""
    return (f"component {name!r} is external: it has no command, so the agent only probes and exports it "
            "and never starts, stops, restarts or scales it")


@dataclass(eq=False)
class Replica:
    index: int
    state: ReplicaState = ReplicaState.STOPPED
    pid: int | None = None
    generation: int = 0
    started_at: float = 0.0
    started_wall: float = 0.0
    failures: int = 0
    stopping: bool = False
    timer: asyncio.TimerHandle | None = None
    exited: Flag = field(default_factory=Flag)
    ready: bool = False
    # Set when this run became ready (a rolling restart waits on it); cleared at each spawn and exit.
    became_ready: Flag = field(default_factory=Flag)
    probe_ok: bool | None = None
    probe_failures: int = 0
    probe_successes: int = 0
    probe_ever_ok: bool = False
    probe_error: str = ""
    rss_samples: list[int] = field(default_factory=list)
    scope: Scope | None = None
    launch: str = ""  # the component's launch key when this process started (stale after a reload changes it)

    @property
    def alive(self) -> bool:
        return self.pid is not None

    @property
    def healthy(self) -> bool:
        return self.state is ReplicaState.RUNNING and self.probe_ok is not False

    def count_probe(self, ok: bool, error: str = "") -> None:
        """One probe result into its run of passes or of failures (the other run starts again at 0)."""
        if ok:
            self.probe_failures, self.probe_successes, self.probe_error = 0, self.probe_successes + 1, ""
        else:
            self.probe_successes, self.probe_failures, self.probe_error = 0, self.probe_failures + 1, error


@dataclass(eq=False)
class Runtime:
    """Everything the agent knows about one component at this moment."""

    name: str
    spec: Component
    desired: int
    replicas: dict[int, Replica] = field(default_factory=dict)
    manual_stop: bool = False
    circuit: Circuit = Circuit.CLOSED
    circuit_opened_wall: float = 0.0
    circuit_timer: asyncio.TimerHandle | None = None
    history: list[float] = field(default_factory=list)
    restarts: collections.Counter[str] = field(default_factory=collections.Counter)
    last_exit: ExitStatus | None = None
    last_reason: str = ""
    last_restart_wall: float = 0.0
    ready_event: Flag = field(default_factory=Flag)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    launch: str = ""  # launch_key(spec): what a replica started now is launched with
    retired: bool = False  # removed from the config by a reload: never spawned again
    # An external component's probe state (no process, no pid; index 0): None when it is not watched
    # (no probe, or 0 desired). Never in `replicas`, so nothing that spawns or stops sees it.
    observed: Replica | None = None
    # Set by whoever waits for the lock to take over a rolling restart (the config reload): the roll
    # lets the replica in hand get ready, then returns the rest (agent/supervise/rollout.py).
    roll_interrupt: Flag = field(default_factory=Flag)
    # Set by a stop or the shutdown waiting for the lock: the roll stops waiting for readiness at once.
    roll_abort: Flag = field(default_factory=Flag)

    def active(self) -> list[Replica]:
        return [r for i, r in sorted(self.replicas.items()) if i < self.desired]

    @property
    def external(self) -> bool:
        return self.spec.external

    @property
    def running_count(self) -> int:
        if self.external:  # seen running: its probe passes
            return 1 if self.observed is not None and self.observed.probe_ok else 0
        return sum(1 for r in self.replicas.values() if r.state in (ReplicaState.RUNNING, ReplicaState.STARTING))

    @property
    def healthy_count(self) -> int:
        if self.external:
            return 1 if self.observed is not None and self.observed.probe_ok else 0
        return sum(1 for r in self.replicas.values() if r.healthy)

    @property
    def target(self) -> int:
        """Replicas that should be running now (0 when stopped by hand)."""
        return 0 if self.manual_stop else self.desired

    @property
    def state(self) -> ComponentState:
        if self.external:
            return ComponentState.EXTERNAL
        if self.circuit is Circuit.OPEN:
            return ComponentState.CIRCUIT_OPEN
        if self.circuit is Circuit.HALF_OPEN:
            return ComponentState.HALF_OPEN
        states = [r.state for r in self.replicas.values()]
        if ReplicaState.STOPPING in states:
            return ComponentState.STOPPING
        if ReplicaState.BACKOFF in states:
            return ComponentState.BACKOFF
        if any(r.alive and r.probe_ok is False for r in self.replicas.values()):
            return ComponentState.UNHEALTHY
        if ReplicaState.STARTING in states:
            return ComponentState.STARTING
        if ReplicaState.RUNNING in states:
            return ComponentState.RUNNING
        if ReplicaState.EXITED in states:
            return ComponentState.EXITED
        return ComponentState.STOPPED


def new_runtime(name: str, spec: Component) -> Runtime:
    """A component's runtime before anything ran: its start count, no restart counted (a Counter reads
    0 for a reason never counted, so none is stored until counted)."""
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


def replica_log_path(log_dir: Path, component: str, index: int) -> Path:
    """`log_dir/<component>.log` for replica 0, `log_dir/<component>.<n>.log` for the others."""
    return log_dir / (f"{component}.log" if index == 0 else f"{component}.{index}.log")


def replica_err_path(log_dir: Path, component: str, spec: Component, index: int) -> Path | None:
    """Where the replica's stderr goes when it is not merged into its log: `file` puts it next to the log
    (`<component>[.<n>].err.log`), a path (with `{replica}`) names it; None when merged."""
    if spec.stderr == "merged":
        return None
    if spec.stderr == "file":
        return log_dir / (f"{component}.err.log" if index == 0 else f"{component}.{index}.err.log")
    return Path(substitute(str(spec.stderr), index))
