"""The todo backlog's sources: where the agent reads the todos it exports (the agent's own SQLite or PostgreSQL
store, JSON, HTTP) and the queues other systems keep (Redis lists, streams and sets; any SQL query)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import NAME_PATTERN, Strict
from agent.config.units import Duration

# The todo statuses and priorities (agent/todos/row.py STATUSES, PRIORITIES, which config may not import;
# tests/test_backlog_sql.py keeps the two in step).
Status = Literal["pending", "in_progress", "done", "failed"]
Priority = Literal["low", "normal", "high", "critical"]
RESERVED = "names starting with '_' are reserved for the agent's own label values, such as '_other'"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

# The fields only some kinds take; every other field is common (name, interval, timeout) or checked below.
KIND_FIELDS = {
    "dsn": ("postgres", "sql"), "passfile": ("postgres", "sql"),
    "keys": ("redis",), "username": ("redis",), "password_file": ("redis",), "password_env": ("redis",),
    "query": ("sql",), "status_map": ("sql",),
}


class RedisKey(Strict):
    """One Redis key whose length counts as pending todos (a Celery or RQ queue, a stream, a sorted set)."""

    key: str = Field(min_length=1, max_length=1024)
    # Read with TYPE when absent; given, a key of another type counts as malformed.
    type: Literal["list", "stream", "zset", "set"] | None = None
    capability: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None  # None: any worker
    priority: Priority = "normal"

    @field_validator("capability")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("_"):
            raise ValueError(RESERVED)
        return value


class BacklogSource(Strict):
    kind: Literal["sqlite", "json", "http", "postgres", "redis", "sql"]
    name: str | None = Field(None, pattern=NAME_PATTERN)
    path: Path | None = None
    url: str | None = None
    # postgres and sql: a libpq connection string or postgresql:// URL without a password; the password
    # comes from `passfile`, $PGPASSFILE (default ~/.pgpass) or $PGPASSWORD, never from the config.
    dsn: str | None = None
    passfile: Path | None = None
    interval: Duration = Field(5.0, gt=0)
    timeout: Duration = Field(2.0, gt=0)
    # The lease a claim gets when the worker names none (`agent todo claim` without --lease).
    lease: Duration = Field(300.0, gt=0, le=7 * 86400)
    # redis: the keys to count; the password from a file (read at each connect) or an environment variable.
    keys: list[RedisKey] | None = None
    username: str | None = Field(None, min_length=1)
    password_file: Path | None = None
    password_env: str | None = Field(None, pattern=ENV_NAME)
    # sql: one read-only query whose rows carry `count` (and `status`, `priority`, `capability`, `created_at`).
    query: str | None = None
    status_map: dict[str, Status] | None = None

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from agent.config.dsn import dsn_problem

        problem = dsn_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _location(self) -> BacklogSource:
        for key in sorted(self.model_fields_set):
            kinds = KIND_FIELDS.get(key)
            if kinds is not None and self.kind not in kinds and getattr(self, key) is not None:
                raise ValueError(f"{key} belongs to a {' or '.join(kinds)} backlog source, not to kind {self.kind}")
        if self.kind in ("sqlite", "json") and self.path is None:
            raise ValueError(f"a {self.kind} backlog source needs a path")
        if self.kind == "http" and not self.url:
            raise ValueError("an http backlog source needs a url")
        if self.kind == "postgres" and not self.dsn:
            raise ValueError("a postgres backlog source needs a dsn (such as postgresql://todo@db.example/todos)")
        if self.kind == "redis":
            self._redis()
        if self.kind == "sql":
            self._sql()
        return self

    def _redis(self) -> None:
        # Raised here, on the whole source, rather than by a validator of `url`: a field's error shows
        # the value it refused, and this one may hold a password.
        from agent.config.dsn import redis_url_problem

        if not self.url:
            raise ValueError("a redis backlog source needs a url (such as redis://127.0.0.1:6379/0)")
        problem = redis_url_problem(self.url)
        if problem:
            raise ValueError(f"url {problem}")
        if self.path is not None or "lease" in self.model_fields_set:
            raise ValueError("path and lease belong to other kinds, not to a redis backlog source")
        if not self.keys:
            raise ValueError("keys: a redis backlog source needs at least one key, such as [{key: celery}]")
        seen = set()
        for i, key in enumerate(self.keys):
            if key.key in seen:
                raise ValueError(f"keys.{i}.key: {key.key!r} is listed twice (its length would count twice)")
            seen.add(key.key)
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("password_file and password_env: give one of them, not both")
        if self.username is not None and redis_url_user(self.url):
            raise ValueError("username: the url names a user already; give it in one place")
        if importlib.util.find_spec("redis") is None:  # found without importing it: the agent stays lean
            raise ValueError("kind redis needs the Redis client: install orchestrator-agent[redis] "
                             "(pip install 'orchestrator-agent[redis]')")

    def _sql(self) -> None:
        if (self.dsn is None) == (self.path is None):
            raise ValueError("a sql backlog source needs either a dsn (PostgreSQL, such as "
                             "postgresql://app@db.example/app) or a path (a SQLite file), not both")
        if self.passfile is not None and self.dsn is None:
            raise ValueError("passfile belongs to a sql source with a dsn (PostgreSQL), not with a path")
        if self.url is not None or "lease" in self.model_fields_set:
            raise ValueError("url and lease belong to other kinds, not to a sql backlog source")
        if not self.query:
            raise ValueError("query: a sql backlog source needs a query, such as "
                             "SELECT status, count(*) AS count FROM jobs GROUP BY status")
        if self.status_map is not None and not self.status_map:
            raise ValueError("status_map: must map at least one status (or be left out: the statuses "
                             "pending, in_progress, done, failed and their usual aliases are read as they are)")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.path is not None:
            where: object = self.path
        else:
            where = self.url if self.kind in ("http", "redis") else self.dsn
        return f"{self.kind}:{where}"

    @property
    def store(self) -> str | None:
        """What `agent todo --db` takes for this source (a path or a dsn): the agent's own store only."""
        if self.kind == "sqlite" and self.path is not None:
            return str(self.path)
        return self.dsn if self.kind == "postgres" else None


def redis_url_user(url: str) -> str | None:
    """The user a redis:// URL names, if any."""
    from urllib.parse import urlsplit

    return urlsplit(url).username or None


class Backlog(Strict):
    sources: list[BacklogSource] = Field(default_factory=list)

    @model_validator(mode="after")
    def _labels_unique(self) -> Backlog:
        # The agent keys each source by its label (metrics, reads, reloads): two alike would be read as one.
        seen: dict[str, int] = {}
        for i, source in enumerate(self.sources):
            if source.label in seen:
                raise ValueError(f"sources {seen[source.label]} and {i} are both called {source.label!r}: give "
                                 "each a different `name`")
            seen[source.label] = i
        return self
