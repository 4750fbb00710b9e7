"""Test-wide safety net: an agent that a failing test left running is ended by its PID."""

from __future__ import annotations

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
