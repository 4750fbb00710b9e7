"""Lean at N components: /metrics latency, body, series and the agent's RSS, beside supervisord's RSS.

`python -m bench.lean [--components 50,500,1000] [--scrapes 200] [--before DIR]`

For each N, in one run: the agent of this checkout ("after") and, with `--before DIR`, the agent of
another checkout of the same project (a git worktree at an older commit, run with PYTHONPATH=DIR and
the same interpreter and dependencies), each supervising N components of one `sleep` each with
default settings (no probes); and supervisord with the same N programs. Per agent: start-up, RSS once
a resource sample covered every component, then `scrapes` sequential scrapes of /metrics 20 ms apart
(as `Accept-Encoding: identity`, then as many as Prometheus sends them, `Accept-Encoding: gzip`),
latency to the last byte, bytes on the wire, series (all, and those of one component), the agent's
CPU per scrape, and its peak RSS over the scrapes. supervisord's RSS is taken once its N children run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.agent_only import wait_for_sample
from bench.configs import Setup
from bench.launch import Fleet, Instance, start_and_wait
from bench.stats import summary_ms

RESULTS = Path(__file__).resolve().parent / "results"
GAP = 0.02  # between two scrapes


@dataclass
class Scrapes:
    encoding: str
    latency_ms: dict[str, float] = field(default_factory=dict)
    wire_bytes: int = 0
    cpu_per_scrape_ms: float = 0.0


@dataclass
class AgentRow:
    variant: str
    components: int
    startup_s: float = 0.0
    rss_idle: int = 0
    rss_after: int = 0
    series: int = 0
    series_per_component: int = 0
    body_bytes: int = 0
    scrapes: list[Scrapes] = field(default_factory=list)


def _scrape(client: httpx.Client, url: str, proc: psutil.Process, encoding: str, count: int,
            row: AgentRow) -> Scrapes:
    out = Scrapes(encoding)
    latencies = []
    before = proc.cpu_times()
    for _ in range(count):
        began = time.perf_counter()
        with client.stream("GET", url, headers={"Accept-Encoding": encoding}) as response:
            response.raise_for_status()
            body = response.read()
        latencies.append(time.perf_counter() - began)
        out.wire_bytes = response.num_bytes_downloaded
        row.rss_after = max(row.rss_after, int(proc.memory_info().rss))
        time.sleep(GAP)
    after = proc.cpu_times()
    out.cpu_per_scrape_ms = 1000.0 * (after.user + after.system - before.user - before.system) / count
    out.latency_ms = summary_ms(latencies)
    if encoding == "identity":
        text = body.decode()
        row.body_bytes = len(body)
        samples = [line for line in text.splitlines() if line and not line.startswith("#")]
        row.series = len(samples)
        row.series_per_component = sum(1 for line in samples if 'component="c0"' in line)
    return out


def measure_agent(root: Path, variant: str, source: Path | None, n: int, scrapes: int) -> AgentRow:
    """Start one agent on N components, wait for a resource sample to cover them, scrape it."""
    row = AgentRow(variant, n)
    fleet = Fleet(root)
    try:
        inst = fleet.add(Setup("agent", n, source=str(source) if source else None))
        start_and_wait([inst], timeout=300.0, on_each=lambda i, s: setattr(row, "startup_s", s))
        url = inst.url + "/metrics"
        proc = psutil.Process(inst.pid)
        with httpx.Client(timeout=90.0) as client:
            wait_for_sample(client, inst, f"c{n - 1}", 120.0, f"{variant}: ")
            row.rss_idle = int(proc.memory_info().rss)
            row.scrapes = [_scrape(client, url, proc, enc, scrapes, row) for enc in ("identity", "gzip")]
        return row
    finally:
        fleet.close()


def measure_supervisord(root: Path, n: int) -> int:
    """supervisord's RSS once its N programs run (the peak of a few samples over a second)."""
    fleet = Fleet(root)
    try:
        inst: Instance = fleet.add(Setup("supervisord", n))
        start_and_wait([inst], timeout=300.0)
        proc = psutil.Process(inst.pid)
        peak = 0
        for _ in range(10):
            peak = max(peak, int(proc.memory_info().rss))
            time.sleep(0.1)
        return peak
    finally:
        fleet.close()


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f}"


def table(rows: list[AgentRow], supervisord: dict[int, int]) -> str:
    head = ("| N | agent | scrape p50 / p99 ms (identity) | scrape p50 / p99 ms (gzip) | body KB | gzip KB "
            "| series | series of one component | CPU ms/scrape | RSS idle MB | RSS after scrapes MB "
            "| supervisord RSS MB |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        plain, gz = row.scrapes
        out.append(
            f"| {row.components:,} | {row.variant} | {plain.latency_ms['p50']:.1f} / {plain.latency_ms['p99']:.1f} "
            f"| {gz.latency_ms['p50']:.1f} / {gz.latency_ms['p99']:.1f} | {row.body_bytes / 1000:,.0f} "
            f"| {gz.wire_bytes / 1000:,.0f} | {row.series:,} | {row.series_per_component} "
            f"| {plain.cpu_per_scrape_ms:.1f} | {_mb(row.rss_idle)} | {_mb(row.rss_after)} "
            f"| {_mb(supervisord[row.components])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lean", description=__doc__.splitlines()[0])
    parser.add_argument("--components", default="50,500,1000", help="comma-separated N (default: %(default)s)")
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes per encoding (default: %(default)s)")
    parser.add_argument("--before", type=Path, help="another checkout of the agent to run beside this one")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON and Markdown go")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.components.split(",")]
    if args.before is not None and not (args.before / "agent" / "__init__.py").exists():
        parser.error(f"--before {args.before}: no agent package there")
    rows: list[AgentRow] = []
    supervisord: dict[int, int] = {}
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-lean-") as tmp:
        root = Path(tmp)
        for n in sizes:
            if args.before is not None:
                rows.append(measure_agent(root, "before", args.before.resolve(), n, args.scrapes))
            rows.append(measure_agent(root, "after", None, n, args.scrapes))
            supervisord[n] = measure_supervisord(root, n)
    print(table(rows, supervisord), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(began))
    document: dict[str, Any] = {"started": began, "seconds": time.time() - began, "sizes": sizes,
                                "before": str(args.before) if args.before else None,
                                "agents": [asdict(r) for r in rows], "supervisord_rss": supervisord}
    (args.out_dir / f"{stamp}-lean.json").write_text(json.dumps(document, indent=1))
    (args.out_dir / f"{stamp}-lean.md").write_text(table(rows, supervisord) + "\n")
    print(f"({time.time() - began:.0f} s; bench/results/{stamp}-lean.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
