"""What a backlog read yields (Counts) and how a source says it cannot be read (SourceError): shared by the
readers of the agent's own store, JSON and HTTP (agent/observe/backlog.py) and of other systems' queues
(agent/observe/queues.py)."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.todos.row import RowError

ANY_CAPABILITY = "any"
# The label of every capability that no configured component serves: label values stay bounded by the
# config, not by the data (config names starting with "_" are refused, so this cannot collide).
OTHER_CAPABILITY = "_other"
# Distinct unmapped status values remembered per read (for their log lines): the data, not the config,
# decides how many there are.
MAX_UNMAPPED_VALUES = 20

Key = tuple[str, str, str]  # status, priority, capability


class SourceError(Exception):
    """A source that cannot be read; the message names the source and what is wrong."""


@dataclass
class Counts:
    """Backlog counts of one read, and the malformed rows it skipped."""

    by_key: collections.Counter[Key] = field(default_factory=collections.Counter)
    oldest_pending: dict[str, float] = field(default_factory=dict)  # priority -> created_at (epoch s)
    invalid: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # fault kind -> first row with it, as a message
    # A store's own counters (leases_expired, completions_rejected); None for sources without them (json, http).
    counters: dict[str, int] | None = None
    # A store's flow counters, (kind, capability) -> n (kind: created, completed, work_seconds); None
    # without a store.
    flow: dict[tuple[str, str], float] | None = None
    # sql: todos left out because their status is not in the source's status_map, and by which values
    # (shown as repr, at most MAX_UNMAPPED_VALUES of them) -> todos.
    unmapped: int = 0
    unmapped_values: dict[str, int] = field(default_factory=dict)

    def add(self, status: str, priority: str, capabilities: Iterable[str], created_at: float | None,
            n: int = 1) -> None:
        caps = list(capabilities) or [ANY_CAPABILITY]
        for cap in caps:
            self.by_key[(status, priority, cap)] += n
        if status == "pending" and created_at is not None:
            prev = self.oldest_pending.get(priority)
            if prev is None or created_at < prev:
                self.oldest_pending[priority] = created_at

    def skip(self, where: str, error: RowError, n: int = 1) -> None:
        """Count `n` malformed rows; remember the first of each kind of fault for the log."""
        self.invalid += n
        self.problems.setdefault(error.kind, f"{where}: {error}")

    def leave_out(self, shown: str, n: int) -> None:
        """Count `n` todos whose status (`shown`) maps to none of the canonical statuses."""
        self.unmapped += n
        if shown in self.unmapped_values or len(self.unmapped_values) < MAX_UNMAPPED_VALUES:
            self.unmapped_values[shown] = self.unmapped_values.get(shown, 0) + n

    def merge(self, other: Counts) -> None:
        self.by_key.update(other.by_key)
        self.invalid += other.invalid
        for priority, created in other.oldest_pending.items():
            prev = self.oldest_pending.get(priority)
            if prev is None or created < prev:
                self.oldest_pending[priority] = created


def bounded(counts: Counts, served: Iterable[str]) -> Counts:
    """The same counts with every capability outside `served` (and `any`) summed under `_other`."""
    known = {*served, ANY_CAPABILITY}
    out = Counts(oldest_pending=counts.oldest_pending, invalid=counts.invalid, problems=counts.problems)
    for (status, priority, cap), n in counts.by_key.items():
        out.by_key[(status, priority, cap if cap in known else OTHER_CAPABILITY)] += n
    return out
