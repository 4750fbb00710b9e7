"""What every todo store offers (SQLite embedded, PostgreSQL shared), and how a `--db` names one.

Semantics shared by both stores (docs/todos.md):
- `claim` takes the most urgent (then oldest) pending todo the worker can serve, under a lease of
  `lease` seconds, and returns it with a fresh claim token. The capability test is in the claim's query,
  so however many todos the worker cannot serve wait ahead, none hides one it can; a row whose
  capabilities are malformed is never claimed;
- a todo whose lease ran out is pending again (swept by the next write, and counted in the store's
  `leases_expired` counter); the backlog reader already counts it as pending before the sweep;
- `finish` with a token succeeds only while that token holds a live lease (fencing): a late completion
  from an expired claim is rejected and counted (`completions_rejected`). So each todo is recorded done
  once, while its work may run twice after an expiry (at-least-once execution).
"""

from __future__ import annotations

import enum
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from agent.todos.row import PRIORITIES, STATUSES, RowError, capabilities_json, parse_capabilities

DEFAULT_LEASE = 300.0  # seconds; the config's `lease` of a backlog source overrides it
MAX_LEASE = 7 * 86400.0
MAX_TITLE = 1000  # characters
URGENCY = "CASE priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END"
COUNTERS = ("leases_expired", "completions_rejected")
# Flow counters (table `todo_flow`, one row per kind and capability): todos added (`created`) and
# todos that left the queue as done or failed (`completed`), each counted once under every capability it
# needs (`any` when it needs none), like the backlog. Their rates are the arrival and completion rates
# of the cluster placement rules (rules/orchestrator-placement.yml). `work_ms` adds, with `completed`,
# the milliseconds from the finishing claim to the finish, so rate(work) / rate(completed) is the time
# one replica spends per todo, measured from the first completions (a todo claimed by a version that
# recorded no claimed_at adds none).
FLOWS = ("created", "completed", "work_ms")
FINISHED = ("done", "failed")


def flow_capabilities(capabilities_text: object) -> list[str]:
    """The capabilities a stored row counts under (`any` for none); [] when the column is malformed."""
    try:
        caps = capabilities_json(capabilities_text)
    except RowError:
        return []
    return sorted(set(caps)) or ["any"]


class StoreError(Exception):
    """A store that cannot be opened or used; the message says which and why."""


class Finish(enum.StrEnum):
    """What `finish` did."""

    OK = "ok"
    MISSING = "missing"  # no such todo
    REJECTED = "rejected"  # the token holds no live lease on it (expired, renewed by another, or finished)
    CLAIMED = "claimed"  # no token given, and the todo is under someone's live lease


@dataclass(frozen=True)
class Todo:
    id: int
    title: str
    status: str
    priority: str
    capabilities: list[str]
    created_at: float
    updated_at: float
    claimed_by: str | None
    claim_token: str | None = None
    lease_expires_at: float | None = None
    claimed_at: float | None = None  # when the current (or the finishing) claim took it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def todo_from(row: dict[str, Any] | Any) -> Todo:
    """A stored row (mapping-like) as a Todo; RowError when its capabilities are malformed."""
    caps = capabilities_json(row["capabilities"])
    keys = row.keys()
    return Todo(int(row["id"]), row["title"], row["status"], row["priority"], list(caps),
                float(row["created_at"]), float(row["updated_at"]), row["claimed_by"],
                row["claim_token"] if "claim_token" in keys else None,
                row["lease_expires_at"] if "lease_expires_at" in keys else None,
                row["claimed_at"] if "claimed_at" in keys else None)


def check_priority(priority: str) -> None:
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")


def check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")


def title_problem(title: str) -> str | None:
    """What is wrong with a todo's title (blank, or longer than MAX_TITLE), or None."""
    if not title.strip():
        return "is empty"
    if len(title) > MAX_TITLE:
        return f"is {len(title)} characters long, more than {MAX_TITLE}"
    return None


def check_titles(titles: Iterable[str]) -> list[str]:
    """The titles as a list; ValueError naming the first (1-based) that is not text, is blank or too long."""
    out = list(titles)
    if not out:
        raise ValueError("no titles to add")
    for number, title in enumerate(out, 1):
        if not isinstance(title, str):
            raise ValueError(f"title {number} must be text, got {type(title).__name__}")
        if problem := title_problem(title):
            raise ValueError(f"title {number} {problem}")
    return out


def check_lease(lease: float) -> float:
    if not (isinstance(lease, int | float) and 0 < lease <= MAX_LEASE):
        raise ValueError(f"lease must be more than 0 and at most {MAX_LEASE:.0f} seconds, got {lease!r}")
    return float(lease)


def normal_capabilities(capabilities: Iterable[str] | str) -> str:
    """The capabilities column: a sorted JSON list (a bare string is one comma-separated list)."""
    import json

    caps = parse_capabilities(capabilities if isinstance(capabilities, str) else list(capabilities))
    return json.dumps(sorted(caps))


def work_ms(worked: float | None) -> int | None:
    """Whole milliseconds of work from seconds since the claim (None: no claim time recorded); never < 0."""
    return None if worked is None else max(0, round(worked * 1000))


def new_token() -> str:
    """A claim token: unguessable, so only the claimer can complete or renew."""
    return secrets.token_hex(16)


class TodoStore(ABC):
    """One todo queue. Every method is one short transaction; a store is closed with close()."""

    name: str  # what error messages call it (a path, or a dsn without secrets)

    def add(self, title: str, priority: str = "normal", capabilities: Iterable[str] | str = ()) -> int:
        """Insert a pending todo and return its id."""
        return self.add_many([title], priority, capabilities)[0]

    @abstractmethod
    def add_many(self, titles: Iterable[str], priority: str = "normal",
                 capabilities: Iterable[str] | str = ()) -> list[int]:
        """Insert pending todos, all or none in one transaction, each counted `created`; their ids in order.
        ValueError (nothing added) when the list is empty or a title is blank or too long (check_titles)."""

    @abstractmethod
    def list(self, status: str | None = None, limit: int = 1000) -> list[Todo]:
        """The first `limit` todos by id (of `status` if given), most urgent and oldest first."""

    @abstractmethod
    def claim(self, worker: str, capabilities: Iterable[str] | None = None,
              lease: float = DEFAULT_LEASE) -> Todo | None:
        """Take the most urgent pending todo this worker can serve, under a lease; None when none suits."""

    @abstractmethod
    def renew(self, todo_id: int, token: str, lease: float = DEFAULT_LEASE) -> float | None:
        """Extend a live lease held by `token` to now + lease; the new expiry, or None when not held."""

    @abstractmethod
    def finish(self, todo_id: int, status: str = "done", token: str | None = None) -> Finish:
        """Mark a todo done, failed or pending (put back); with a token only while it holds the lease."""

    @abstractmethod
    def counters(self) -> dict[str, int]:
        """The store's counters: leases_expired, completions_rejected (swept and recorded so far)."""

    @abstractmethod
    def flow(self) -> dict[str, dict[str, int]]:
        """The flow counters: {"created": {capability: n}, "completed": {capability: n}}."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> TodoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
