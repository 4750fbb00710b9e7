"""`agent reexec`: a component's run-time state as JSON for the new image, and back.

Monotonic times are per boot, so they mean the same to the new image (same process, same boot).
"""

from __future__ import annotations

from typing import Any

from agent.supervise import policy
from agent.supervise.policy import Circuit
from agent.supervise.process import ExitStatus
from agent.supervise.replica import REASONS, Runtime


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
