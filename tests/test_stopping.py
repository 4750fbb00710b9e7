"""agent/supervise/stopping.py: the stop escalation, on real child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from agent.config.component import StopSettings
from agent.supervise.stopping import stop_process, stop_unreaped

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
OBEYS_TERM = "import time; print(flush=True); time.sleep(60)"


def _child(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()  # its handlers are in place
    proc.stdout.close()
    return proc


def _raw_child(code: str) -> int:
    """A child of its own session that no Popen object watches (stop_unreaped reaps it)."""
    read, write = os.pipe()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", code], os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, write, 1)], setsid=True)
    os.close(write)
    with os.fdopen(read, "rb") as out:
        out.readline()  # its handlers are in place
    return pid


async def _reap_into(proc: subprocess.Popen[bytes], exited: asyncio.Event) -> None:
    """The reaper's part: set `exited` once the child ends (a child still there after 30 s fails the test)."""
    await asyncio.to_thread(proc.wait, 30)
    exited.set()


def test_stop_process_ends_an_obedient_one_with_its_stop_signal() -> None:
    proc = _child(OBEYS_TERM)

    async def main() -> bool:
        exited = asyncio.Event()
        reaping = asyncio.ensure_future(_reap_into(proc, exited))
        killed = await stop_process(proc.pid, StopSettings(grace=5.0), exited, None, "component t replica 0")
        await reaping
        return killed

    assert asyncio.run(main()) is False
    assert proc.returncode == -signal.SIGTERM


def test_stop_process_sigkills_one_that_ignores_it_after_the_grace() -> None:
    proc = _child(IGNORES_TERM)

    async def main() -> tuple[bool, float]:
        exited = asyncio.Event()
        reaping = asyncio.ensure_future(_reap_into(proc, exited))
        began = time.monotonic()
        killed = await stop_process(proc.pid, StopSettings(grace=0.2), exited, None, "component t replica 0")
        await reaping
        return killed, time.monotonic() - began

    killed, took = asyncio.run(main())
    assert killed is True
    assert proc.returncode == -signal.SIGKILL
    assert took >= 0.2


def test_stop_unreaped_stops_and_reaps_each_child_with_its_settings() -> None:
    pids = {_raw_child(OBEYS_TERM): StopSettings(grace=5.0), _raw_child(IGNORES_TERM): StopSettings(grace=0.2)}
    asyncio.run(stop_unreaped(pids))
    for pid in pids:  # reaped by stop_unreaped: no child left to wait for
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        raise AssertionError(f"pid {pid} was not reaped")
