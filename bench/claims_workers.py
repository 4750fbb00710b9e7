"""The two systems of bench/claims.py: how each is set up, fed, worked, counted and checked.

agent: worker processes that each open the todo store (`open_store(dsn)`, the PostgresStore and its
pool) and loop claim -> finish(token), as agent/demo/demo_worker.py does; an idle worker polls again after
`poll` seconds. pgqueuer: worker processes that each run pgqueuer's own QueueManager (psycopg async
driver, its defaults: batches of 10, LISTEN/NOTIFY with a 30 s dequeue timeout) with one entrypoint, fed
by its own `Queries.enqueue`. Jobs do no work in either.

Latency is measured on the database's clock for both: the agent's todo carries created_at and claimed_at
(clock_timestamp() at the add and at the claim); pgqueuer's job row carries created (NOW() of the
enqueue) and updated (NOW() of the dequeue that picked it). A worker reports every job it completed
with that latency, so the parent can count each job exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import psycopg

ENTRYPOINT = "bench"
CAPABILITIES = ["todo_processing"]  # the demo worker's default; the todos need none
CHUNK = 1000  # rows per insert when preloading


@dataclass(frozen=True)
class System:
    key: str  # database names and JSON keys
    label: str  # table column
    kind: str  # "agent" | "pgqueuer"
    poll: float = 0.0  # agent: seconds an idle worker waits before claiming again


@dataclass
class Report:
    """What one worker process did, sent back to the parent once it stops."""

    index: int
    done: list[tuple[int, float]] = field(default_factory=list)  # (job id, add->claim seconds on the DB clock)
    empty_claims: int = 0  # agent: claims that found nothing (each followed by a poll wait)
    rejected: int = 0  # agent: finishes refused (lease lost); must stay 0
    error: str = ""


# --- setup, feeding and counting (the parent) -------------------------------------------------------

def setup(system: System, dsn: str) -> None:
    """Create the system's schema in a fresh database."""
    if system.kind == "agent":
        from agent.todos.store import open_store

        with open_store(dsn) as store:
            store.counters()  # opens the pool and runs the idempotent migration
        return
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    async def install() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            await Queries(PsycopgDriver(conn)).install()
        finally:
            await conn.close()

    asyncio.run(install())


class Adder:
    """Adds jobs one transaction at a time (`add_one`) or in chunks (`preload`); ids returned."""

    def __init__(self, system: System, dsn: str) -> None:
        self.kind = system.kind
        if self.kind == "agent":
            from agent.todos.store import open_store

            self.store = open_store(dsn)
        else:
            from pgqueuer.db import SyncPsycopgDriver
            from pgqueuer.queries import SyncQueries

            self.conn = psycopg.connect(dsn, autocommit=True)
            self.queries = SyncQueries(SyncPsycopgDriver(self.conn))

    def add_one(self, title: str) -> int:
        if self.kind == "agent":
            return self.store.add(title)
        return int(self.queries.enqueue(ENTRYPOINT, title.encode())[0])

    def preload(self, count: int) -> list[int]:
        ids: list[int] = []
        for start in range(0, count, CHUNK):
            titles = [f"job {i}" for i in range(start, min(count, start + CHUNK))]
            if self.kind == "agent":
                ids += self.store.add_many(titles)
            else:
                ids += [int(i) for i in self.queries.enqueue([ENTRYPOINT] * len(titles),
                                                             [t.encode() for t in titles], [0] * len(titles))]
        return ids

    def close(self) -> None:
        if self.kind == "agent":
            self.store.close()
        else:
            self.conn.close()


def remaining_sql(system: System) -> str:
    """Jobs not yet completed (as the database sees them: pgqueuer deletes a job when its completion is
    logged, which its workers buffer up to 0.1 s or 10 jobs)."""
    if system.kind == "agent":
        return "SELECT count(*) FROM todos WHERE status IN ('pending', 'in_progress')"
    return "SELECT count(*) FROM pgqueuer"


def verify(system: System, dsn: str, added: list[int], reports: list[Report]) -> tuple[dict[str, int], list[str]]:
    """Every added job completed exactly once, by the workers' count and by the database's: the counts, and
    what is wrong."""
    problems = []
    done = [job for r in reports for job, _ in r.done]
    if len(done) != len(added) or set(done) != set(added):
        problems.append(f"workers completed {len(done)} job(s), {len(set(done))} distinct, of {len(added)} added"
                        f" ({len(set(added) - set(done))} never, {len(done) - len(set(done))} twice)")
    for r in reports:
        if r.error:
            problems.append(f"worker {r.index}: {r.error.strip().splitlines()[-1]}")
        if r.rejected:
            problems.append(f"worker {r.index}: {r.rejected} finish(es) rejected")
    with psycopg.connect(dsn, autocommit=True) as conn:
        if system.kind == "agent":
            rows: dict[str, int] = dict(conn.execute("SELECT status, count(*) FROM todos GROUP BY status").fetchall())
            counted: dict[str, int] = dict(conn.execute("SELECT name, value FROM todo_counters").fetchall())
            in_db = rows.get("done", 0)
            if rows != {"done": len(added)}:
                problems.append(f"todos by status {rows}, expected {{'done': {len(added)}}}")
            if any(counted.values()):
                problems.append(f"store counters {counted} (leases expired or completions rejected)")
        else:
            left = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
            logged = conn.execute("SELECT count(*), count(DISTINCT job_id) FROM pgqueuer_log"
                                  " WHERE status = 'successful'").fetchone()
            if left and left[0]:
                problems.append(f"{left[0]} job(s) still in the queue table")
            in_db = logged[0] if logged else 0
            if logged != (len(added), len(added)):
                problems.append(f"pgqueuer_log has {logged} successful (rows, distinct jobs), expected {len(added)}")
    counts = {"added": len(added), "completed_by_workers": len(done), "distinct": len(set(done)),
              "completed_in_db": int(in_db)}
    return counts, problems


# --- the worker processes (spawned) --------------------------------------------------------------------

def worker_main(system: System, index: int, dsn: str, ready: Queue[Any], go: Event, stop: Event,
                out: Queue[Any]) -> None:
    """Entry point of one worker process: set up, say ready, wait for go, work until stop, report."""
    report = Report(index)
    try:
        if system.kind == "agent":
            _agent(system, index, dsn, ready, go, stop, report)
        else:
            asyncio.run(_pgqueuer(index, dsn, ready, go, stop, report))
    except BaseException:
        report.error = traceback.format_exc()
        ready.put(index)  # the parent is not left waiting for it; the report says what happened
    out.put(report)


def _agent(system: System, index: int, dsn: str, ready: Queue[Any], go: Event, stop: Event,
           report: Report) -> None:
    from agent.todos.base import Finish
    from agent.todos.store import open_store

    worker = f"bench.{index}"
    with open_store(dsn) as store:
        store.counters()  # connect and migrate before the clock starts
        ready.put(index)
        go.wait()
        while not stop.is_set():
            todo = store.claim(worker, CAPABILITIES)
            if todo is None:
                report.empty_claims += 1
                stop.wait(system.poll)
                continue
            assert todo.claim_token is not None and todo.claimed_at is not None
            if store.finish(todo.id, "done", todo.claim_token) is Finish.OK:
                report.done.append((todo.id, todo.claimed_at - todo.created_at))
            else:
                report.rejected += 1


async def _pgqueuer(index: int, dsn: str, ready: Queue[Any], go: Event, stop: Event, report: Report) -> None:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        qm = QueueManager(Queries(PsycopgDriver(conn)))

        @qm.entrypoint(ENTRYPOINT)
        async def handle(job: Job) -> None:
            report.done.append((int(job.id), (job.updated - job.created).total_seconds()))

        await qm.queries.has_table("pgqueuer")  # one round trip before the clock starts, as the agent's
        ready.put(index)
        await asyncio.to_thread(go.wait)
        run = asyncio.create_task(qm.run())
        while not run.done() and not await asyncio.to_thread(stop.wait, 0.2):
            pass
        qm.shutdown.set()
        await run  # flushes the buffered completions; raises what made it stop early
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
