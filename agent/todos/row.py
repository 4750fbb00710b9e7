"""What one todo row may hold: the single validator every backlog source (SQLite, JSON, HTTP) and the store use.

A row that does not pass is skipped by the reader and counted, never allowed to reach a metric label or
to stop the read of the rows around it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

STATUSES = ("pending", "in_progress", "done", "failed")
PRIORITIES = ("low", "normal", "high", "critical")
STATUS_ALIASES = {"todo": "pending", "open": "pending", "new": "pending", "queued": "pending",
                  "in-progress": "in_progress", "in progress": "in_progress", "running": "in_progress",
                  "active": "in_progress", "completed": "done", "complete": "done", "closed": "done",
                  "error": "failed", "cancelled": "failed"}
PRIORITY_ALIASES = {"medium": "normal", "moderate": "normal", "urgent": "critical", "highest": "critical",
                    "lowest": "low", "p0": "critical", "p1": "high", "p2": "normal", "p3": "low"}


class RowError(ValueError):
    """One malformed row. `kind` names the fault from a fixed set (used to log it once); str() adds the value."""

    def __init__(self, field: str, problem: str, value: Any, index: int | None = None) -> None:
        self.kind = f"{field}{'[]' if index is not None else ''} {problem}"  # no index: kinds stay few
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}{f'[{index}]' if index is not None else ''} {problem} (got {shown})")


@dataclass(frozen=True)
class Row:
    """A valid row, normalised: canonical status and priority, unique capability names, epoch seconds."""

    status: str
    priority: str
    capabilities: tuple[str, ...]
    created_at: float | None


def _choice(value: Any, allowed: tuple[str, ...], aliases: dict[str, str], field: str) -> str:
    if not isinstance(value, str):
        raise RowError(field, "must be a string", value)
    key = value.strip().lower()
    key = aliases.get(key, key)
    if key not in allowed:
        raise RowError(field, f"is not one of {', '.join(allowed)}", value)
    return key


def parse_capabilities(value: Any) -> tuple[str, ...]:
    """A list of names, or one comma-separated string; None or empty means any worker."""
    if value is None:
        return ()
    if isinstance(value, str):
        names: Iterable[Any] = value.split(",")
        names = [n for n in (s.strip() for s in names) if n]
    elif isinstance(value, list | tuple):
        names = value
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise RowError("capabilities", "must be a string", name, i)
            if not name.strip():
                raise RowError("capabilities", "must not be empty", name, i)
        names = [n.strip() for n in names]
    else:
        raise RowError("capabilities", "must be a list of names or a comma-separated string", value)
    return tuple(dict.fromkeys(names))  # a name listed twice counts once


def capabilities_json(text: Any) -> tuple[str, ...]:
    """The SQLite column: JSON text holding what parse_capabilities accepts."""
    if text is None:
        return ()
    if not isinstance(text, str):
        raise RowError("capabilities", "must be JSON text", text)
    try:
        value = json.loads(text) if text.strip() else None
    except ValueError:
        raise RowError("capabilities", "is not valid JSON", text) from None
    except RecursionError:
        raise RowError("capabilities", "is nested too deeply", text[:20]) from None
    return parse_capabilities(value)


def parse_created_at(value: Any) -> float | None:
    """Unix seconds or ISO 8601 (`Z` allowed); None when absent."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise RowError("created_at", "must be a finite number", value)
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise RowError("created_at", "is not an ISO 8601 time", value) from None
    raise RowError("created_at", "must be Unix seconds or an ISO 8601 time", value)


def validate_row(status: Any, priority: Any, capabilities: Any, created_at: Any) -> Row:
    """Check and normalise one row's fields; raises RowError naming the first bad field."""
    return Row(_choice(status, STATUSES, STATUS_ALIASES, "status"),
               _choice(priority, PRIORITIES, PRIORITY_ALIASES, "priority"),
               parse_capabilities(capabilities), parse_created_at(created_at))
