"""`python -m bench.backtest`: how long `agent backtest` takes over a week at a 15 s evaluation interval.

Writes a synthetic history (default: 7 days, 20 components, 1-minute samples) as OpenMetrics,
backfills it into a fresh TSDB with promtool, serves it with a real Prometheus on 127.0.0.1, and
times `agent backtest --json` over the whole window with the shipped rules and Alertmanager config
(only the backtest is timed, not the backfill). Each component has an outage on one day; the first
half are workers with a daily backlog; every fifth leaks memory on one day.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from bench.tsdb import OpenMetrics, PrometheusServer, backfill, every

MIN, HOUR, DAY = 60.0, 3600.0, 86400.0
MiB = 1024 * 1024


def write_history(path: Path, start: float, days: int, components: int, step: float) -> int:
    """The synthetic history; returns the number of samples written."""
    end = start + days * DAY
    names = [f"c{i:02d}" for i in range(components)]
    workers = names[: components // 2]
    count = 0

    def down(i: int) -> tuple[float, float]:
        at = start + (i % days) * DAY + (i % 24) * HOUR
        return at, at + 10 * MIN

    def leak(i: int) -> float:
        return start + (i % days) * DAY + 10 * HOUR

    with open(path, "w") as f:
        om = OpenMetrics(f)

        def series(name: str, labels: dict[str, str], value: object) -> None:
            nonlocal count
            samples = list(every(start, end, step, value))  # type: ignore[arg-type]
            count += len(samples)
            om.series(name, labels, samples)

        for i, c in enumerate(names):
            lo, hi = down(i)
            series("orchestrator_component_up", {"component": c}, lambda t, lo=lo, hi=hi: 0 if lo <= t < hi else 1)
        for metric in ("orchestrator_component_desired_replicas", "orchestrator_component_replicas",
                       "orchestrator_component_min_replicas"):
            for c in names:
                series(metric, {"component": c}, lambda t: 1)
        for c in names:
            series("orchestrator_component_max_replicas", {"component": c}, lambda t, c=c: 8 if c in workers else 1)
        for c in names:  # as the agent writes it: the current state only, and no manual_stop while unset
            series("orchestrator_component_state", {"component": c, "state": "running"}, lambda t: 1)
        for c in names:
            series("orchestrator_component_memory_limit_bytes", {"component": c}, lambda t: 1024 * MiB)
        for i, c in enumerate(names):
            t0 = leak(i) if i % 5 == 0 else math.inf

            def rss(t: float, t0: float = t0) -> float:
                return 880 * MiB + (0.2 * MiB * (t - t0) / MIN if t0 <= t < t0 + 11 * HOUR else 0)
            series("orchestrator_component_resident_memory_bytes", {"component": c}, rss)
        for c in workers:
            series("orchestrator_component_capability", {"component": c, "capability": f"cap_{c}"}, lambda t: 1)
        for k, c in enumerate(workers):
            def pending(t: float, k: int = k) -> float:
                hour = (t - start) % DAY / HOUR
                return round(40 + 35 * math.sin((hour - 9 + k / 3) / 8 * math.pi)) if 9 <= hour < 17 else 0
            series("orchestrator_todo_backlog", {"status": "pending", "priority": "normal", "capability": f"cap_{c}"},
                   pending)
        series("orchestrator_todo_source_up", {"source": "todos"}, lambda t: 1)
        om.close()
    return count


def config(components: int) -> dict[str, object]:
    names = [f"c{i:02d}" for i in range(components)]
    workers = set(names[: components // 2])
    return {"agent": {"node": "bench"}, "components": {
        c: {"command": [sys.executable, "-c", "pass"], "capabilities": [f"cap_{c}"] if c in workers else [],
            "replicas": {"min": 1, "max": 8 if c in workers else 1}} for c in names}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--components", type=int, default=20)
    ap.add_argument("--sample-step", type=float, default=60.0, help="seconds between synthetic samples")
    ap.add_argument("--evaluation-interval", default="15s")
    ap.add_argument("--runs", type=int, default=3, help="timed backtests (the best and all are printed)")
    args = ap.parse_args(argv)
    end_day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    start = (end_day - timedelta(days=args.days)).timestamp()
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp_name:
        tmp = Path(tmp_name)
        began = time.perf_counter()
        samples = write_history(tmp / "history.om", start, args.days, args.components, args.sample_step)
        written = time.perf_counter() - began
        backfill(tmp / "history.om", tmp / "data")
        filled = time.perf_counter() - began - written
        (tmp / "history.om").unlink()
        (tmp / "agent.yml").write_text(yaml.safe_dump(config(args.components)))
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        window = [datetime.fromtimestamp(start, UTC).strftime(fmt),
                  datetime.fromtimestamp(start + args.days * DAY, UTC).strftime(fmt)]
        print(f"history: {samples} samples, {args.components} components, {args.days} days every "
              f"{args.sample_step:g}s; written in {written:.1f}s, backfilled in {filled:.1f}s", flush=True)
        times = []
        with PrometheusServer(tmp / "data", tmp) as prom:
            for _ in range(args.runs):
                cmd = [sys.executable, "-m", "agent", "backtest", "--prometheus", prom.url, "--start", window[0],
                       "--end", window[1], "-c", str(tmp / "agent.yml"), "--evaluation-interval",
                       args.evaluation_interval, "--json"]
                t0 = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                times.append(time.perf_counter() - t0)
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
                doc = json.loads(done.stdout)["policies"][0]
                executed = sum(s["results"].get("executed", 0) for s in doc["summary"])
                print(f"backtest {window[0]} .. {window[1]} at {args.evaluation_interval}: {times[-1]:.2f}s wall "
                      f"({doc['seconds']:.2f}s in the backtest itself); {doc['deliveries']} deliveries, "
                      f"{len(doc['timeline'])} timeline rows, {executed} executed", flush=True)
    print(f"best {min(times):.2f}s of {len(times)} runs: {', '.join(f'{t:.2f}' for t in times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
