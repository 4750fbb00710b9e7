"""Component logs are size-rotated; the agent's own log is JSON lines in stderr and log_dir/agent.log."""

from __future__ import annotations

import json
from pathlib import Path

from agent.logs import rotate_if_large
from tests.helpers import running_agent, wait_for


def test_copy_truncate_rotation_keeps_backups(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    for round_ in range(4):
        log.write_text(f"round {round_}\n" * 100)
        assert rotate_if_large(log, 50, backups=2)
    assert log.read_text() == ""
    assert (tmp_path / "c.log.1").read_text().startswith("round 3")
    assert (tmp_path / "c.log.2").read_text().startswith("round 2")
    assert not (tmp_path / "c.log.3").exists()
    assert not rotate_if_large(log, 50, backups=2)


def test_replica_output_goes_to_its_file_and_rotates(tmp_path: Path) -> None:
    chatty = "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.01; done"
    cfg = {"agent": {"log_max_bytes": 2000, "log_backups": 2, "resources": {"interval": 0.2}},
           "components": {"talk": {"command": chatty, "shell": True, "replicas": {"min": 2, "max": 2}}}}
    with running_agent(tmp_path, cfg) as agent:
        logs = agent.log_dir
        wait_for(lambda: (logs / "talk.log.1").exists() and (logs / "talk.1.log.1").exists(), 15)
        assert (logs / "talk.log").stat().st_size < 4000
        assert "line" in (logs / "talk.log.1").read_text()
    records = [json.loads(x) for x in (tmp_path / "logs" / "agent.log").read_text().splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any("component talk replica 1 started" in r["msg"] for r in records)
