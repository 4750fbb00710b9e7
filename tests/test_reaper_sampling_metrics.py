"""Two figures the agent kept but did not export: orphans it reaped, and when resources were sampled."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.helpers import AgentProcess, running_agent, wait_for
from tests.metricsutil import scrape, value

# The subshell starts a short sleep in the background and exits at once: the sleep is orphaned,
# handed to the agent (its subreaper), and reaped by it when it ends.
ORPHAN_MAKER = "(sleep 0.2 &); exec sleep 1000"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    config = {"agent": {"resources": {"interval": 0.2}},
              "components": {"parent": {"command": ORPHAN_MAKER, "shell": True}}}
    with running_agent(tmp_path_factory.mktemp("reaper"), config) as proc:
        yield proc


def metric(agent: AgentProcess, name: str) -> float | None:
    return value(scrape(agent.url), name)


def test_orphans_reaped_are_counted(agent: AgentProcess) -> None:
    wait_for(lambda: (metric(agent, "orchestrator_orphans_reaped_total") or 0) >= 1, 10, 0.05,
             "the orphaned sleep to be reaped and counted")


def test_the_time_of_the_last_resource_sample_is_exported(agent: AgentProcess) -> None:
    name = "orchestrator_resources_sampled_timestamp_seconds"
    first = wait_for(lambda: metric(agent, name), 10, 0.05, "a first resource sample")
    assert (metric(agent, "orchestrator_agent_start_time_seconds") or 0) <= first <= time.time()
    # Each sample moves it on (the scrapes here keep sampling going).
    wait_for(lambda: (metric(agent, name) or 0) > first, 10, 0.05, "a later sample")
