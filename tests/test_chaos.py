"""Chaos, bounded: random SIGKILL / SIGTERM / SIGSTOP+SIGCONT across 20 components, under both
containment mechanisms; afterwards every invariant of bench/chaos.py holds (desired replicas, one
exit restart per kill, no probe restart, no zombie, no stray process), and a SIGTERM of the agent
leaves no process carrying the run's marker."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bench.chaos import chaos_agent, marked, run_chaos, settle
from tests.helpers import wait_for


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_random_kills_heal_exactly_and_leave_nothing_behind(tmp_path: Path, containment: str) -> None:
    mark = uuid.uuid4().hex
    with chaos_agent(tmp_path, mark, containment) as agent:
        status = agent.api("GET", "/api/v1/status")
        assert status["containment"]["mechanism"] == containment
        tally = run_chaos(agent, kills=120, duration=15, seed=7)
        assert tally.kills >= 40, f"too few kills landed to mean anything: {tally.sent}"
        report = settle(agent, tally, mark)
        print(report)
        assert report["exit_restarts_of_targets"] == tally.kills
        assert report["forker_exits"] > 0  # the forkers did exit, so their grandchildren had to be ended
        code = agent.stop()
    assert code == 0
    wait_for(lambda: not marked(mark), 5, what="no marked process after the agent stopped")
