"""The arrival patterns of bench.scale: when each todo lands, in seconds after a scenario's t=0.

Each pattern is a pure function returning sorted offsets, so a run's arrivals are known in full before it
starts (the Poisson pattern draws from a seeded RNG: the same seed, the same todos). `feed` puts a batch
of todos into a store in one transaction.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from agent.todos.store import open_store

SURGE_TODOS = 600
SQUARE = {"high": 6.0, "low": 0.5, "half_period": 120.0, "periods": 3}  # todos/s, s, count
RAMP = {"peak": 12.0, "seconds": 480.0}
BURSTS = {"rate": 1.0, "seconds": 600.0, "bursts": 3, "size": 150}


def surge() -> list[float]:
    """600 todos at t=0, all at once."""
    return [0.0] * SURGE_TODOS


def _even(start: float, seconds: float, rate: float) -> list[float]:
    return [start + i / rate for i in range(math.floor(seconds * rate))]


def square_wave() -> list[float]:
    """Two minutes at 6 todos/s, two at 0.5 todos/s, three periods, then nothing."""
    half, out = SQUARE["half_period"], []
    for period in range(int(SQUARE["periods"])):
        start = period * 2 * half
        out += _even(start, half, SQUARE["high"]) + _even(start + half, half, SQUARE["low"])
    return out


def ramp() -> list[float]:
    """A rate rising linearly from 0 to 12 todos/s over 8 minutes, then nothing.

    With rate(t) = peak * t / T the count by t is peak * t^2 / (2T), so the k-th todo lands at
    sqrt(2T * k / peak).
    """
    peak, seconds = RAMP["peak"], RAMP["seconds"]
    total = math.floor(peak * seconds / 2)
    return [math.sqrt(2 * seconds * k / peak) for k in range(1, total + 1)]


def bursts(seed: int) -> list[float]:
    """Poisson arrivals at 1 todo/s for 10 minutes, plus 150 todos at once at three random times."""
    rng = random.Random(seed)
    rate, seconds = BURSTS["rate"], BURSTS["seconds"]
    out, t = [], rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    for _ in range(int(BURSTS["bursts"])):
        out += [rng.uniform(0, seconds)] * int(BURSTS["size"])
    return sorted(out)


PATTERNS: dict[str, Callable[[int], list[float]]] = {
    "surge": lambda seed: surge(),
    "square": lambda seed: square_wave(),
    "ramp": lambda seed: ramp(),
    "bursts": bursts,
}


def arrivals(pattern: str, seed: int, horizon: float) -> list[float]:
    """The pattern's offsets before `horizon` seconds (a short run drops the later todos)."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown arrival pattern {pattern!r} (known: {', '.join(PATTERNS)})")
    if not horizon > 0:
        raise ValueError(f"the horizon must be positive, got {horizon!r}")
    return [t for t in PATTERNS[pattern](seed) if t < horizon]


def feed(db: Path, count: int, label: str) -> None:
    """Add `count` todos to the SQLite store at `db` in one transaction (the store's add_many when it has
    one, else the same rows and `created` flow counter written here)."""
    if count <= 0:
        return
    titles = [f"{label} {i}" for i in range(count)]
    store = open_store(str(db))
    add_many = getattr(store, "add_many", None)
    if add_many is not None:
        add_many(titles)
        return
    now = time.time()
    conn = sqlite3.connect(str(db), timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO todos (title, status, priority, capabilities, created_at, updated_at)"
                         " VALUES (?, 'pending', 'normal', '[]', ?, ?)", [(t, now, now) for t in titles])
        conn.execute("INSERT INTO todo_flow (kind, capability, value) VALUES ('created', 'any', ?)"
                     " ON CONFLICT (kind, capability) DO UPDATE SET value = value + ?", (count, count))
        conn.execute("COMMIT")
    finally:
        conn.close()
