"""Spawns that create no process: out of descriptors, a command without its execute bit. Each goes
down the backoff path with its own restart reason (`spawn`) and is retried; nothing escapes a loop
callback, and the error says what is wrong."""

from __future__ import annotations

import errno
import os
import resource
import signal
from pathlib import Path

import pytest

from agent.supervise.replica import ReplicaState
from agent.supervise.supervisor import Supervisor
from tests.helpers import until
from tests.test_supervisor import supervise

FAST = {"max_restarts": 1000, "backoff": {"initial": 0.02, "max": 0.05}}


def test_a_spawn_without_descriptors_backs_off_and_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(sup: Supervisor) -> None:
        rt = sup.components["a"]
        rep = rt.replicas[0]
        await until(lambda: rep.state is ReplicaState.RUNNING, 3)
        first = rep.pid
        assert first is not None
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        hog: list[int] = []
        try:
            # Leave this process no descriptor at all, as 300 idle clients did to the agent under ulimit -n 256.
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, limits[1]))
            while True:
                try:
                    hog.append(os.open(os.devnull, os.O_RDONLY))
                except OSError as exc:
                    assert exc.errno == errno.EMFILE
                    break
            os.kill(first, signal.SIGKILL)
            await until(lambda: rt.restarts["spawn"] >= 2, 5, what="spawns failing and being retried")
            assert rep.pid is None and rep.state is ReplicaState.BACKOFF
        finally:
            for fd in hog:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        await until(lambda: rep.state is ReplicaState.RUNNING and rep.pid not in (None, first), 5,
                    what="the replica back once descriptors are free")
        assert rt.restarts["exit"] == 1

    supervise(tmp_path, {"a": {"command": ["sleep", "1000"], "restart": FAST}}, body)
    assert "Too many open files" in caplog.text


def test_a_command_without_its_execute_bit_is_permission_denied(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nsleep 1000\n")
    script.chmod(0o644)

    async def body(sup: Supervisor) -> None:
        rt = sup.components["noexec"]
        await until(lambda: rt.restarts["spawn"] >= 2, 3, what="two failed spawns")
        assert rt.restarts["exit"] == 0  # nothing ran, so nothing exited

    supervise(tmp_path, {"noexec": {"command": [str(script)], "restart": FAST}}, body)
    assert f"cannot start {script}: Permission denied: {script}" in caplog.text
    assert "No such file or directory" not in caplog.text


def test_a_missing_command_is_no_such_file_and_counts_as_spawn(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async def body(sup: Supervisor) -> None:
        rt = sup.components["ghost"]
        await until(lambda: rt.restarts["spawn"] >= 2, 3, what="two failed spawns")
        assert rt.restarts["exit"] == 0

    supervise(tmp_path, {"ghost": {"command": ["no-such-command-here"], "restart": FAST}}, body)
    assert "cannot start no-such-command-here: No such file or directory: no-such-command-here" in caplog.text
