"""`agent todo ...`: the todo store (SQLite file or PostgreSQL dsn) for workers in any language."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from agent.cli.client import ControlError, announce, config_choice, shown_path
from agent.cli.output import print_table
from agent.config.dsn import redact
from agent.config.loader import ConfigError, load_config
from agent.todos.base import DEFAULT_LEASE, MAX_TITLE, Finish, StoreError, title_problem
from agent.todos.row import PRIORITIES, STATUSES
from agent.todos.store import open_store


@dataclass(frozen=True)
class Target:
    """Which store a todo verb works on, the lease a claim gets by default, and where that came from."""

    db: str
    lease: float = DEFAULT_LEASE
    passfile: str | None = None


def todo_target(args: argparse.Namespace) -> Target:
    """--db, else $TODO_DB, else the config's first sqlite or postgres source, else todos.db; lease and
    passfile from the config's source of that store (when there is one). The config is the one the running
    agent uses (agent/cli/client.py `config_choice`), named on stderr when the store comes from it."""
    explicit = args.db or os.environ.get("TODO_DB") or None
    found = config_choice(args)  # ControlError (exit 2): the agent runs on files this user cannot read
    try:
        config = load_config(found.paths)
    except ConfigError:
        config = None
        print(f"agent: not using the config {' + '.join(shown_path(p) for p in found.paths)} for the todo store: "
              "it does not load (`agent check-config` says why)", file=sys.stderr)
    sources = [s for s in config.backlog.sources if s.store is not None] if config else []
    for source in sources:
        if explicit is None or source.store == explicit:
            assert source.store is not None
            announce(found)  # the store (or its lease and passfile) comes from this file
            return Target(source.store, source.lease, str(source.passfile) if source.passfile else None)
    return Target(explicit or "todos.db")


def _caps(values: list[str]) -> list[str]:
    return [c for item in values for c in item.split(",") if c]


def _lease(text: str) -> float:
    from agent.config.units import parse_duration

    try:
        return float(parse_duration(text))
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"a duration such as 30s, 5m or 90 (seconds): {exc}") from None


def add_titles(arguments: list[str], stdin: TextIO) -> list[str]:
    """The titles of `agent todo add` in order, `-` replaced by stdin's lines (blank ones skipped);
    ValueError naming the argument or stdin line of the first title that is empty or too long."""
    if arguments.count("-") > 1:
        raise ValueError("`-` (titles from stdin) may be given once")
    titles: list[str] = []
    for position, argument in enumerate(arguments, 1):
        if argument != "-":
            _check_title(argument, f"title argument {position}")
            titles.append(argument)
            continue
        for number, line in enumerate(stdin, 1):
            title = line.rstrip("\r\n")
            if title.strip():
                _check_title(title, f"stdin line {number}")
                titles.append(title)
    if not titles:
        raise ValueError("no titles to add (stdin was empty or only blank lines); nothing added")
    return titles


def _check_title(title: str, where: str) -> None:
    if problem := title_problem(title):
        raise ValueError(f"{where}: the title {problem}; nothing added")


def cmd_todo(args: argparse.Namespace) -> int:
    """Run one todo verb; exit 1 when nothing suits or a completion is refused, 2 when the store is unusable
    or the input is refused, or the running agent's config cannot be read."""
    try:
        target = todo_target(args)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        if args.todo_cmd == "add":
            args.titles = add_titles(args.title, sys.stdin)
        with open_store(target.db, target.passfile) as store:
            return _verb(args, store, target)
    except (StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _verb(args: argparse.Namespace, store: Any, target: Target) -> int:
    where = redact(target.db)
    if args.todo_cmd == "add":
        ids = store.add_many(args.titles, args.priority, _caps(args.capability))
        if args.json:
            print(json.dumps({"id": ids[0]} if len(ids) == 1 else ids))
        else:
            print("\n".join(map(str, ids)))
    elif args.todo_cmd == "list":
        items = store.list(args.status, args.limit)
        if args.json:
            print(json.dumps([t.to_json() for t in items]))
        else:
            print_table(["id", "priority", "status", "capabilities", "claimed by", "title"],
                        [[t.id, t.priority, t.status, ",".join(t.capabilities) or "any", t.claimed_by, t.title]
                         for t in items])
    elif args.todo_cmd == "claim":
        todo = store.claim(args.worker, _caps(args.capability) or None,
                           args.lease if args.lease is not None else target.lease)
        if todo is None:
            print("{}" if args.json else "nothing pending")
            return 1
        print(json.dumps(todo.to_json()) if args.json else
              f"{todo.id}\t{todo.priority}\t{todo.claim_token}\t{todo.title}")
    elif args.todo_cmd == "renew":
        expires = store.renew(args.id, args.token, args.lease if args.lease is not None else target.lease)
        if expires is None:
            print(f"error: todo {args.id}: this token holds no live lease on it in {where} (expired, finished, "
                  "or claimed again by another worker): stop working on it", file=sys.stderr)
            return 1
        print(json.dumps({"id": args.id, "lease_expires_at": expires}) if args.json else
              f"todo {args.id}: lease until {expires:.3f}")
    elif args.todo_cmd == "done":
        status = "failed" if args.failed else "done"
        result = store.finish(args.id, status, args.token)
        if result is Finish.MISSING:
            print(f"error: no todo {args.id} in {where}", file=sys.stderr)
            return 1
        if result is Finish.REJECTED:
            print(f"error: todo {args.id}: completion rejected: this claim token holds no live lease on it (the "
                  "lease expired and the todo went back to pending, or it was finished); counted in "
                  "orchestrator_todo_completions_rejected_total", file=sys.stderr)
            return 1
        if result is Finish.CLAIMED:
            print(f"error: todo {args.id} is claimed under a live lease: pass the claim's --token", file=sys.stderr)
            return 1
        print(json.dumps({"id": args.id, "status": status}) if args.json else f"todo {args.id}: {status}")
    return 0


def add_todo_commands(sub: Any) -> None:
    """The `todo` verb and its sub-verbs."""
    todo = sub.add_parser("todo", help="the todo store, SQLite or PostgreSQL (for workers in any language)")
    todo.add_argument("--db", help="a SQLite file, or a postgresql:// URL without password (default: $TODO_DB, "
                      "else the config's first sqlite or postgres backlog source, else todos.db)")
    todo.add_argument("-c", "--config", action="append", default=argparse.SUPPRESS,
                      help="config file used to find the backlog source (and its lease and passfile); default: "
                      "the files the running agent reports, else the search")
    todo.add_argument("--json", action="store_true", help="JSON output")
    tsub = todo.add_subparsers(dest="todo_cmd", required=True, metavar="VERB")

    def todo_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # After the verb too (`agent todo list --json`); SUPPRESS keeps a --json given before it.
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
        return p

    lease_help = "lease duration (30s, 5m, 90; default: the source's `lease` in the config, else 5m)"
    add = todo_json(tsub.add_parser(
        "add", help="add pending todos, all in one transaction; prints their ids, one a line",
        description="Add pending todos, all or none in one transaction, with the same priority and capabilities. "
        "Prints their ids in order, one a line; with --json a JSON list of ids, except {\"id\": N} for exactly one "
        "title (so scripts that add one title at a time keep working). Exit 2, nothing added: no title, or one empty "
        f"or longer than {MAX_TITLE} characters (the message names its argument or stdin line)."))
    add.add_argument("title", nargs="+", metavar="TITLE",
                     help="a todo's title; `-` (once) reads titles from stdin, one a line, blank lines skipped")
    add.add_argument("-p", "--priority", default="normal", choices=list(PRIORITIES))
    add.add_argument("--capability", action="append", default=[],
                     help="a capability the todo needs (repeat, or comma-separated)")
    lst = todo_json(tsub.add_parser("list", help="list todos, most urgent first"))
    lst.add_argument("--status", choices=list(STATUSES))
    lst.add_argument("--limit", type=int, default=1000)
    claim = todo_json(tsub.add_parser("claim", help="take the most urgent pending todo you can serve, under a "
                                      "lease; prints id, priority, claim token, title (exit 1: none)"))
    claim.add_argument("--worker", required=True, help="who takes it")
    claim.add_argument("--capability", action="append", default=[],
                       help="capabilities this worker has (repeat or comma-separated); omit to take any")
    claim.add_argument("--lease", type=_lease, default=None, help=lease_help)
    renew = todo_json(tsub.add_parser("renew", help="extend the lease of a todo you hold (exit 1: you no longer "
                                      "hold it; stop working on it)"))
    renew.add_argument("id", type=int)
    renew.add_argument("--token", required=True, help="the claim token `claim` printed")
    renew.add_argument("--lease", type=_lease, default=None, help=lease_help)
    done = todo_json(tsub.add_parser("done", help="mark a todo done (with --token: only while your claim's "
                                     "lease is live)"))
    done.add_argument("id", type=int)
    done.add_argument("--token", help="the claim token `claim` printed (required for a claimed todo)")
    done.add_argument("--failed", action="store_true", help="mark it failed instead")
    todo.set_defaults(func=cmd_todo)
