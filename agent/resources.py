"""Resource sampling with psutil: each component's process trees and the host, on their own interval."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from agent.supervisor import Supervisor

log = logging.getLogger("agent.resources")


@dataclass
class Usage:
    """A component's use, summed over every replica's process tree."""

    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    threads: int = 0
    open_fds: int = 0


@dataclass
class HostUsage:
    cpu_ratio: float = 0.0
    memory_available: int = 0
    memory_total: int = 0
    disk_free: dict[str, int] = field(default_factory=dict)
    disk_total: dict[str, int] = field(default_factory=dict)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sampled_at: float = 0.0


class TreeSampler:
    """Sums CPU, RSS, threads and fds over process trees, keeping psutil handles between samples."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        # CPU seconds of processes that have exited, per root, so the counter never goes backwards.
        self._cpu_base: dict[int, float] = {}
        self._last_cpu: dict[int, dict[int, float]] = {}

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def tree(self, root: int) -> Usage:
        """Usage of one process and all its descendants (exited descendants keep their CPU time)."""
        usage = Usage()
        seen: dict[int, float] = {}
        try:
            top = self._proc(root)
            members = [top, *top.children(recursive=True)]
        except psutil.Error:
            self.forget(root)
            return usage
        for proc in members:
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    seconds = cpu.user + cpu.system
                    usage.rss_bytes += proc.memory_info().rss
                    usage.threads += proc.num_threads()
                    try:
                        usage.open_fds += proc.num_fds()
                    except psutil.AccessDenied:
                        pass
            except psutil.Error:
                continue
            seen[proc.pid] = seconds
        last = self._last_cpu.get(root, {})
        gone = sum(v for pid, v in last.items() if pid not in seen)
        self._cpu_base[root] = self._cpu_base.get(root, 0.0) + gone
        self._last_cpu[root] = seen
        usage.cpu_seconds = self._cpu_base[root] + sum(seen.values())
        return usage

    def forget(self, root: int) -> float:
        """Drop a root that exited; returns the CPU seconds it had accumulated."""
        self._procs.pop(root, None)
        total = self._cpu_base.pop(root, 0.0) + sum(self._last_cpu.pop(root, {}).values())
        return total


def sample_host(mountpoints: Iterable[str]) -> HostUsage:
    """Host CPU (since the previous call), memory, disks and load averages."""
    mem = psutil.virtual_memory()
    host = HostUsage(
        cpu_ratio=psutil.cpu_percent(interval=None) / 100.0,
        memory_available=mem.available,
        memory_total=mem.total,
        load=os.getloadavg(),
        sampled_at=time.time(),
    )
    for mount in mountpoints:
        try:
            disk = psutil.disk_usage(mount)
        except OSError as exc:
            log.warning("cannot read disk usage of %s: %s", mount, exc)
            continue
        host.disk_free[mount] = disk.free
        host.disk_total[mount] = disk.total
    return host


class ResourceMonitor:
    """Samples every component and the host each interval; the scrape only reads the last sample."""

    def __init__(self, supervisor: Supervisor, interval: float, mountpoints: list[str]) -> None:
        self.sup = supervisor
        self.interval = interval
        self.mountpoints = mountpoints
        self.sampler = TreeSampler()
        self.components: dict[str, Usage] = {name: Usage() for name in supervisor.components}
        self._cpu_done: dict[str, float] = dict.fromkeys(supervisor.components, 0.0)
        self._roots: dict[str, set[int]] = {name: set() for name in supervisor.components}
        self.host = HostUsage()
        psutil.cpu_percent(interval=None)  # prime the host CPU counter

    def sample_once(self) -> None:
        """One pass over every component and the host."""
        for name, rt in self.sup.components.items():
            usage = Usage()
            live = {r.pid: index for index, r in rt.replicas.items() if r.pid is not None}
            for pid in self._roots[name] - live.keys():
                self._cpu_done[name] += self.sampler.forget(pid)
            self._roots[name] = set(live)
            for pid, index in live.items():
                tree = self.sampler.tree(pid)
                usage.cpu_seconds += tree.cpu_seconds
                usage.rss_bytes += tree.rss_bytes
                usage.threads += tree.threads
                usage.open_fds += tree.open_fds
                self.sup.report_memory(name, index, pid, tree.rss_bytes)
            usage.cpu_seconds += self._cpu_done[name]
            self.components[name] = usage
        self.host = sample_host(self.mountpoints)

    async def run(self) -> None:
        """Sample forever on the interval."""
        while True:
            try:
                self.sample_once()
            except Exception:
                log.exception("resource sampling failed")
            await asyncio.sleep(self.interval)
