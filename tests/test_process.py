"""The guardian: when the agent's pipe closes, the process groups still registered are killed."""

from __future__ import annotations

import asyncio
import subprocess

from agent.supervise.process import Guardian, Reaper
from tests.helpers import pid_alive, run_async, until


def test_guardian_kills_registered_groups_only_at_eof() -> None:
    groups = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(3)]

    async def main() -> None:
        reaper = Reaper(asyncio.get_running_loop())
        guardian = Guardian(reaper)
        for p in groups:
            guardian.add(p.pid)
        guardian.remove(groups[1].pid)  # this one ended as far as the agent knows
        assert all(pid_alive(p.pid) for p in groups)
        guardian.close()
        await until(lambda: not guardian.alive, 5)
        # The reaper collects every child of this process, the sleeps included.
        await until(lambda: not pid_alive(groups[0].pid) and not pid_alive(groups[2].pid), 5)
        assert pid_alive(groups[1].pid)
        reaper.close()

    try:
        run_async(main())
    finally:
        for p in groups:
            p.kill()
            p.wait()
