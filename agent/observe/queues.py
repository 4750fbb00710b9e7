"""Backlog readers for the queues other systems keep: Redis keys (Celery, RQ and Sidekiq lists, streams, sorted
sets, sets) and one SQL query over any job table (procrastinate, pgqueuer, a plain table; PostgreSQL or SQLite).

Both only read. Redis gets read-only commands (TYPE and the length commands, one pipelined round trip); the
SQL query runs in a read-only PostgreSQL transaction or on a SQLite file opened read-only with an authorizer
that allows nothing but reads, and on both a timeout ends it. What the data gets wrong (a key of another
type, a row with a bad count) is a malformed row, skipped and counted as for the other sources; what stops
the read (no connection, a refused password, a query without a `count` column) is a SourceError. Each
client is imported here, when a source of its kind is read: an agent without one never loads it.
"""

from __future__ import annotations

import math
import os
import shlex
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from agent.config.sources import BacklogSource, RedisKey
from agent.observe.counts import Counts, SourceError
from agent.todos.row import STATUS_ALIASES, STATUSES, RowError, validate_row

LENGTH = {"list": "LLEN", "stream": "XLEN", "zset": "ZCARD", "set": "SCARD"}
# The result columns a sql source reads; any other is refused (a misspelt column would be ignored unseen).
COLUMNS = ("count", "status", "priority", "capability", "created_at")
# A query's rows are groups (GROUP BY status, ...): more than this is a query that forgot to group.
MAX_ROWS = 10_000


# --- redis ------------------------------------------------------------------------------------------------


def redis_password(spec: BacklogSource) -> str | None:
    """The source's password, read now (a rotated file or a changed environment counts from the next read)."""
    if spec.password_env is not None:
        value = os.environ.get(spec.password_env)
        if not value:
            raise SourceError(f"redis {spec.url}: password_env: the environment variable {spec.password_env} "
                              "is not set (or empty)")
        return value
    if spec.password_file is None:
        return None
    path = spec.password_file
    try:
        with open(path, encoding="utf-8") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            secret = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"redis {spec.url}: password_file {path}: cannot read: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if mode & 0o077:  # as the agent's own token files (agent/http/credentials.py read_secret)
        raise SourceError(f"redis {spec.url}: refusing the password_file {path}: group or others may access it "
                          f"(mode {mode:04o}); run: chmod 600 {shlex.quote(str(path))}")
    if not secret:
        raise SourceError(f"redis {spec.url}: password_file {path} is empty")
    return secret


def _key_commands(key: RedisKey) -> list[str]:
    """TYPE, then the length command of the declared type, or of every type when none is declared (one
    round trip either way; the reply of the type TYPE names is the one used)."""
    return ["TYPE", LENGTH[key.type]] if key.type else ["TYPE", *LENGTH.values()]


def count_keys(keys: Sequence[RedisKey], replies: Sequence[Any], where: str) -> Counts:
    """Counts from the pipeline's replies to _key_commands of each key, in order (errors as exception values)."""
    counts = Counts()
    pos = 0
    for key in keys:
        commands = _key_commands(key)
        answers = dict(zip(commands, replies[pos:pos + len(commands)], strict=True))
        pos += len(commands)
        for reply in answers.values():  # WRONGTYPE is the data's fault (below); anything else stops the read
            if isinstance(reply, Exception) and not str(reply).startswith("WRONGTYPE"):
                raise SourceError(f"{where}: {type(reply).__name__}: {reply}")
        found = answers["TYPE"]
        found = found.decode() if isinstance(found, bytes) else str(found)
        name = f"key {key.key!r}"
        if found == "none":  # Celery deletes a list it emptied: no key is an empty queue
            n = 0
        elif key.type is not None and found != key.type:
            counts.skip(name, RowError("type", f"is not the declared {key.type}", found))
            continue
        elif found not in LENGTH:
            counts.skip(name, RowError("type", "is not a list, stream, zset or set", found))
            continue
        else:
            n = answers[LENGTH[found]]
            if not isinstance(n, int) or isinstance(n, bool):  # the type changed between TYPE and its length
                counts.skip(name, RowError("type", "changed while it was read", found))
                continue
        counts.add("pending", key.priority, [key.capability] if key.capability else [], None, n)
    return counts


def read_redis(spec: BacklogSource) -> Counts:
    """The length of each of the source's keys, as pending todos (one connection, one pipelined round trip)."""
    assert spec.url is not None and spec.keys
    import redis  # the optional extra orchestrator-agent[redis]; the config refuses a redis source without it
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    where = f"redis {spec.url}"  # the url carries no password (the config refuses one)
    password = redis_password(spec)
    commands = [(command, key.key) for key in spec.keys for command in _key_commands(key)]
    try:
        # No retries: a source that does not answer is down for this read, and the next read tries again.
        with redis.Redis.from_url(spec.url, username=spec.username, password=password,
                                  socket_timeout=spec.timeout, socket_connect_timeout=spec.timeout,
                                  retry=Retry(NoBackoff(), 0), decode_responses=False) as client:
            pipe = client.pipeline(transaction=False)
            for command, name in commands:
                pipe.execute_command(command, name)
            replies = pipe.execute(raise_on_error=False)
    except redis.RedisError as exc:
        message = f"{type(exc).__name__}: {exc}"
        if password:
            message = message.replace(password, "***")
        raise SourceError(f"{where}: {message}") from None
    return count_keys(spec.keys, replies, where)


# --- sql --------------------------------------------------------------------------------------------------


def _count(value: Any) -> int:
    if value is None:
        raise RowError("count", "must not be null", value)
    if isinstance(value, bool) or not hasattr(value, "as_integer_ratio"):  # int, float, Decimal (a sum())
        raise RowError("count", "must be a whole number", value)
    try:
        numerator, denominator = value.as_integer_ratio()
    except (ValueError, OverflowError):  # NaN, infinity
        raise RowError("count", "must be a whole number", value) from None
    if denominator != 1:
        raise RowError("count", "must be a whole number", value)
    if numerator < 0:
        raise RowError("count", "must not be negative", value)
    return int(numerator)


def _status(value: Any, status_map: Mapping[str, str] | None) -> str | None:
    """The canonical status of a row's status value, or None when it maps to none (the row is left out)."""
    if value is None:
        raise RowError("status", "must not be null", value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowError("status", "must be text or a whole number", value)
    text = str(value)
    if status_map is not None:
        return status_map.get(text)
    key = text.strip().lower()
    key = STATUS_ALIASES.get(key, key)
    return key if key in STATUSES else None


def _created_at(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    # PostgreSQL's EXTRACT(EPOCH ...) is numeric (a Decimal): Unix seconds as much as a float is.
    if isinstance(value, Decimal) and value.is_finite():
        return float(value)
    return value


def count_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], status_map: Mapping[str, str] | None,
               where: str) -> Counts:
    """Counts from a sql source's result: each row adds `count` todos of its status, priority, capability."""
    names = [c.lower() for c in columns]
    if "count" not in names:
        shown = ", ".join(columns) if columns else "none"
        raise SourceError(f"{where}: the query returned no `count` column (its columns: {shown}); name the "
                          "number of todos of each row `count`, as in SELECT status, count(*) AS count ...")
    unknown = [c for c in columns if c.lower() not in COLUMNS]
    twice = sorted({c for c in names if names.count(c) > 1})
    if unknown or twice:
        problem = f"columns it does not read: {', '.join(unknown)}" if unknown else f"columns twice: {', '.join(twice)}"
        raise SourceError(f"{where}: the query returned {problem}; a sql source reads {', '.join(COLUMNS)}")
    at = {name: i for i, name in enumerate(names)}
    if status_map is not None and "status" not in at:
        raise SourceError(f"{where}: the source has a status_map but the query returned no `status` column "
                          f"(its columns: {', '.join(columns)}); return the status, or drop status_map to "
                          "count every row as pending")
    counts = Counts()
    for i, row in enumerate(rows):
        def column(name: str, default: Any, row: Sequence[Any] = row) -> Any:
            return row[at[name]] if name in at else default

        try:
            n = _count(row[at["count"]])
            # Without a status column every row is pending; with one, its values go through status_map.
            status = _status(row[at["status"]], status_map) if "status" in at else "pending"
            if status is None:
                counts.leave_out(repr(row[at["status"]])[:80], n)
                continue
            # capability: one name, a comma-separated list, or an array (PostgreSQL); NULL: any worker.
            checked = validate_row(status, column("priority", "normal"), column("capability", None),
                                   _created_at(column("created_at", None)))
        except RowError as exc:
            counts.skip(f"row {i + 1}", exc)
            continue
        counts.add(checked.status, checked.priority, checked.capabilities, checked.created_at, n)
    return counts


def _fetch(cursor: Any, where: str) -> tuple[list[str], list[Sequence[Any]]]:
    if cursor.description is None:
        raise SourceError(f"{where}: the query returned no rows (a sql source needs a SELECT)")
    columns = [str(d[0]) for d in cursor.description]
    rows = cursor.fetchmany(MAX_ROWS + 1)
    if len(rows) > MAX_ROWS:
        raise SourceError(f"{where}: the query returned more than {MAX_ROWS} rows: group them "
                          "(GROUP BY status, priority, capability) so each row counts many todos")
    return columns, rows


def connect_read_only(dsn: str, passfile: Path | None, timeout: float) -> Any:
    """A PostgreSQL connection whose every transaction is read-only and every statement ends at `timeout`
    (the postgres and sql backlog sources); psycopg.Error when it cannot connect."""
    import psycopg

    options = f"-c default_transaction_read_only=on -c statement_timeout={max(1, int(timeout * 1000))}"
    # statement_timeout is the server's: a server that stops answering after the connect (paused, cut
    # off) is bounded by TCP on this side, data unacknowledged for tcp_user_timeout and keepalives.
    seconds = max(1, math.ceil(timeout))
    kwargs: dict[str, Any] = {"connect_timeout": seconds, "autocommit": False, "options": options,
                              "tcp_user_timeout": (seconds + 1) * 1000, "keepalives": 1,
                              "keepalives_idle": seconds, "keepalives_interval": 1, "keepalives_count": 2}
    if passfile is not None:
        kwargs["passfile"] = str(passfile)
    return psycopg.connect(dsn, **kwargs)


def query_postgres(dsn: str, passfile: Path | None, query: str, timeout: float) -> tuple[list[str], list[Any]]:
    """Run one statement in a read-only transaction bounded by statement_timeout; its columns and rows."""
    import psycopg

    where = f"sql {dsn}"  # the dsn carries no password (the config refuses one)
    try:
        with connect_read_only(dsn, passfile, timeout) as conn:
            # prepare=True: the extended protocol, which takes exactly one statement (no `COMMIT; ...` after it).
            return _fetch(conn.execute(query, prepare=True), where)
    except psycopg.errors.QueryCanceled as exc:
        raise SourceError(f"{where}: the query ran past the timeout of {timeout:g}s "
                          f"({str(exc).strip()})") from None
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise SourceError(f"{where}: the query may only read: {str(exc).strip()}") from None
    except psycopg.Error as exc:
        raise SourceError(f"{where}: {type(exc).__name__}: {str(exc).strip()}") from None


def query_sqlite(path: Path, query: str, timeout: float) -> tuple[list[str], list[Any]]:
    """Run one statement on a SQLite file opened read-only, interrupted after `timeout`; its columns and rows."""
    import sqlite3
    from urllib.parse import quote

    where = f"sql {path}"
    if not path.exists():
        raise SourceError(f"{where}: file not found")
    deadline = time.monotonic() + timeout
    late = False

    def past_deadline() -> int:
        nonlocal late
        late = time.monotonic() > deadline
        return 1 if late else 0  # non-zero interrupts the statement

    def reads_only(action: int, *_: Any) -> int:
        allowed = (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE)
        return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY

    try:
        conn = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise SourceError(f"{where}: {exc}") from None
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(reads_only)  # after the PRAGMA: the query itself may not run one, nor ATTACH
        conn.set_progress_handler(past_deadline, 1000)
        return _fetch(conn.execute(query), where)
    except sqlite3.Error as exc:
        if late:
            raise SourceError(f"{where}: the query ran past the timeout of {timeout:g}s (interrupted)") from None
        if "not authorized" in str(exc) or "readonly" in str(exc):
            raise SourceError(f"{where}: the query may only read (SELECT): {exc}") from None
        raise SourceError(f"{where}: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def read_sql(spec: BacklogSource) -> Counts:
    """Run the source's query (PostgreSQL `dsn` or SQLite `path`) and count its rows."""
    assert spec.query is not None
    if spec.dsn is not None:
        columns, rows = query_postgres(spec.dsn, spec.passfile, spec.query, spec.timeout)
        where = f"sql {spec.dsn}"
    else:
        assert spec.path is not None
        columns, rows = query_sqlite(spec.path, spec.query, spec.timeout)
        where = f"sql {spec.path}"
    return count_rows(columns, rows, spec.status_map, where)
