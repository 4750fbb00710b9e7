"""Test-wide safety net: an agent that a failing test left running is ended by its PID."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.helpers import AgentProcess, missing

# The config search (agent/config/search.py) must not find the machine's own files: a host set up as
# docs/operations.md says (/etc/agent/config.yaml, ~/.config/agent/config.yaml) would otherwise change
# what every `agent` subprocess of the suite runs on. Set here, at import, so module-scoped fixtures and
# every child inherit it; tests of the search point these at their own tmp files.
for _name in ("AGENT_CONFIG", "AGENT_URL"):
    os.environ.pop(_name, None)
os.environ["AGENT_SYSTEM_CONFIG"] = "/nonexistent/agent-tests/etc/agent/config.yaml"
# An empty, writable one (other programs the tests start, chromium among them, keep their settings there).
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="agent-tests-xdg-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], True)


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
