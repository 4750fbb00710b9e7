"""The log rotation loop: every replica's log (and separate stderr log) checked as often as it grows,
wherever a reload left the replica writing."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from agent.supervise.logs import LogPath, LogRotator
from agent.supervise.replica import replica_err_path, replica_log_path

if TYPE_CHECKING:
    from pathlib import Path

    from agent.config.component import Component
    from agent.config.models import Config
    from agent.config.settings import AgentSettings
    from agent.supervise.replica import Replica, Runtime
    from agent.supervise.supervisor import Supervisor

LAYOUT_SETTLE = 0.1  # seconds the log rotation waits after a replica came or went, for the others of a burst


def _paths(log_dir: Path, name: str, spec: Component, index: int) -> tuple[str, ...]:
    log = str(replica_log_path(log_dir, name, index))
    err = replica_err_path(log_dir, name, spec, index)
    return (log,) if err is None else (log, str(err))


class LogPlaces:
    """Which files the replicas write: the config's, and those of replicas started before a reload.

    A reload applies `log_dir` (and a component's `stderr`) from each replica's next start on; until
    then the replica writes where it was started, and those files must stay rotated. Only replicas
    writing elsewhere than the config in force says are remembered (until their next start). `changed`
    is set when the list of files changes: a replica or a component came or went, a reload moved the
    files, or a replica started writing elsewhere.
    """

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.changed = asyncio.Event()
        self.changed.set()
        self._config: Config = sup.config  # the config the remembered places are relative to
        self._elsewhere: dict[tuple[str, int], tuple[str, ...]] = {}
        sup.layout_listeners.append(self.changed.set)
        sup.spawn_listeners.append(self._replica_started)

    def _follow(self) -> None:
        """After a reload: the live replicas started before it write where the previous config said."""
        old, new = self._config, self.sup.config
        if new is old:
            return
        self._config = new
        self.changed.set()
        for rt in self.sup.components.values():
            before = old.components.get(rt.name)
            if before is None:  # added by the reload: started under the new config
                continue
            for index, rep in list(rt.replicas.items()):
                key = (rt.name, index)
                if rep.pid is None or key in self._elsewhere:
                    continue
                were = _paths(old.agent.log_dir, rt.name, before, index)
                if were != _paths(new.agent.log_dir, rt.name, new.components[rt.name], index):
                    self._elsewhere[key] = were

    def _replica_started(self, rt: Runtime, rep: Replica) -> None:
        self._follow()
        key = (rt.name, rep.index)
        # What the spawn opened: the supervisor's log_dir and the runtime's spec (a reload may not have
        # given this component its new spec yet when it restarts).
        where = _paths(self.sup.log_dir, rt.name, rt.spec, rep.index)
        config = self.sup.config
        if where == _paths(config.agent.log_dir, rt.name, config.components.get(rt.name, rt.spec), rep.index):
            if self._elsewhere.pop(key, None) is not None:
                self.changed.set()
        elif self._elsewhere.get(key) != where:
            self._elsewhere[key] = where
            self.changed.set()

    def paths(self) -> list[LogPath]:
        """Every replica's log (and separate stderr log) as the config in force says, and the files
        replicas started before a reload still write; what was kept of replicas that went is dropped."""
        self._follow()
        self.changed.clear()  # read now: what a reload moved is in this list
        log_dir = self.sup.config.agent.log_dir
        out: list[LogPath] = []
        kept: dict[tuple[str, int], tuple[str, ...]] = {}
        for rt in self.sup.components.values():
            for index in list(rt.replicas):
                here = _paths(log_dir, rt.name, rt.spec, index)
                out += here
                were = self._elsewhere.get((rt.name, index))
                if were is not None:
                    kept[(rt.name, index)] = were
                    out += [p for p in were if p not in here]
        self._elsewhere = kept
        return out

    def close(self) -> None:
        """Stop listening to the supervisor."""
        with contextlib.suppress(ValueError):
            self.sup.layout_listeners.remove(self.changed.set)
        with contextlib.suppress(ValueError):
            self.sup.spawn_listeners.remove(self._replica_started)


async def rotate_logs_forever(sup: Supervisor) -> None:
    """Rotate every replica's log when it outgrows `log_max_bytes`, checked as often as it grows.

    The settings are the supervisor's config in force, so a reload changes them on the next round; the
    files that replicas started before it still write stay in the list (`LogPlaces`). The list of logs
    is rebuilt only when a replica or a component comes or goes, or a reload moves the files (rebuilding
    it each round cost the loop time in proportion to the components), and such a change wakes the loop at once
    (after `LAYOUT_SETTLE`, so a burst of starts is one rebuild): a new log is looked at within that.
    """
    settings: AgentSettings | None = None
    rotator = LogRotator(1, 0, 1.0)
    paths: list[LogPath] = []
    places = LogPlaces(sup)
    changed = places.changed
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
                paths = places.paths()
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
        places.close()
        thread.shutdown(wait=False)  # a copy under way finishes on its own; the loop does not wait for it
