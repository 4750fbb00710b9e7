"""Crash-to-restart latency and start-up time of the agent and the peers.

Restart: the agent, supervisord and circus run one at a time with N children each, each alone on the
machine. Side by side (`together`, `--restart-together`) the agent was measured next to circus, whose
10 ms check loop over 1,000 watchers takes most of one core of a small machine, a core the agent
needs to restart on. Each supervisor has its own kill plan; one poll loop (~1 ms) SIGKILLs a child and
watches the supervisor's children (the kernel's children files, not a /proc scan: procfs.ChildScanner)
until a new pid of that slot has exec'd under it. A supervisor has at most one kill in flight. Side by
side, a new kill is issued only while no other kill is in its first `PARK` seconds, so fast restarts
never overlap each other; a supervisor that waits on a timer (supervisord's 1 s main loop, a backoff)
lets the others go on meanwhile, which keeps the wall time bounded without putting two spawns on the
CPU at once (the rotation starts with a different supervisor each round).

Kills of one supervisor are spread over the group's time budget with random gaps (uniform, mean
half the budget per planned kill), so crashes land at random phases of every periodic activity of a
supervisor (the agent's resource sampler, circus' check loop) as real crashes do, rather than all
within a few seconds.

Slots are drawn as shuffled permutations, so no child is killed again before every other one has been
killed once; at most `MAX_KILLS_PER_SLOT` times at aggressive settings (the agent's default circuit
breaker allows 5 restarts in 5 minutes) and once at default settings (so every kill is a first crash:
no backoff growth, no supervisord startsecs/backoff states). Every group also has a time budget: a
supervisor that is slow to restart gets fewer kills, and the table says how many.

Start-up: one supervisor at a time, from launching its process to all N children running; the kinds
alternate within each repetition.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.configs import KINDS, Setup
from bench.launch import Fleet, Instance, start_and_wait
from bench.procfs import ChildScanner
from bench.stats import summary_ms

MAX_KILLS_PER_SLOT = 4
SETTLE = 0.01  # pause after a restart before the same supervisor's next kill
PARK = 0.05  # a kill in flight longer than this is waiting on a timer: others may go
SLOW_POLL = 0.005  # the longest gap between two looks at a supervisor with a kill in flight


@dataclass
class RestartResult:
    kind: str
    n: int
    aggressive: bool
    planned: int = 0
    samples: list[float] = field(default_factory=list)
    timeouts: int = 0

    def summary(self) -> dict[str, float]:
        out = summary_ms(self.samples)
        out["timeouts"] = self.timeouts
        out["planned"] = self.planned
        return out


@dataclass
class _Track:
    inst: Instance
    plan: list[int]
    result: RestartResult
    gap: float = 0.0  # mean random pause between two kills
    done: int = 0
    slot: int | None = None  # in flight
    killed_at: float = 0.0
    ready_at: float = 0.0
    scan_at: float = 0.0  # when to look at its children again, while a kill is in flight


def _due(tracks: list[_Track], now: float) -> list[_Track]:
    """Tracks with a kill in flight whose children are due a look (nothing else restarts a child).

    Every poll for the first 20 ms; later the gap grows with the time waited, up to `SLOW_POLL`, so a
    restart is resolved within 5 % (supervisord's ~1 s ones within 5 ms) without reading a list of
    1,000 children every millisecond for a supervisor that waits on a timer.
    """
    due = [t for t in tracks if t.slot is not None and now >= t.scan_at]
    for t in due:
        t.scan_at = now + min(SLOW_POLL, (now - t.killed_at) / 20)
    return due


def kill_plan(n: int, kills: int, per_slot: int, rng: random.Random) -> list[int]:
    """`kills` slots: concatenated shuffled permutations, at most `per_slot` kills of each slot."""
    kills = min(kills, n * per_slot)
    plan: list[int] = []
    while len(plan) < kills:
        perm = list(range(n))
        rng.shuffle(perm)
        if plan and perm[0] == plan[-1]:
            perm.append(perm.pop(0))
        plan.extend(perm)
    return plan[:kills]


def _kill(track: _Track) -> None:
    slot = track.plan[track.done]
    track.slot = slot
    track.killed_at = track.scan_at = time.perf_counter()
    os.kill(track.inst.children[slot], signal.SIGKILL)


def _may_kill(tracks: list[_Track], now: float) -> bool:
    return all(t.slot is None or now - t.killed_at > PARK for t in tracks)


def run_kills(tracks: list[_Track], scanner: ChildScanner, timeout: float, budget: float,
              rng: random.Random, progress: Callable[[str], None]) -> None:
    """The poll loop: issue kills by the rules above and time each restart (bounded by `budget`)."""
    by_instance = {t.inst.instance: t for t in tracks}
    start = time.perf_counter()
    for track in tracks:
        track.gap = 0.5 * budget / max(1, len(track.plan))
        track.ready_at = start + rng.uniform(0.0, 2.0 * track.gap)
    turn = 0
    last_report = start
    while True:
        for found in scanner.scan([t.inst.pid for t in _due(tracks, time.perf_counter())]):
            owner = by_instance.get(found.instance)
            if owner is None:
                continue
            owner.inst.children[found.slot] = found.pid
            if found.slot == owner.slot:
                owner.result.samples.append(time.perf_counter() - owner.killed_at)
                owner.slot = None
                owner.done += 1
                owner.ready_at = time.perf_counter() + SETTLE + rng.uniform(0.0, 2.0 * owner.gap)
        now = time.perf_counter()
        for track in tracks:
            if track.slot is not None and now - track.killed_at > timeout:
                track.result.timeouts += 1
                track.result.samples.append(timeout)  # counted at the timeout: a lower bound
                track.slot = None
                track.done = len(track.plan)  # a supervisor that lost a child is out of this group
                track.inst.check_alive()
        over_budget = now - start > budget
        if over_budget and all(t.slot is None for t in tracks):
            break
        if all(t.done >= len(t.plan) and t.slot is None for t in tracks):
            break
        if not over_budget and _may_kill(tracks, now):
            for i in range(len(tracks)):
                track = tracks[(turn + i) % len(tracks)]
                if track.slot is None and track.done < len(track.plan) and now >= track.ready_at:
                    _kill(track)
                    turn = (turn + i + 1) % len(tracks)
                    break
        if now - last_report > 15.0:
            last_report = now
            progress("    " + ", ".join(f"{t.inst.setup.kind} {t.done}/{len(t.plan)}" for t in tracks))
        time.sleep(0.001)


def restart_latency(root: Path, n: int, kills: int, aggressive: bool, timeout: float, budget: float,
                    seed: int, progress: Callable[[str], None], together: bool = False) -> list[RestartResult]:
    """Time up to `kills` crash-to-restart cycles of each supervisor: one at a time (each alone on the
    machine, its own budget), or the three side by side sharing one budget (`together`)."""
    rng = random.Random(seed)
    per_slot = MAX_KILLS_PER_SLOT if aggressive else 1
    results: dict[str, RestartResult] = {}
    for kinds in [KINDS] if together else [(kind,) for kind in KINDS]:
        fleet = Fleet(root)
        try:
            instances = [fleet.add(Setup(kind, n, aggressive=aggressive)) for kind in kinds]
            start_and_wait(instances, timeout=120.0)
            time.sleep(1.5)  # past supervisord's default startsecs=1, so every child counts as RUNNING
            scanner = ChildScanner(inst.pid for inst in instances)
            tracks = []
            for inst in instances:
                plan = kill_plan(n, kills, per_slot, rng)
                tracks.append(_Track(inst, plan, RestartResult(inst.setup.kind, n, aggressive, planned=len(plan))))
            run_kills(tracks, scanner, timeout, budget, rng, progress)
            for inst in instances:
                inst.check_alive()
        finally:
            fleet.close()
        results.update((t.inst.setup.kind, t.result) for t in tracks)
    return [results[kind] for kind in KINDS]


def startup_times(root: Path, n: int, reps: int, timeout: float) -> dict[str, list[float]]:
    """Seconds from launch to all N children running, per kind, `reps` alternating repetitions."""
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for rep in range(reps):
        kinds = KINDS[rep % len(KINDS):] + KINDS[:rep % len(KINDS)]
        for kind in kinds:
            fleet = Fleet(root)
            try:
                inst = fleet.add(Setup(kind, n))
                start_and_wait([inst], timeout, lambda i, s: times[i.setup.kind].append(s))
            finally:
                fleet.close()
    return times
