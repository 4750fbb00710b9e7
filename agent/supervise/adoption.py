"""`agent reexec`: every component's run-time state and live replicas as JSON for the new image, and
the new image's adoption of them (same pids, nothing restarted).

Monotonic times are per boot, so they mean the same to the new image (same process, same boot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.supervise import policy
from agent.supervise.policy import Circuit
from agent.supervise.process import ExitStatus
from agent.supervise.replica import REASONS, Replica, ReplicaState, Runtime

if TYPE_CHECKING:
    from agent.supervise.lifecycle import Lifecycle


def hand_over(components: dict[str, Runtime]) -> dict[str, Any]:
    """Every component's run-time state and live replicas, as JSON, for `agent reexec`."""
    return {rt.name: runtime_record(rt) for rt in components.values()}


def adopt(lc: Lifecycle, components: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Take over the replicas the previous image ran (`hand_over()`): same pids, nothing restarted.

    Call before the loop runs anything else: a replica that died during the exec is a zombie that
    the reaper collects next, and it is then restarted like any exit. Returns (component, index,
    pid) of live replicas whose component is no longer configured, for the caller to stop.
    """
    leftovers: list[tuple[str, int, int]] = []
    for name, entry in components.items():
        rt = lc.components.get(name)
        if rt is None or rt.external:  # gone, or external now: its old processes are not ours to keep
            leftovers += [(name, r["index"], r["pid"]) for r in entry["replicas"] if r["pid"]]
            continue
        restore_runtime(rt, entry)
        for record in entry["replicas"]:
            rep = rt.replicas.get(record["index"]) or lc.new_replica(rt, record["index"])
            rep.failures = record["failures"]
            if record["pid"]:
                restore_replica(rt, rep, record)
                lc.watch_adopted(rt, rep)
        lc.check_ready(rt)
    lc.persist()  # into this image's state dir, which may be a new one
    return leftovers


def runtime_record(rt: Runtime) -> dict[str, Any]:
    """The component's run-time state and its live replicas."""
    return {
        "desired": rt.desired,
        "manual_stop": rt.manual_stop,
        "circuit": rt.circuit.value,
        "circuit_opened_at": rt.circuit_opened_wall,
        "restarts": dict(rt.restarts),
        "last_reason": rt.last_reason,
        "last_restart_wall": rt.last_restart_wall,
        "history": list(rt.history),
        "last_exit": None if rt.last_exit is None else [rt.last_exit.code, rt.last_exit.signal],
        "replicas": [
            {"index": rep.index, "pid": rep.pid, "generation": rep.generation, "started_at": rep.started_at,
             "started_wall": rep.started_wall, "ready": rep.ready, "failures": rep.failures,
             "launch": rep.launch}
            for rep in rt.replicas.values()
        ],
    }


def restore_runtime(rt: Runtime, entry: dict[str, Any]) -> None:
    """The run-time state `runtime_record` wrote, back into the new image's runtime (replicas aside);
    the desired count is clamped to the bounds the new config sets."""
    bounds = rt.spec.replicas
    rt.desired = policy.clamp_replicas(entry["desired"], bounds.min, bounds.max)
    rt.manual_stop = entry["manual_stop"]
    rt.circuit = Circuit(entry["circuit"])
    rt.circuit_opened_wall = entry["circuit_opened_at"]
    rt.restarts.update({k: v for k, v in entry["restarts"].items() if k in REASONS})
    rt.last_reason = entry["last_reason"]
    rt.last_restart_wall = entry["last_restart_wall"]
    rt.history = list(entry["history"])
    if entry["last_exit"] is not None:
        rt.last_exit = ExitStatus(*entry["last_exit"])


def restore_replica(rt: Runtime, rep: Replica, record: dict[str, Any]) -> None:
    """A live replica's run as `runtime_record` wrote it, back into the new image's replica."""
    rep.pid = record["pid"]
    rep.generation = record["generation"]
    rep.started_at, rep.started_wall = record["started_at"], record["started_wall"]
    # What it was launched with: when the file changed that since, the next reload replaces it.
    rep.launch = record.get("launch", rt.launch)
    rep.ready = rep.probe_ever_ok = record["ready"]
    rep.state = ReplicaState.RUNNING if rep.ready else ReplicaState.STARTING
