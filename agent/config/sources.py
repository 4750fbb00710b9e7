"""The todo backlog's sources: where the agent reads the todos it exports (SQLite, PostgreSQL, JSON, HTTP)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.config.base import NAME_PATTERN, Strict
from agent.config.units import Duration


class BacklogSource(Strict):
    kind: Literal["sqlite", "json", "http", "postgres"]
    name: str | None = Field(None, pattern=NAME_PATTERN)
    path: Path | None = None
    url: str | None = None
    # postgres: a libpq connection string or postgresql:// URL without a password; the password comes
    # from `passfile`, $PGPASSFILE (default ~/.pgpass) or $PGPASSWORD, never from the config.
    dsn: str | None = None
    passfile: Path | None = None
    interval: Duration = Field(5.0, gt=0)
    timeout: Duration = Field(2.0, gt=0)
    # The lease a claim gets when the worker names none (`agent todo claim` without --lease).
    lease: Duration = Field(300.0, gt=0, le=7 * 86400)

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

    @model_validator(mode="after")
    def _location(self) -> BacklogSource:
        if self.kind in ("sqlite", "json") and self.path is None:
            raise ValueError(f"a {self.kind} backlog source needs a path")
        if self.kind == "http" and not self.url:
            raise ValueError("an http backlog source needs a url")
        if self.kind == "postgres" and not self.dsn:
            raise ValueError("a postgres backlog source needs a dsn (such as postgresql://todo@db.example/todos)")
        if self.kind != "postgres" and (self.dsn is not None or self.passfile is not None):
            raise ValueError(f"dsn and passfile belong to a postgres backlog source, not to kind {self.kind}")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        where = self.path if self.path is not None else (self.url if self.kind == "http" else self.dsn)
        return f"{self.kind}:{where}"

    @property
    def store(self) -> str | None:
        """What `agent todo --db` takes for this source (a path or a dsn), None for json/http."""
        if self.kind == "sqlite" and self.path is not None:
            return str(self.path)
        return self.dsn if self.kind == "postgres" else None


class Backlog(Strict):
    sources: list[BacklogSource] = Field(default_factory=list)
