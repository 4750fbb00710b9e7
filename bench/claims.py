"""`python -m bench.claims [--quick]`: the todo store's claims beside pgqueuer, on one private PostgreSQL.

For each worker count N (1, 4, 8) and each system, on a fresh database of the same server: N worker
processes start, connect, and wait; then
- throughput: J jobs were added before "go"; the database's count of jobs left, polled every 20 ms, gives
  the rate from the first 10 % completed to the last job (steady state: the start-up, connections,
  pools and a first wait on a notification, is left out) and, beside it, J / (go -> all completed);
- add->claim latency: with the same workers idle, one producer adds M jobs one at a time at a steady rate;
  per job, claim time - add time on the database's clock -> p50/p95/p99.
The agent's workers loop claim -> finish(token) on `open_store(dsn)` as the demo worker does, polling every
`--agent-polls` seconds when idle (0.5 s is the demo worker's default; a second, tighter poll shows what
the latency costs); pgqueuer's workers run its own QueueManager as shipped. Jobs do no work. CPU per job
of the server (the postmaster and its backends) and of the workers shows what each claim costs.
Every job must be completed exactly once, by the workers' count and the database's; a round that
misses that is an error row. Prints one table, writes bench/results/<time>-claims-<mode>.json (and .md).
Exit 0 when every row has figures, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import queue
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from rich.console import Console
from rich.table import Table

from bench.claims_workers import Adder, Report, System, remaining_sql, setup, verify, worker_main
from bench.machine import describe, revision
from bench.pgserver import PgServer
from bench.report import finite
from bench.stats import percentile
from bench.waiting import hold, wait_for

RESULTS = Path(__file__).resolve().parent / "results"
DRAIN_POLL = 0.02  # seconds between two looks at the remaining count


@dataclass
class Params:
    mode: str
    workers: list[int]
    jobs: int  # preloaded for the throughput run
    latency_jobs: int  # added one at a time for the latency run
    rate: float  # jobs/s of the latency run
    polls: list[float]  # agent idle polls, one column each
    durable: bool = True
    time_limit: float = 1800.0  # seconds; rounds not started by then are errors


@dataclass
class Round:
    system: str
    n: int
    jobs: int
    throughput: float | None = None  # jobs/s
    throughput_s: float | None = None  # from go until all done
    first_tenth_s: float | None = None  # from go until 10 % done
    latency_ms: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)  # server/worker x throughput/latency
    empty_claims: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # added, completed (workers, distinct, database)
    problems: list[str] = field(default_factory=list)
    error: str = ""
    note: str = ""


def systems(params: Params) -> list[System]:
    out = [System(f"agent{round(p * 1000)}ms", f"agent, poll {p:g} s", "agent", p) for p in params.polls]
    return [*out, System("pgqueuer", "pgqueuer", "pgqueuer")]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system
    return out


def _server_pids(server: PgServer) -> list[int]:
    try:
        return [server.pid, *(c.pid for c in psutil.Process(server.pid).children())]
    except psutil.Error:
        return [server.pid]


def _spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two snapshots (a process that started in between counts from zero)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class Workers:
    """N spawned worker processes of one system; stopped by PID in close(), whatever happened."""

    def __init__(self, system: System, n: int, dsn: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready: Any = ctx.Queue()
        self.out: Any = ctx.Queue()
        self.go, self.stop = ctx.Event(), ctx.Event()
        self.procs = [ctx.Process(target=worker_main, args=(system, i, dsn, self.ready, self.go, self.stop,
                                                            self.out), name=f"bench-{system.key}-{i}", daemon=True)
                      for i in range(n)]
        self.reports: list[Report] = []

    def start(self, timeout: float) -> None:
        for p in self.procs:
            p.start()
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < len(self.procs):
            try:
                seen.add(self.ready.get(timeout=0.2))
            except queue.Empty:
                if problem := self.dead():
                    raise RuntimeError(f"{problem} before saying ready") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(seen)} of {len(self.procs)} workers ready after {timeout:g} s") from None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def dead(self) -> str:
        gone = [p for p in self.procs if p.pid is not None and not p.is_alive()]
        return f"{len(gone)} worker(s) exited early (exit codes {[p.exitcode for p in gone]})" if gone else ""

    def collect(self, timeout: float) -> list[Report]:
        """Stop them and read every report (before joining: a child exits once its report is read)."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        while len(self.reports) < len(self.procs):
            try:
                self.reports.append(self.out.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise RuntimeError(f"{len(self.reports)} of {len(self.procs)} workers reported within "
                                   f"{timeout:g} s") from None
        return self.reports

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            if p.pid is None:  # never started
                continue
            p.join(10)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
                p.join(5)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join(5)


def _drain(conn: psycopg.Connection[Any], sql: str, workers: Workers, timeout: float, what: str,
           mark: int = 0) -> tuple[float, int, float]:
    """Wait until the database shows no job left. Returns (the perf_counter time it first showed `mark`
    jobs or fewer left, how many were left then, the time it first showed none)."""
    state = {"left": -1}
    marked: list[tuple[float, int]] = []

    def done() -> float | None:
        row = conn.execute(sql).fetchone()
        now = time.perf_counter()
        state["left"] = left = int(row[0]) if row else -1
        if 0 <= left <= mark and not marked:
            marked.append((now, left))
        if left == 0:
            return now
        if problem := workers.dead():
            raise RuntimeError(f"{what}: {problem}, {left} job(s) left")
        return None

    ended = float(wait_for(done, timeout, DRAIN_POLL, lambda: f"{what} to drain ({state['left']} job(s) left)"))
    return (*marked[0], ended)


def run_round(server: PgServer, system: System, n: int, params: Params) -> Round:
    result = Round(system.key, n, params.jobs)
    dsn = server.database(f"{system.key}_n{n}")
    workers = Workers(system, n, dsn)
    adder: Adder | None = None
    added: list[int] = []
    try:
        setup(system, dsn)
        adder = Adder(system, dsn)
        added = adder.preload(params.jobs)
        workers.start(120.0)
        with psycopg.connect(dsn, autocommit=True) as conn:
            sql = remaining_sql(system)
            cpu = (_cpu(_server_pids(server)), _cpu(workers.pids()))
            began = time.perf_counter()
            workers.go.set()
            # The rate from the first 10 % done to the end: the start (connections, pools, a first wait
            # on a notification) is not the claim's throughput.
            marked, left, ended = _drain(conn, sql, workers, 60.0 + params.jobs / 20.0, "throughput run",
                                         mark=params.jobs * 9 // 10)
            cpu_after = (_cpu(_server_pids(server)), _cpu(workers.pids()))
            result.throughput_s = ended - began
            result.first_tenth_s = marked - began
            if ended - marked >= 5 * DRAIN_POLL:
                result.throughput = left / (ended - marked)
            else:
                result.note = (f"the last {left} jobs took {ended - marked:.3f} s: too fast to time at "
                                       f"{DRAIN_POLL * 1000:.0f} ms polls, raise --jobs")
            result.cpu_ms_per_job["server_throughput"] = 1000 * _spent(cpu[0], cpu_after[0]) / params.jobs
            result.cpu_ms_per_job["worker_throughput"] = 1000 * _spent(cpu[1], cpu_after[1]) / params.jobs

            cpu = (_cpu(_server_pids(server)), _cpu(workers.pids()))
            timed = []
            began = time.perf_counter()
            for i in range(params.latency_jobs):  # a steady rate: each add at its slot, never catching up
                delay = began + i / params.rate - time.perf_counter()
                if delay > 0:
                    hold(delay)
                timed.append(adder.add_one(f"timed {i}"))
            _drain(conn, sql, workers, 60.0, "latency run")
            cpu_after = (_cpu(_server_pids(server)), _cpu(workers.pids()))
            result.cpu_ms_per_job["server_latency"] = 1000 * _spent(cpu[0], cpu_after[0]) / params.latency_jobs
            result.cpu_ms_per_job["worker_latency"] = 1000 * _spent(cpu[1], cpu_after[1]) / params.latency_jobs
        added += timed
        reports = workers.collect(60.0)
        wanted = set(timed)
        ms = [1000 * s for r in reports for job, s in r.done if job in wanted]
        result.latency_ms = {"count": len(ms), **{f"p{q}": percentile(ms, q) for q in (50, 95, 99)},
                             "max": max(ms, default=math.nan)}
        result.empty_claims = sum(r.empty_claims for r in reports)
        result.counts, problems = verify(system, dsn, added, reports)
        result.problems += problems
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"{system.key} N={n} FAILED:\n{traceback.format_exc()}")
    finally:
        workers.close()
        if adder is not None:
            adder.close()
    return result


# --- the table --------------------------------------------------------------------------------------

MEASURES: list[tuple[str, str, str]] = [
    ("throughput", "claim throughput, 10 %->100 % of {jobs:,} jobs", "jobs/s"),
    ("throughput_all", "claim throughput, go->100 %", "jobs/s"),
    ("p50", "add->claim p50 (steady adds)", "ms"),
    ("p95", "add->claim p95", "ms"),
    ("p99", "add->claim p99", "ms"),
    ("server_throughput", "server CPU per job, throughput run", "ms"),
    ("worker_throughput", "worker CPU per job, throughput run", "ms"),
    ("server_latency", "server CPU per job, steady adds (incl. idle)", "ms"),
    ("worker_latency", "worker CPU per job, steady adds (incl. idle)", "ms"),
]


def _value(r: Round, measure: str) -> float | None:
    if r.error or r.problems:
        return None
    if measure == "throughput":
        return r.throughput
    if measure == "throughput_all":
        return r.jobs / r.throughput_s if r.throughput_s else None
    if measure in r.latency_ms:
        return r.latency_ms[measure]
    return r.cpu_ms_per_job.get(measure)


def rows(params: Params, rounds: list[Round]) -> list[dict[str, Any]]:
    by = {(r.system, r.n): r for r in rounds}
    out = []
    for measure, label, unit in MEASURES:
        for n in params.workers:
            values = {s.key: (_value(by[s.key, n], measure) if (s.key, n) in by else None) for s in systems(params)}
            out.append({"id": f"{measure}.n{n}", "label": label.format(jobs=params.jobs), "n": n,
                        "unit": unit, "values": values})
    return out


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "error"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _cells(params: Params, row: dict[str, Any]) -> list[str]:
    keys = [s.key for s in systems(params)]
    agent, peer = row["values"][keys[0]], row["values"]["pgqueuer"]
    ratio = f"{agent / peer:.3g}x" if agent is not None and peer else "-"
    return [row["label"], str(row["n"]), row["unit"], *(_fmt(row["values"][k]) for k in keys), ratio]


def headers(params: Params) -> list[str]:
    return ["measure", "N", "unit", *(s.label for s in systems(params)), f"{systems(params)[0].label} / pgqueuer"]


def markdown(params: Params, table_rows: list[dict[str, Any]]) -> str:
    heads = headers(params)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(_cells(params, r)) + " |" for r in table_rows]
    return "\n".join(lines)


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['kernel']}, {m['python']}; "
            f"agent {m['agent']} ({m['agent_revision']}); PostgreSQL {m['postgresql']} "
            f"({'fsync on' if m['durable'] else 'fsync off'}), pgqueuer {m['pgqueuer']}, psycopg {m['psycopg']}; "
            f"load average {m['load_start']} at the start")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Params]:
    parser = argparse.ArgumentParser(prog="python -m bench.claims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 40 timed at 40/s: a minute or so")
    parser.add_argument("--workers", help="comma-separated worker counts (default: 1,4,8)")
    parser.add_argument("--jobs", type=int, help="jobs preloaded for the throughput run (default 5000; quick 1000)")
    parser.add_argument("--latency-jobs", type=int, help="jobs added one by one (default 400; quick 40)")
    parser.add_argument("--rate", type=float, help="jobs/s of the steady adds (default 50; quick 40)")
    parser.add_argument("--agent-polls", default="0.5,0.05",
                        help="agent idle polls in seconds, one column each (default: %(default)s)")
    parser.add_argument("--no-fsync", action="store_true", help="run PostgreSQL with fsync=off (not the default)")
    parser.add_argument("--time-limit", type=float, help="seconds; rounds not started by then fail (default 1800)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON and Markdown go")
    args = parser.parse_args(argv)
    quick = args.quick
    params = Params(
        "quick" if quick else "full", [int(n) for n in (args.workers or "1,4,8").split(",")],
        args.jobs or (1000 if quick else 5000), args.latency_jobs or (40 if quick else 400),
        args.rate or (40.0 if quick else 50.0), [float(p) for p in args.agent_polls.split(",")],
        not args.no_fsync, args.time_limit or (600.0 if quick else 1800.0))
    if min(params.workers) < 1 or params.jobs < 1 or params.latency_jobs < 1 or params.rate <= 0 \
            or not params.polls or min(params.polls) <= 0:
        parser.error("worker counts, jobs, latency jobs, rate and polls must be positive")
    return args, params


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks: workers and server stopped by PID


def main(argv: list[str] | None = None) -> int:
    import pgqueuer

    import agent

    args, params = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.time()
    machine: dict[str, Any] = {k: v for k, v in describe({}).items() if k not in ("supervisor", "circus")}
    machine.update(agent=agent.__version__, pgqueuer=pgqueuer.__version__, psycopg=psycopg.__version__,
                   durable=params.durable, load_start=" ".join(f"{x:.2f}" for x in os.getloadavg()))
    rounds: list[Round] = []
    server = PgServer(durable=params.durable)
    try:
        machine["postgresql"] = server.version()
        log(machine_line(machine))
        for n in params.workers:
            for system in systems(params):
                if time.time() - started > params.time_limit:
                    rounds.append(Round(system.key, n, params.jobs,
                                        error=f"time limit {params.time_limit:g} s reached"))
                    continue
                log(f"{system.label}, N={n}: {params.jobs} jobs preloaded, then {params.latency_jobs} at "
                    f"{params.rate:g}/s")
                r = run_round(server, system, n, params)
                rounds.append(r)
                log(f"  {r.throughput or 0:,.0f} jobs/s, add->claim p50 {r.latency_ms.get('p50', math.nan):.1f} ms"
                    f"{'; ' + r.error if r.error else ''}{'; ' + '; '.join(r.problems) if r.problems else ''}")
    finally:
        server.stop()
    elapsed = time.time() - started
    machine["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    revision_end = revision()
    command = "python -m bench.claims " + " ".join(sys.argv[1:] if argv is None else argv)
    table_rows = rows(params, rounds)
    title = f"Claims: agent vs pgqueuer ({params.mode}, {elapsed / 60:.1f} min) on {machine_line(machine)}"
    table = Table(*headers(params), title=title, title_justify="left")
    for row in table_rows:
        cells = _cells(params, row)
        table.add_row(*cells, style="red" if "error" in cells else None)
    Console(width=200).print(table)
    changed = "" if revision_end == machine["agent_revision"] else f" (agent changed to {revision_end} during the run)"
    notes = [f"{r.system} N={r.n}: {'; '.join(filter(None, [r.error, *r.problems, r.note]))}" for r in rounds
             if r.error or r.problems or r.note]
    notes += [f"{r.system} N={r.n}: {r.empty_claims} claim(s) found nothing (idle polls)" for r in rounds
              if r.empty_claims]
    for line in notes:
        print(f"  - {line}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    path = args.out_dir / f"{stamp}-claims-{params.mode}.json"
    document = {"schema": 1, "command": command.strip(), "mode": params.mode, "started": stamp,
                "elapsed_s": elapsed, "machine": machine, "agent_revision_end": revision_end,
                "params": asdict(params), "systems": [asdict(s) for s in systems(params)],
                "rows": table_rows, "rounds": [asdict(r) for r in rounds]}
    path.write_text(json.dumps(finite(document), indent=1))
    md = [f"Machine: {machine_line(machine)}; load average {machine['load_end']} at the end",
          f"Command: `{command.strip()}` ({elapsed / 60:.1f} min){changed}", "", markdown(params, table_rows), "",
          *[f"- {line}" for line in notes]]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"results: {path}")
    return 0 if all(v is not None for row in table_rows for v in row["values"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
