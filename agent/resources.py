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


class ProcFS:
    """Reads process trees straight from /proc (one stat file per process, no host-wide scan).

    The root is injectable, so tests can point it at a fixture tree. Children come from
    /proc/<pid>/task/<tid>/children (Linux 3.5+ with CONFIG_PROC_CHILDREN); without it, one scan of
    every /proc/<pid>/stat per pass builds the parent map.
    """

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self.tick = float(os.sysconf("SC_CLK_TCK"))
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.children_files = os.path.exists(f"{root}/self/task/{os.getpid()}/children") or os.path.exists(
            f"{root}/{os.getpid()}/task/{os.getpid()}/children")
        self._ppid_map: dict[int, list[int]] | None = None

    def stat(self, pid: int) -> tuple[int, float, int, int] | None:
        """(ppid, CPU seconds incl. reaped children, threads, RSS bytes), or None when gone."""
        try:
            with open(f"{self.root}/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return None
        fields = data[data.rfind(b")") + 2:].split()
        try:
            ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            return int(fields[1]), ticks / self.tick, int(fields[17]), int(fields[21]) * self.page
        except (IndexError, ValueError):
            return None

    def state(self, pid: int) -> str | None:
        """The one-letter state of a process ('Z' for a zombie), or None when it is gone."""
        try:
            with open(f"{self.root}/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return None
        return data[data.rfind(b")") + 2:][:1].decode() or None

    def fds(self, pid: int) -> int:
        try:
            return len(os.listdir(f"{self.root}/{pid}/fd"))
        except OSError:
            return 0

    def begin_pass(self) -> None:
        """Forget the previous pass's parent map (only used without children files)."""
        self._ppid_map = None

    def children(self, pid: int) -> list[int]:
        if self.children_files:
            out: list[int] = []
            try:
                tids = os.listdir(f"{self.root}/{pid}/task")
            except OSError:
                return out
            for tid in tids:
                try:
                    with open(f"{self.root}/{pid}/task/{tid}/children", "rb") as f:
                        out.extend(int(c) for c in f.read().split())
                except OSError:
                    continue
            return out
        if self._ppid_map is None:
            self._ppid_map = {}
            for name in os.listdir(self.root):
                if name.isdigit():
                    st = self.stat(int(name))
                    if st is not None:
                        self._ppid_map.setdefault(st[0], []).append(int(name))
        return self._ppid_map.get(pid, [])

    def tree(self, root: int) -> tuple[Usage, list[int]]:
        """Usage summed over a process and its descendants, and their pids."""
        usage = Usage()
        pids: list[int] = []
        stack = [root]
        while stack:
            pid = stack.pop()
            st = self.stat(pid)
            if st is None:
                continue
            pids.append(pid)
            usage.cpu_seconds += st[1]
            usage.threads += st[2]
            usage.rss_bytes += st[3]
            usage.open_fds += self.fds(pid)
            stack.extend(self.children(pid))
        return usage, pids


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


@dataclass
class Sample:
    """One pass over every component: totals per component and RSS per live replica."""

    components: dict[str, Usage]
    replicas: list[tuple[str, int, int, int, float]]  # component, replica, pid, rss, tree CPU seconds
    host: HostUsage


class ResourceMonitor:
    """Samples every component and the host each interval, off the event loop; scrapes read the result.

    CPU seconds count reaped descendants through their parents' cutime/cstime; what a replica had used
    when it ended is kept, so the exported counter never goes backwards.
    """

    def __init__(self, supervisor: Supervisor, interval: float, mountpoints: list[str],
                 proc_root: str = "/proc") -> None:
        self.sup = supervisor
        self.interval = interval
        self.mountpoints = mountpoints
        self.procfs = ProcFS(proc_root)
        self.components: dict[str, Usage] = {name: Usage() for name in supervisor.components}
        self._done: dict[str, float] = dict.fromkeys(supervisor.components, 0.0)  # CPU of ended replicas
        self._last_root_cpu: dict[int, float] = {}
        self._roots: dict[str, set[int]] = {name: set() for name in supervisor.components}
        self.host = HostUsage()
        # When the figures were last read (a scrape, `agent status`); starts "now" for a first pass.
        self.last_read = time.monotonic()
        psutil.cpu_percent(interval=None)  # prime the host CPU counter


    def mark_read(self) -> None:
        """Someone reads the figures now (a scrape, `agent status`): keep sampling."""
        self.last_read = time.monotonic()
    def _targets(self) -> dict[str, dict[int, int]]:
        return {name: {r.pid: index for index, r in rt.replicas.items() if r.pid is not None}
                for name, rt in self.sup.components.items()}

    def collect(self, targets: dict[str, dict[int, int]]) -> Sample:
        """Read everything for these live replicas (pure reads: safe in a worker thread)."""
        self.procfs.begin_pass()
        components: dict[str, Usage] = {}
        replicas = []
        for name, live in targets.items():
            usage = Usage()
            for pid, index in live.items():
                tree, _ = self.procfs.tree(pid)
                usage.cpu_seconds += tree.cpu_seconds
                usage.rss_bytes += tree.rss_bytes
                usage.threads += tree.threads
                usage.open_fds += tree.open_fds
                replicas.append((name, index, pid, tree.rss_bytes, tree.cpu_seconds))
            components[name] = usage
        return Sample(components, replicas, sample_host(self.mountpoints))

    def apply(self, targets: dict[str, dict[int, int]], sample: Sample) -> None:
        """Fold a sample into the exported state and feed memory limits to the supervisor (on the loop)."""
        for name, live in targets.items():
            for gone in self._roots[name] - live.keys():
                self._done[name] += self._last_root_cpu.pop(gone, 0.0)
            self._roots[name] = set(live)
        for _name, _index, pid, _rss, cpu in sample.replicas:
            self._last_root_cpu[pid] = cpu
        for name, usage in sample.components.items():
            usage.cpu_seconds = max(usage.cpu_seconds + self._done[name], self.components[name].cpu_seconds)
            self.components[name] = usage
        for name, index, pid, rss, _cpu in sample.replicas:
            self.sup.report_memory(name, index, pid, rss)
        self.host = sample.host

    def sample_once(self) -> None:
        """One pass, in the calling thread (tests, benchmarks)."""
        targets = self._targets()
        self.apply(targets, self.collect(targets))

    def needed(self) -> bool:
        """Sampling serves memory limits and scrapes: skip it while neither wants it."""
        if any(rt.spec.limits.memory_bytes is not None for rt in self.sup.components.values()):
            return True
        return time.monotonic() - self.last_read < 3 * self.interval

    async def run(self) -> None:
        """Sample on the interval (reads run in a worker thread) while anyone needs the figures."""
        while True:
            if not self.needed():
                await asyncio.sleep(self.interval)
                continue
            try:
                targets = self._targets()
                sample = await asyncio.to_thread(self.collect, targets)
                self.apply(targets, sample)
            except Exception:
                log.exception("resource sampling failed")
            await asyncio.sleep(self.interval)
