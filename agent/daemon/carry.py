"""The agent's counters across `agent reexec`: the old image writes them into the handover, the new one
goes on from them, so a re-exec does not read as a counter reset (`rate()` and `increase()` stay right).

The components' restart counters and the reaper's and guardian's counts travel with the state they
belong to (agent/supervise/adoption.py, daemon/handover.py); these are the rest: webhook answers,
remediation decisions and durations, probe durations, halted rollouts, failed state dir writes, dedupe
evictions, connections closed by the agent, TLS handshake failures, refused client certificates, history
lines dropped, failed log writes, each component's CPU seconds (its adopted replicas are the same
processes: the counter goes on from theirs), and the alert pipeline's heartbeat counts and the start of its
watch (agent/act/pipeline.py; its last heartbeat is in remediation.json), so a re-exec between two images
that both watch (a heartbeat_timeout set in both) gives a silent pipeline no fresh grace.
`agent/export/process.py`'s CPU seconds need nothing: the process, and so its CPU time, is the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from agent.act.dedupe import JOURNAL_FILE
from agent.act.history import HISTORY_FILE, STAMPS_FILE
from agent.supervise.logs import log_write_errors, resume_log_write_errors
from agent.supervise.state import STATE_FILE, StateStore

if TYPE_CHECKING:
    from agent.act.remediation import Remediator
    from agent.config.models import Config
    from agent.export.events import EventMetrics
    from agent.http.connections import ConnectionGuard
    from agent.http.websecurity import WebSecurity
    from agent.observe.resources import ResourceMonitor


class Counted(Protocol):
    """The parts whose counters travel across the exec."""

    config: Config
    store: StateStore
    events: EventMetrics
    remediator: Remediator
    guard: ConnectionGuard
    web: WebSecurity
    resources: ResourceMonitor


def _writers(parts: Counted) -> dict[str, Any]:
    """Each state dir file's writer, which counts its failed writes."""
    remediator = parts.remediator
    return {STATE_FILE: parts.store, JOURNAL_FILE: remediator.dedupe, STAMPS_FILE: remediator.stamps.store,
            HISTORY_FILE: remediator.history}


def counters(parts: Counted) -> dict[str, Any]:
    """The counts to hand over, as JSON."""
    return {
        "events": parts.events.dump(),
        "state_write_errors": {name: writer.write_errors for name, writer in _writers(parts).items()},
        "dedupe_evictions": parts.remediator.dedupe.evicted,
        "connections_closed": dict(parts.guard.closed),
        "tls_handshake_failures": parts.web.handshake_failures,
        "tls_rejected_sans": parts.web.rejected_sans,
        "history_dropped": parts.remediator.history.dropped,
        "log_write_errors": log_write_errors(),
        "component_cpu": parts.resources.hand_over(),
        "alert_pipeline": parts.remediator.pipeline.hand_over(),
    }


def resume(parts: Counted, document: Any) -> None:
    """Go on from the previous image's counts (anything of another shape is ignored: a new image may come
    from an older agent, which handed over fewer)."""
    if not isinstance(document, dict):
        return
    parts.events.load(document.get("events"), parts.config)
    errors = document.get("state_write_errors")
    for name, writer in _writers(parts).items():
        writer.write_errors += _count(errors.get(name) if isinstance(errors, dict) else None)
    parts.remediator.dedupe.evicted += _count(document.get("dedupe_evictions"))
    closed = document.get("connections_closed")
    for reason in parts.guard.closed:
        parts.guard.closed[reason] += _count(closed.get(reason) if isinstance(closed, dict) else None)
    parts.web.handshake_failures += _count(document.get("tls_handshake_failures"))
    parts.web.rejected_sans += _count(document.get("tls_rejected_sans"))
    parts.remediator.history.dropped += _count(document.get("history_dropped"))
    resume_log_write_errors(document.get("log_write_errors"))
    parts.resources.adopt(document.get("component_cpu"))
    parts.remediator.pipeline.resume(document.get("alert_pipeline"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
