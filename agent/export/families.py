"""The families `agent --once --format prometheus` writes as /metrics does: one definition each, so a
series has the same HELP, type and labels in both outputs."""

from __future__ import annotations

from collections.abc import Iterable

from agent.export.exposition import Family, Row, gauge


def probe_success_family(source: Iterable[Row] = ()) -> Family:
    """orchestrator_component_probe_success, empty or with rows read as it is rendered."""
    return Family("orchestrator_component_probe_success", "Last probe result per replica.",
                  labels=["component", "replica"], source=source)


def memory_available_family(value: float) -> Family:
    """orchestrator_host_memory_available_bytes."""
    return Family("orchestrator_host_memory_available_bytes", "Host memory available.", value=value)


def disk_free_family() -> Family:
    """orchestrator_host_disk_free_bytes, empty."""
    return gauge("orchestrator_host_disk_free_bytes", "Free bytes per configured mountpoint.", ["mountpoint"])


def todo_backlog_family() -> Family:
    """orchestrator_todo_backlog, empty."""
    return gauge("orchestrator_todo_backlog", "Todos by status, priority and required capability ('any' when "
                  "none is required; a todo needing two counts under both).", ["status", "priority", "capability"])


def source_up_family() -> Family:
    """orchestrator_todo_source_up, empty."""
    return gauge("orchestrator_todo_source_up", "1 when the last read of the source succeeded.", ["source"])
