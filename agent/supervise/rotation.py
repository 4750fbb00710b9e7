"""The log rotation loop: every replica's log (and separate stderr log) checked as often as it grows."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from agent.supervise.logs import LogPath, LogRotator
from agent.supervise.replica import replica_err_path, replica_log_path

if TYPE_CHECKING:
    from agent.config.models import AgentSettings
    from agent.supervise.supervisor import Supervisor

LAYOUT_SETTLE = 0.1  # seconds the log rotation waits after a replica came or went, for the others of a burst


async def rotate_logs_forever(sup: Supervisor) -> None:
    """Rotate every replica's log when it outgrows `log_max_bytes`, checked as often as it grows.

    The settings are the supervisor's config in force, so a reload changes them on the next round. The
    list of logs is rebuilt only when a replica or a component comes or goes (at 1,000 components,
    rebuilding it each round cost the loop 2-3 ms), and such a change wakes the loop at once (after
    `LAYOUT_SETTLE`, so a burst of starts is one rebuild): a new log is looked at within that.
    """
    settings: AgentSettings | None = None
    rotator = LogRotator(1, 0, 1.0)
    paths: list[LogPath] = []
    changed = asyncio.Event()
    changed.set()
    sup.layout_listeners.append(changed.set)
    # Stat, copy and truncate in a thread: copying a large log must not stall the event loop. A thread
    # of its own, so a check is never queued behind other blocking work (a /proc scan, a state write).
    loop = asyncio.get_running_loop()
    thread = ThreadPoolExecutor(1, thread_name_prefix="log-rotation")
    try:
        while True:
            if settings is not sup.config.agent:
                settings = sup.config.agent
                rotator = LogRotator(settings.log_max_bytes, settings.log_backups,
                                     max(1.0, settings.resources.interval))
                changed.set()
            if changed.is_set():
                changed.clear()
                paths = [str(replica_log_path(settings.log_dir, rt.name, index))
                         for rt in sup.components.values() for index in list(rt.replicas)]
                paths += [str(err) for rt in sup.components.values() for index in list(rt.replicas)
                          if (err := replica_err_path(settings.log_dir, rt.name, rt.spec, index)) is not None]
            delay = await loop.run_in_executor(thread, rotator.check, paths)
            if delay <= 0:
                await asyncio.sleep(0)  # more logs are due: the loop runs between two batches
                continue
            deadline = loop.time() + delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), delay)
            if changed.is_set():  # woken early: a burst of starts settles, not past the next log due
                await asyncio.sleep(max(0.0, min(LAYOUT_SETTLE, deadline - loop.time())))
    finally:
        with contextlib.suppress(ValueError):
            sup.layout_listeners.remove(changed.set)
        thread.shutdown(wait=False)  # a copy under way finishes on its own; the loop does not wait for it
