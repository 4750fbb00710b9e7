"""What the lifecycle decides by itself, told to whoever listens: each restart it makes (after an exit, failed
probes, the memory limit or a failed spawn) with what happened, and each circuit that opens or closes.

The app records them in `agent history` beside the alert actions (agent/daemon/parts.py wires them, as it
wires the supervisor's roll listeners): the supervisor never imports act/. They are bounded by the circuit
breaker: restarts after exits, failed probes, the memory limit and failed spawns all count toward
`max_restarts` per `window`, then the circuit opens (one entry) and stays open for its cooldown.

A listener that raises is logged and skipped: telling the history must never keep a replica from restarting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.supervise.policy import ExitDecision
from agent.supervise.replica import Replica, Runtime

log = logging.getLogger("agent.supervisor")


class Notices:
    """The restart and circuit listeners of one lifecycle."""

    def __init__(self) -> None:
        # (component, reason, detail): reason exit, probe, resource or spawn; detail what happened and what next.
        self.restart_listeners: list[Callable[[str, str, str], None]] = []
        # (component, opened, why): the circuit opened (no more restarts), or closed after being open.
        self.circuit_listeners: list[Callable[[str, bool, str], None]] = []

    def restarted(self, name: str, reason: str, detail: str) -> None:
        """A restart the agent decided by itself."""
        for listener in self.restart_listeners:
            try:
                listener(name, reason, detail)
            except Exception:
                log.exception("component %s: a restart listener failed (the restart goes on)", name)

    def after_failure(self, rt: Runtime, rep: Replica, reason: str, detail: str, decision: ExitDecision) -> None:
        """A restart decided after an unplanned end of a replica: now, or after the backoff's delay."""
        then = (f"starts again in {decision.delay:.1f}s (failure {decision.failures} in a row)"
                if decision.delay > 0 else "started again")
        self.restarted(rt.name, reason, f"replica {rep.index} {detail or 'failed'}; {then}")

    def circuit_changed(self, rt: Runtime, opened: bool, why: str) -> None:
        """The component's circuit opened or closed."""
        for listener in self.circuit_listeners:
            try:
                listener(rt.name, opened, why)
            except Exception:
                log.exception("component %s: a circuit listener failed (the circuit changed all the same)", rt.name)
