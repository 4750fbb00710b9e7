"""`probe.exec` runs a bare `python` as the agent's own interpreter, as docs/config.md says."""

from __future__ import annotations

import asyncio
import sys

from agent.config.component import ProbeSettings
from agent.observe.probes import probe_exec
from agent.supervise.process import Reaper
from tests.helpers import run_async

# Exits 0 only when run by this very interpreter.
CHECK = f"import sys; sys.exit(0 if sys.executable == {sys.executable!r} else 3)"


def test_a_bare_python_in_an_exec_probe_is_the_agents_interpreter() -> None:
    settings = ProbeSettings.model_validate({"exec": {"command": ["python", "-c", CHECK]}})

    async def main() -> str:
        reaper = Reaper(asyncio.get_running_loop())
        try:
            # No `python` on this PATH: only the substitution can find an interpreter.
            return await probe_exec(reaper, settings, 0, {"PATH": "/nonexistent"})
        finally:
            reaper.close()

    assert run_async(main()) == "exit 0"
