"""The next start's sweep of what a dead agent left: how many processes it reports ending."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.supervise.containment import MARKER
from agent.supervise.leftovers import Ledger


def test_a_process_found_by_both_the_cgroup_and_the_marker_is_counted_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # In CI a cgroup sweep wrote cgroup.kill, and the marker sweep right after still saw one of the
    # same processes alive (its SIGKILL not yet taken): 2 leftovers were reported as 3. Here the
    # cgroup is a plain directory, so its cgroup.kill ends nothing and the marker sweep is certain to
    # find the same process alive.
    instance = "0123456789ab"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, MARKER: f"{instance}/a/0"})
    try:
        slot = tmp_path / "cgroup" / f"orchestrator-agent.{os.getpid()}" / "a.0"
        slot.mkdir(parents=True)
        (slot / "cgroup.procs").write_text(f"{child.pid}\n")
        (slot / "cgroup.kill").write_text("")
        state = tmp_path / "state"
        state.mkdir()
        (state / "containment.json").write_text(json.dumps({
            "pid": 2 ** 22 + 1, "start_ticks": 1,  # above pid_max's ceiling: that agent is gone "mechanism": "cgroup",
            "cgroup": str(slot.parent), "marker": f"{MARKER}={instance}/"}))
        with caplog.at_level(logging.WARNING, logger="agent.containment"):
            assert Ledger(state).sweep_previous() == 1
        assert child.wait(timeout=5) == -9  # the marker sweep ended it
        assert any(r.getMessage().startswith("ended 1 process(es) left by the previous agent")
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
