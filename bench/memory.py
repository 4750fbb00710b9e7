"""`python -m bench.memory --components 50,1000`: what the agent's resident memory is made of.

1. Import cost: the VmRSS of a fresh interpreter after importing one module, minus a bare interpreter's
   (each row in a process of its own; dependencies they share count in each row, so rows do not add up);
   and for the modules the daemon imports only when a config uses them, what they add over what
   `agent run` imports anyway (`agent.cli.main` and `agent.daemon.app`): their own share.
2. The running agent, as bench/configs.py starts it with the settings a user gets by default: N
   components of `sleep`, 1 replica, no probes. Its RSS once every child runs and one resource sample
   has passed (idle), and after `--scrapes` scrapes of /metrics; its thread count; supervisord with the
   same N programs, in the same run, for scale.

RSS is in MiB (2^20 bytes), read from /proc/PID/status. The agent's guardian helper (a `sh`) is not in
the agent's figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.configs import Setup
from bench.launch import Fleet, Instance, start_and_wait

MIB = 1024 * 1024
# One row per module the daemon may import: (label, statements). httpx is imported after `agent`, whose
# __init__ keeps httpx's command-line client (rich, pygments) out, as in the agent.
DAEMON = "import agent.cli.main, agent.daemon.app"
REQUIRED_STACK = "the required stack, no agent code"
OPTIONAL = ("httpx", "prometheus_client", "opentelemetry SDK", "psutil", "bcrypt", "sqlite3", "mcp client")
IMPORTS: tuple[tuple[str, str], ...] = (
    ("uvloop", "import uvloop"),
    ("starlette + uvicorn", "import starlette.applications, starlette.routing, uvicorn"),
    ("httpx", "import agent, httpx"),
    ("prometheus_client", "import prometheus_client"),
    ("opentelemetry SDK", "import opentelemetry.sdk.trace"),
    ("pydantic", "import pydantic"),
    ("psutil", "import psutil"),
    ("PyYAML", "import yaml"),
    ("bcrypt", "import bcrypt"),
    ("sqlite3", "import sqlite3"),
    ("mcp client", "import agent.observe.mcp_probe"),
    # What the required dependency set costs before any agent code: the event loop, the HTTP server stack,
    # pydantic with one model built (its schema machinery loads with the first), PyYAML and psutil.
    (REQUIRED_STACK, "import asyncio, uvloop, starlette.applications, uvicorn, yaml, psutil, pydantic\n"
                     "class M(pydantic.BaseModel):\n    x: int = 0"),
    ("agent.daemon.app (the daemon)", "import agent.daemon.app"),
    ("agent.cli.main + agent.daemon.app (`agent run`)", "import agent.cli.main, agent.daemon.app"),
)
_PROBE = """
import sys, time
started = time.perf_counter()
exec(sys.argv[1])
took = time.perf_counter() - started
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
print(rss * 1024, took, len(sys.modules))
"""
SETTLE = 6.0  # after every child runs: past the first resource sample (every 5 s by default)


@dataclass
class ImportCost:
    label: str
    statement: str
    rss: int  # over a bare interpreter
    seconds: float
    modules: int  # over a bare interpreter
    over_daemon: int | None = None  # over `agent run`'s own imports (OPTIONAL modules only)


@dataclass
class Resident:
    kind: str
    n: int
    idle: int
    scraped: int | None = None  # after the scrapes (agent only)
    peak: int = 0  # VmHWM
    threads: int = 0
    scrape_ms: float | None = None  # median /metrics time


def _probe(statement: str) -> tuple[int, float, int]:
    samples = []
    for _ in range(3):  # the smallest of three: RSS varies a little with ASLR and page sharing
        done = subprocess.run([sys.executable, "-c", _PROBE, statement], capture_output=True, text=True,
                              timeout=120, check=True)
        rss, took, modules = done.stdout.split()
        samples.append((int(rss), float(took), int(modules)))
    return min(s[0] for s in samples), min(s[1] for s in samples), samples[0][2]


def import_costs() -> tuple[int, list[ImportCost]]:
    """A bare interpreter's RSS, and what each import adds to it."""
    bare, _, bare_modules = _probe("pass")
    daemon = _probe(DAEMON)[0]
    rows = []
    for label, statement in IMPORTS:
        rss, took, modules = _probe(statement)
        row = ImportCost(label, statement, rss - bare, took, modules - bare_modules)
        if label in OPTIONAL:
            row.over_daemon = _probe(f"{DAEMON}; {statement}")[0] - daemon
        rows.append(row)
    return bare, rows


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out[key] = int(value)
    return out


def _scrape(inst: Instance, count: int) -> float:
    """`count` scrapes of /metrics one after another; the median in ms."""
    took = []
    for _ in range(count):
        started = time.perf_counter()
        with urllib.request.urlopen(inst.url + "/metrics", timeout=60) as response:
            response.read()
        took.append(time.perf_counter() - started)
    return statistics.median(took) * 1000


def resident(root: Path, kind: str, n: int, scrapes: int, settle: float) -> Resident:
    """Start one supervisor with N children, measure it idle (and after the scrapes), stop it."""
    fleet = Fleet(root)
    inst = fleet.add(Setup(kind, n))  # type: ignore[arg-type]
    try:
        start_and_wait([inst], timeout=300.0)
        time.sleep(settle)  # a fixed window to measure over, not a wait for a condition
        inst.check_alive()
        idle = _status(inst.pid)
        row = Resident(kind, n, idle["VmRSS"], threads=idle["Threads"])
        if kind == "agent":
            row.scrape_ms = _scrape(inst, scrapes)
            after = _status(inst.pid)
            row.scraped, row.threads = after["VmRSS"], max(row.threads, after["Threads"])
        row.peak = _status(inst.pid)["VmHWM"]
        return row
    finally:
        fleet.close()


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def print_report(bare: int, costs: list[ImportCost], rows: list[Resident], scrapes: int) -> None:
    if costs:
        print(f"Import cost over a bare interpreter ({bare / MIB:.1f} MiB), each alone in a fresh process:")
        width = max(len(c.label) for c in costs)
        print(f"  {'module':<{width}}  {'RSS MiB':>8}  {'over agent run':>14}  {'modules':>7}  {'import ms':>9}")
        for c in costs:
            over = "-" if c.over_daemon is None else f"{c.over_daemon / MIB:.1f}"
            print(f"  {c.label:<{width}}  {c.rss / MIB:>8.1f}  {over:>14}  {c.modules:>7}  {c.seconds * 1000:>9.0f}")
        print()
    print(f"Resident memory (MiB) with N `sleep` children, default settings, no probes; "
          f"'scraped' is after {scrapes} scrapes of /metrics:")
    print(f"  {'supervisor':<12} {'N':>5}  {'idle':>6}  {'scraped':>7}  {'peak':>6}  {'threads':>7}  {'scrape ms':>9}")
    for r in rows:
        ms = "-" if r.scrape_ms is None else f"{r.scrape_ms:.0f}"
        print(f"  {r.kind:<12} {r.n:>5}  {_mib(r.idle):>6}  {_mib(r.scraped):>7}  {_mib(r.peak):>6}  "
              f"{r.threads:>7}  {ms:>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--components", default="50,1000", help="N, comma-separated (default 50,1000)")
    parser.add_argument("--scrapes", type=int, default=60, help="scrapes of /metrics per agent (default 60)")
    parser.add_argument("--settle", type=float, default=SETTLE, help="seconds after start-up before measuring")
    parser.add_argument("--no-imports", action="store_true", help="skip the import costs")
    parser.add_argument("--no-peers", action="store_true", help="skip supervisord")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.components.split(",") if x.strip()]
    bare, costs = (0, []) if args.no_imports else import_costs()
    rows: list[Resident] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for n in sizes:
            for kind in ("agent",) if args.no_peers else ("agent", "supervisord"):
                print(f"[memory] {kind} N={n}", file=sys.stderr, flush=True)
                rows.append(resident(Path(tmp), kind, n, args.scrapes, args.settle))
    print_report(bare, costs, rows, args.scrapes)
    if args.json is not None:
        with contextlib.suppress(OSError):
            args.json.write_text(json.dumps({"bare": bare, "imports": [asdict(c) for c in costs],
                                             "resident": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
