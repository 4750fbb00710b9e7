"""`python -m bench.scale`: how fast the shipped rules scale the demo's todo_worker, in real time.

Each scenario runs a stack of its own (bench/scale_stack.py: the agent, Prometheus and Alertmanager with
the shipped files, on its own ports and in its own directory), all at once; the 600-todo surge runs on
the rules before issue 28 (OLD, bench/scale_baseline/) and on the working tree's (NEW), the square wave,
the ramp and the Poisson bursts (bench/scale_arrivals.py) on NEW. Every scenario is watched for the same
horizon from its t=0: the agent's /metrics and the store every half second, the remediation history.
Prints one table (rows: measures, columns: scenarios) and writes the figures as JSON (--out).
Exit 0 when every scenario ran, 1 when one failed (its column says why).
"""

from __future__ import annotations

import argparse
import bisect
import json
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scale_arrivals import arrivals, feed
from bench.scale_measure import CAPACITY, DRAIN_TARGET, STABILISATION, Sample, measure, store_counts, todo_waits
from bench.scale_stack import QUIET_SECONDS, Files, Stack, new_files, old_files, work_seconds

POLL_SECONDS = 0.5
HORIZON_MINUTES = 18.0
MAX_HORIZON_MINUTES = 120.0
STOP_SECONDS = 300.0  # after Ctrl-C, how long each scenario may take to stop its stack
SCENARIOS: dict[str, tuple[str, Callable[[], Files]]] = {
    "surge-old": ("surge", old_files),
    "surge-new": ("surge", new_files),
    "square-new": ("square", new_files),
    "ramp-new": ("ramp", new_files),
    "bursts-new": ("bursts", new_files),
}


def sample(stack: Stack, t: float) -> Sample:
    desired, running = stack.replicas()
    counts = store_counts(stack.db)
    return Sample(t, desired, running, counts.get("pending", 0), counts.get("in_progress", 0))


def drive(stack: Stack, offsets: list[float], horizon: float, stop: threading.Event,
          ) -> tuple[float, list[Sample], list[dict[str, Any]]]:
    """Feed the arrivals on time and sample until the horizon; (t0, samples, the remediation history read
    at the end: its entries carry their own times)."""
    t0 = time.time()
    samples: list[Sample] = []
    added, next_poll = 0, 0.0
    # Each pass feeds a batch or takes a sample (or both): bounded by their counts, with room to spare.
    for _ in range(len(offsets) + 4 * int(horizon / POLL_SECONDS) + 100):
        now = time.time() - t0
        if now >= horizon or stop.is_set():
            break
        due = bisect.bisect_right(offsets, now, lo=added)
        if due > added:
            feed(stack.db, due - added, f"todo at {now:.1f}s")
            added = due
        if now >= next_poll:
            samples.append(sample(stack, now))
            next_poll = max(next_poll + POLL_SECONDS, now)
        upcoming = min(offsets[added] if added < len(offsets) else horizon, next_poll, horizon)
        stop.wait(max(0.0, upcoming - (time.time() - t0)))
    else:
        raise RuntimeError("the sampling loop ran past its bound")
    return t0, samples, stack.history()


def timeline(samples: list[Sample]) -> list[list[float | int | None]]:
    """[t, desired, running, pending] whenever desired or running changed."""
    out: list[list[float | int | None]] = []
    last: tuple[int | None, int | None] | None = None
    for s in samples:
        if (s.desired, s.running) != last:
            out.append([round(s.t, 1), s.desired, s.running, s.pending])
            last = (s.desired, s.running)
    return out


def run_scenario(name: str, tmp: Path, horizon: float, seed: int, stop: threading.Event,
                 log: Callable[[str], None], quiet: float = QUIET_SECONDS) -> dict[str, Any]:
    """One scenario from start to stop; its figures, or `status` saying why there are none."""
    pattern, files_of = SCENARIOS[name]
    result: dict[str, Any] = {"scenario": name, "pattern": pattern, "status": "starting", "dir": str(tmp)}
    stack: Stack | None = None
    try:
        files = files_of()
        result.update(rules=files.label, remediation=files.remediation)
        offsets = arrivals(pattern, seed, horizon)
        result["arrivals"] = len(offsets)
        stack = Stack(tmp, files)
        stack.start()
        log(f"{name}: stack ready ({files.label} rules), settling")
        result["settled"] = stack.settle(quiet)
        desired, running = stack.replicas()
        result["at_t0"] = {"desired": desired, "running": running}
        log(f"{name}: {'settled' if result['settled'] else 'NOT settled'} at {running} replica(s), t=0")
        t0, samples, history = drive(stack, offsets, horizon, stop)
        seconds = work_seconds()
        result.update(measure(samples, history, t0, horizon, offsets[-1] if offsets else None, seconds))
        result["wait"] = todo_waits(stack.db, t0, t0 + horizon, seconds)
        result["timeline"] = timeline(samples)
        result["actions"] = [{k: e.get(k) for k in ("ts", "alertname", "action", "result", "target", "reason")}
                             | {"t": round(e["ts"] - t0, 1)} for e in history]
        result["status"] = "ok" if not stop.is_set() else "interrupted"
        log(f"{name}: done")
    except Exception as exc:  # one scenario's failure is reported in its column; the others go on
        result["status"] = f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        result["error"] = traceback.format_exc()
        log(f"{name}: {result['status']} (details in the JSON; files in {tmp})")
    finally:
        if stack is not None:
            stack.stop()
    return result


def _s(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("rules", lambda r: r.get("rules", "?")),
    ("replicas at t=0", lambda r: _s((r.get("at_t0") or {}).get("running"))
     + ("" if r.get("settled", True) else " (unsettled)")),
    ("todos arriving", lambda r: _s(r.get("arrivals"))),
    (f"backlog > {DRAIN_TARGET:.0f} s of work at (s)", lambda r: _s(r.get("need_at"), 1)),
    ("first scale-up (s after that)", lambda r: _s(r.get("first_scale_up"), 1) if r.get("scale_ups") else "never"),
    (f"desired >= {CAPACITY} at (s)", lambda r: _s(r.get("capacity_at"), 1)),
    ("peak desired (at s)", lambda r: f"{_s(r.get('peak_desired'))} ({_s(r.get('peak_at'), 1)})"),
    ("scale-ups / -downs executed", lambda r: f"{_s(r.get('scale_ups'))} / {_s(r.get('scale_downs'))}"),
    ("direction changes", lambda r: _s(r.get("direction_changes"))),
    ("shortest up -> down (s)", lambda r: _s(r.get("shortest_up_to_down"), 1)),
    (f"most direction changes in {STABILISATION / 60:.0f} min", lambda r: _s(r.get("most_turns_per_window"))),
    (f"scale-downs leaving > {DRAIN_TARGET:.0f} s of work", lambda r: _s(r.get("early_scale_downs"))),
    ("todo wait p50 (s)", lambda r: _s((r.get("wait") or {}).get("p50"), 1)),
    ("todo wait p95 (s)", lambda r: _s((r.get("wait") or {}).get("p95"), 1)),
    ("todos never claimed", lambda r: _s((r.get("wait") or {}).get("unclaimed"))),
    ("replica-minutes", lambda r: _s(r.get("replica_minutes"), 1)),
    ("drained at (s)", lambda r: _s(r.get("drained_at"), 1)),
    ("scale-down began (s after drain)", lambda r: _s(r.get("scale_down_after_drain"), 1)),
    ("status", lambda r: str(r.get("status"))[:40]),
]


def table(results: list[dict[str, Any]]) -> str:
    """Rows = measures, columns = scenarios, as aligned plain text."""
    cells = [["measure", *(r["scenario"] for r in results)]]
    cells += [[label, *(cell(r) for r in results)] for label, cell in ROWS]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def header(horizon: float, results: list[dict[str, Any]]) -> str:
    sources = sorted({r["wait"]["source"] for r in results if r.get("wait")})
    remediation = {r.get("rules"): r.get("remediation") for r in results if r.get("remediation")}
    return "\n".join([
        f"bench.scale: each scenario its own stack (agent + Prometheus + Alertmanager, shipped timings), "
        f"watched {horizon / 60:g} min from its t=0; times in seconds after t=0.",
        "Alertmanager's mute/active time intervals are dropped (they depend on the wall clock).",
        "t=0 comes once no alert with an action has been pending or firing for a minute (the idle state "
        "the rules lead to).",
        f"First scale-up counts from the first sample whose backlog the running replicas could not work off "
        f"within {DRAIN_TARGET:.0f} s (t=0 if never; negative: scaled ahead of the backlog).",
        *(f"todo_worker remediation ({label}): {value}" for label, value in remediation.items()),
        *(f"todo wait: {source}; a todo never claimed counts until the horizon (a lower bound)" for source in sources),
    ])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), metavar="SCENARIO",
                        help=f"run only this scenario (repeatable; default all: {', '.join(SCENARIOS)})")
    parser.add_argument("--horizon", type=float, default=HORIZON_MINUTES, metavar="MINUTES",
                        help=f"minutes each scenario is watched from its t=0 (default {HORIZON_MINUTES:g})")
    parser.add_argument("--seed", type=int, default=28, help="seed of the Poisson bursts (default 28)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-scale.json"), help="the JSON file to write")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's directory (logs, configs, db)")
    parser.add_argument("--quiet", type=float, default=QUIET_SECONDS, metavar="SECONDS",
                        help=f"seconds without an alert that asks to act before t=0 (default {QUIET_SECONDS:g}: "
                             "four rule evaluations at the shipped 15 s; less only to check the bench runs)")
    args = parser.parse_args(argv)
    if not 0 < args.horizon <= MAX_HORIZON_MINUTES:
        parser.error(f"--horizon must be more than 0 and at most {MAX_HORIZON_MINUTES:g} minutes, got {args.horizon:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = list(dict.fromkeys(args.only or SCENARIOS))
    horizon = args.horizon * 60
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    stop = threading.Event()
    results: dict[str, dict[str, Any]] = {}
    finished = {name: threading.Event() for name in names}

    def one(name: str) -> None:
        try:
            results[name] = run_scenario(name, root / name, horizon, args.seed, stop, log, args.quiet)
        finally:
            finished[name].set()

    log(f"{len(names)} scenario(s), {args.horizon:g} min each, in {root}")
    for name in names:
        threading.Thread(target=one, args=(name,), name=name, daemon=True).start()
    # Events, not Thread.join: a join interrupted by Ctrl-C may return early when called again.
    try:
        for event in finished.values():
            event.wait()
    except KeyboardInterrupt:
        log("interrupted: stopping every stack")
        stop.set()
        for event in finished.values():
            event.wait(STOP_SECONDS)
    ordered = [results.get(name, {"scenario": name, "status": "failed: no result"}) for name in names]
    print(header(horizon, ordered))
    print(table(ordered))
    doc = {"horizon_minutes": args.horizon, "seed": args.seed, "seconds": round(time.monotonic() - started, 1),
           "scenarios": ordered}
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    ok = all(r["status"] == "ok" for r in ordered)
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
