"""A todo worker: claims todos from the todo store (SQLite or PostgreSQL), "works" on them, marks them done.

The store comes from ``$TODO_DB`` (a SQLite path or a ``postgresql://`` dsn without password; the password
comes from ``$PGPASSFILE``/``~/.pgpass`` or ``$PGPASSWORD``), so no secret reaches a command line.

Loop: claim the most urgent pending todo this worker can serve (``TodoStore.claim``, under a lease of
``--lease`` seconds, renewed while the work lasts; a todo whose
capabilities are ``[]`` can be taken by any worker, otherwise the worker needs all of them), sleep
``--work-seconds`` to simulate the work, then mark it done and log one line. When nothing is
pending it polls again every ``--idle-poll`` seconds.

On SIGTERM (or Ctrl-C) the worker stops within a second and exits 0: a todo whose work has
finished is marked done, a todo still being worked on is put back to ``pending`` so another worker
can take it. Both need the claim's token: a worker whose lease ran out (it stalled, say) is refused and
logs it, and the todo is someone else's by then.

Worker id: ``--worker-id``, else ``$AGENT_COMPONENT.$AGENT_REPLICA`` when the supervisor set
``AGENT_COMPONENT`` (replica defaults to 0), else ``hostname:pid``.

Run as ``python -m agent.demo.demo_worker [options]``; see ``--help``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
from types import FrameType

from agent.demo._log import setup_logging
from agent.todos.base import DEFAULT_LEASE, Finish, StoreError, TodoStore
from agent.todos.store import open_store

log = logging.getLogger("demo_worker")

DEFAULT_CAPABILITIES = ("todo_processing",)
# Longest uninterrupted sleep, so a stop request is noticed quickly.
TICK_SECONDS = 0.05


class StopFlag:
    """Set from the signal handler; checked between steps (never raises mid-transaction)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def set(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def is_set(self) -> bool:
        return self.signal_name is not None

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; return True as soon as a stop was requested."""
        deadline = time.monotonic() + seconds
        while not self.is_set:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(TICK_SECONDS, left))
        return True


def default_worker_id() -> str:
    component = os.environ.get("AGENT_COMPONENT", "").strip()
    if component:
        replica = os.environ.get("AGENT_REPLICA", "").strip() or "0"
        return f"{component}.{replica}"
    return f"{socket.gethostname()}:{os.getpid()}"


def default_capabilities() -> list[str]:
    raw = os.environ.get("WORKER_CAPABILITIES", "")
    caps = [c.strip() for c in raw.split(",") if c.strip()]
    return caps or list(DEFAULT_CAPABILITIES)


def run(store: TodoStore, worker: str, capabilities: list[str], work_seconds: float, idle_poll: float,
        stop: StopFlag, max_todos: int | None = None, lease: float = DEFAULT_LEASE) -> int:
    """The claim/work/finish loop; returns the number of todos done."""
    done = 0
    while not stop.is_set and (max_todos is None or done < max_todos):
        try:
            todo = store.claim(worker, capabilities, lease)
        except (sqlite3.Error, StoreError) as exc:
            log.warning("claim failed (%s); retrying in %.2fs", exc, idle_poll)
            stop.wait(idle_poll)
            continue
        if todo is None:
            stop.wait(idle_poll)
            continue
        assert todo.claim_token is not None
        started = time.monotonic()
        interrupted = lost = False
        # Work in slices of half a lease, renewing between them, so a long job keeps its todo.
        while (left := work_seconds - (time.monotonic() - started)) > 0:
            if stop.wait(min(left, lease / 2)):
                interrupted = time.monotonic() - started < work_seconds
                break
            if work_seconds - (time.monotonic() - started) > 0 and store.renew(todo.id, todo.claim_token,
                                                                             lease) is None:
                lost = True
                break
        if lost:  # it is pending again, or someone else's: stop working on it
            log.warning("lost the lease on todo %d %r; leaving it to its next holder", todo.id, todo.title)
            continue
        if interrupted:
            store.finish(todo.id, "pending", todo.claim_token)
            log.info("put back todo %d %r (stopping on %s)", todo.id, todo.title, stop.signal_name)
            break
        if store.finish(todo.id, "done", todo.claim_token) is not Finish.OK:
            log.warning("completion of todo %d %r rejected: its lease expired and it went back to pending",
                        todo.id, todo.title)
            continue
        done += 1
        log.info("done todo %d %r priority=%s by %s in %.2fs", todo.id, todo.title, todo.priority, worker,
                 time.monotonic() - started)
    return done


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.demo.demo_worker",
        description="Claim todos from the SQLite todo store, work on them, mark them done. "
                    "SIGTERM puts the todo in hand back to pending and exits 0.",
    )
    parser.add_argument("--db", default=os.environ.get("TODO_DB") or "todos.db",
                        help="todo store: a SQLite file (created if missing) or a postgresql:// dsn without "
                             "password (default: env TODO_DB, else todos.db; prefer the env for a dsn)")
    parser.add_argument("--lease", type=float, default=float(os.environ.get("TODO_LEASE") or DEFAULT_LEASE),
                        help=f"lease per claim in seconds, renewed while working (default: env TODO_LEASE or "
                             f"{DEFAULT_LEASE:.0f})")
    parser.add_argument("--capability", action="append", dest="capabilities", metavar="NAME",
                        help="a capability this worker has; repeat for several (default: env "
                             "WORKER_CAPABILITIES, comma-separated, or todo_processing). "
                             "Todos that require no capability are always eligible")
    parser.add_argument("--work-seconds", type=float, default=0.5,
                        help="simulated work time per todo (default: 0.5)")
    parser.add_argument("--idle-poll", type=float, default=0.5,
                        help="seconds between claims when nothing is pending (default: 0.5)")
    parser.add_argument("--worker-id", default=None,
                        help="id recorded as claimed_by (default: $AGENT_COMPONENT.$AGENT_REPLICA, "
                             "else hostname:pid)")
    parser.add_argument("--max-todos", type=int, default=None, metavar="N",
                        help="exit 0 after finishing N todos (default: run until SIGTERM)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    stop = StopFlag()
    signal.signal(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, stop.set)

    worker = args.worker_id or default_worker_id()
    capabilities: list[str] = args.capabilities or default_capabilities()
    try:
        store = open_store(args.db)
    except StoreError as exc:
        log.error("%s", exc)
        return 2
    log.info("worker %s started: db=%s capabilities=%s work=%.2fs idle-poll=%.2fs lease=%.1fs", worker,
             store.name, ",".join(capabilities), args.work_seconds, args.idle_poll, args.lease)
    with store:
        done = run(store, worker, capabilities, args.work_seconds, args.idle_poll, stop, args.max_todos,
                   args.lease)
    log.info("worker %s exiting after %d todo(s)%s", worker, done,
             f" on {stop.signal_name}" if stop.is_set else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
