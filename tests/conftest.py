"""Test-wide safety net: an agent that a failing test left running is ended by its PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import AgentProcess, missing


@pytest.fixture(autouse=True)
def _end_leftover_agents() -> Iterator[None]:
    # Agents of module-scoped fixtures exist before this runs and are theirs to stop.
    before = len(AgentProcess.started)
    yield
    for agent in AgentProcess.started[before:]:
        proc = agent.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc is not None and not agent.stderr.closed:
            agent.stderr.close()
    del AgentProcess.started[before:]


@pytest.fixture(params=["cgroup", "tracking"])
def containment(request: pytest.FixtureRequest) -> str:
    """Each containment mechanism in turn; cgroup needs a writable cgroup v2 tree (required under CI)."""
    if request.param == "cgroup":
        from agent.supervise.choice import choose
        from agent.supervise.containment import ContainmentError

        try:
            choose("cgroup", set).close()
        except ContainmentError as exc:
            missing(f"{exc}: the cgroup mechanism cannot be tested here (needs root and a cgroup2 mount)")
    return str(request.param)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """One private PostgreSQL for the session (tests/pgserver.py); each test takes its own database."""
    from tests.pgserver import PgServer

    server = PgServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def todo_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty todo store of each kind in turn: a SQLite path, or a PostgreSQL dsn (no password)."""
    if request.param == "sqlite":
        return str(tmp_path_factory.mktemp("store") / "todos.db")
    server = request.getfixturevalue("pg_server")
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-50:]
    return str(server.database(name))
