"""What bench.scale reports of one scenario, computed from what it recorded (pure functions).

Inputs: the samples taken every half second (desired and running replicas from the agent's /metrics,
pending and in-progress todos from the store), the agent's remediation history, and the todos' rows.
Times are seconds after the scenario's t=0.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import stats

DRAIN_TARGET = 60.0  # seconds: a backlog the running replicas cannot work off within it needs more of them
CAPACITY = 4  # replicas desired: the target for the surge
STABILISATION = 300.0  # seconds: the demo todo_worker's scale_down_stabilization, the flapping window
SCALE_ACTIONS = ("scale_up", "scale_down", "scale_to", "start")


@dataclass(frozen=True)
class Sample:
    t: float
    desired: int | None
    running: int | None
    pending: int
    in_progress: int


def store_counts(db: Path) -> dict[str, int]:
    """Todos by status in the SQLite store."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return {str(s): int(n) for s, n in conn.execute("SELECT status, count(*) FROM todos GROUP BY status")}
    finally:
        conn.close()


def todo_waits(db: Path, t0: float, end: float, work_seconds: float) -> dict[str, Any]:
    """Each todo's wait from creation to its claim (or to `end` for one never claimed, a lower bound).

    The claim time is the `claimed_at` column where the store has one; otherwise it is estimated as
    the done todo's updated_at minus the work time, and `source` says so.
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(todos)")}
        if "claimed_at" in columns:
            source = "claimed_at - created_at"
            rows = conn.execute("SELECT created_at, claimed_at FROM todos WHERE created_at >= ?", (t0,)).fetchall()
            claimed = [c - a for a, c in rows if c is not None]
            unclaimed = [end - a for a, c in rows if c is None]
        else:
            source = f"updated_at - created_at - {work_seconds:g} s of done todos (no claimed_at column)"
            rows = conn.execute("SELECT created_at, updated_at, status FROM todos WHERE created_at >= ?",
                                (t0,)).fetchall()
            claimed = [max(0.0, u - a - work_seconds) for a, u, s in rows if s == "done"]
            unclaimed = [end - a for a, u, s in rows if s == "pending"]
    finally:
        conn.close()
    waits = sorted(claimed + unclaimed)
    return {"source": source, "todos": len(waits), "unclaimed": len(unclaimed),
            "p50": percentile(waits, 50), "p95": percentile(waits, 95)}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile of `values` (bench.stats's interpolation); None when empty."""
    return stats.percentile(values, q) if values else None


def scale_events(history: list[dict[str, Any]], samples: list[Sample], t0: float) -> list[tuple[float, int]]:
    """Executed scale actions from t=0 on as (t, +1 up / -1 down), oldest first (the settling before t=0
    left out).

    A scale_to goes up or down by its target against the desired count sampled just before it.
    """
    events = []
    for entry in sorted(history, key=lambda e: e["ts"]):
        if entry.get("result") != "executed" or entry.get("action") not in SCALE_ACTIONS:
            continue
        t = entry["ts"] - t0
        if t < 0:
            continue
        if entry["action"] in ("scale_up", "start"):
            sign = 1
        elif entry["action"] == "scale_down":
            sign = -1
        else:
            before = [s.desired for s in samples if s.t < t and s.desired is not None]
            target = entry.get("target")
            if target is None or not before or target == before[-1]:
                continue
            sign = 1 if target > before[-1] else -1
        events.append((t, sign))
    return events


def desired_changes(samples: list[Sample]) -> list[tuple[float, int]]:
    """Each change of the desired count as (t, +1 up / -1 down)."""
    out, last = [], None
    for s in samples:
        if s.desired is None:
            continue
        if last is not None and s.desired != last:
            out.append((s.t, 1 if s.desired > last else -1))
        last = s.desired
    return out


def flips(changes: list[tuple[float, int]]) -> int:
    """How often the direction turns (up then down is one)."""
    return sum(1 for (_, a), (_, b) in itertools.pairwise(changes) if a != b)


def shortest_up_to_down(changes: list[tuple[float, int]]) -> float | None:
    """The shortest time from a scale-up to the next scale-down."""
    gaps, last_up = [], None
    for t, sign in changes:
        if sign > 0:
            last_up = t
        elif last_up is not None:
            gaps.append(t - last_up)
            last_up = None
    return min(gaps) if gaps else None


def most_turns_in_window(changes: list[tuple[float, int]], window: float) -> int:
    """The most direction turns within any `window` seconds (a turn is a change against the previous one)."""
    turns = [b[0] for a, b in itertools.pairwise(changes) if a[1] != b[1]]
    return max((sum(1 for u in turns if t <= u < t + window) for t in turns), default=0)


def early_downs(samples: list[Sample], per_replica: float) -> int:
    """Decreases of the desired count that left more pending todos than the remaining replicas work off
    within the drain target (`per_replica` todos each)."""
    count, last = 0, None
    for s in samples:
        if s.desired is None:
            continue
        if last is not None and s.desired < last and s.pending > s.desired * per_replica:
            count += 1
        last = s.desired
    return count


def replica_minutes(samples: list[Sample], horizon: float) -> float:
    """The integral of running replicas over [0, horizon], each sample's count held until the next."""
    known = [s for s in samples if s.running is not None and s.t <= horizon]
    total = 0.0
    for a, b in zip(known, [*known[1:], None], strict=True):
        total += a.running * ((b.t if b is not None else horizon) - a.t)  # type: ignore[operator]
    return total / 60


def measure(samples: list[Sample], history: list[dict[str, Any]], t0: float, horizon: float,
            last_arrival: float | None, work_seconds: float) -> dict[str, Any]:
    """Every figure of the table for one scenario.

    The first scale-up counts from the first sample whose backlog the running replicas could not work off
    within DRAIN_TARGET (t=0 when that never happens); negative when the rules scaled ahead of the backlog.
    """
    per_replica = DRAIN_TARGET / work_seconds  # todos one replica works off within the drain target
    need = next((s.t for s in samples if s.running is not None
                 and s.pending > max(s.running, 0) * per_replica), None)
    events = scale_events(history, samples, t0)
    ups = [t for t, sign in events if sign > 0]
    changes = desired_changes(samples)
    peak = max((s.desired for s in samples if s.desired is not None), default=None)
    drained = None
    if last_arrival is not None:
        drained = next((s.t for s in samples if s.t >= last_arrival and s.pending == 0 and s.in_progress == 0), None)
    down_after = next((t for t, sign in changes if sign < 0 and drained is not None and t >= drained), None)
    return {
        "need_at": need,
        "first_scale_up": ups[0] - (need or 0.0) if ups else None,
        "capacity_at": next((s.t for s in samples if s.desired is not None and s.desired >= CAPACITY), None),
        "peak_desired": peak,
        "peak_at": next((s.t for s in samples if peak is not None and s.desired == peak), None),
        "scale_ups": sum(1 for _, sign in events if sign > 0),
        "scale_downs": sum(1 for _, sign in events if sign < 0),
        "direction_changes": flips(changes),
        "most_turns_per_window": most_turns_in_window(changes, STABILISATION),
        "early_scale_downs": early_downs(samples, per_replica),
        "shortest_up_to_down": shortest_up_to_down(changes),
        "replica_minutes": replica_minutes(samples, horizon),
        "drained_at": drained,
        "scale_down_after_drain": down_after - drained if down_after is not None and drained is not None else None,
    }
