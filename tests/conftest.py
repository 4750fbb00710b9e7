"""Test-wide safety net: an agent that a failing test left running is ended by its PID."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers import AgentProcess


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
        from agent.supervise.containment import ContainmentError, choose

        try:
            choose("cgroup", set).close()
        except ContainmentError as exc:
            message = f"{exc}: the cgroup mechanism cannot be tested here (needs root and a cgroup2 mount)"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    return str(request.param)
