"""Resource sampling with psutil: each component's process trees and the host, on their own interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from agent.supervise.procfs import ProcFS, Usage

if TYPE_CHECKING:
    from agent.config.settings import ResourceSettings
    from agent.supervise.replica import Replica, Runtime
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.resources")

SLICE = 100  # replicas read in one go by a pass (collect_in_slices)
SLICE_PAUSE = 0.005  # seconds between two slices: the loop has the interpreter to itself meanwhile
WAKE_DELAY = 1.0  # seconds after an unsampled replica starts before the early pass: it has its RSS by then


@dataclass
class HostUsage:
    cpu_ratio: float = 0.0
    memory_available: int = 0
    memory_total: int = 0
    disk_free: dict[str, int] = field(default_factory=dict)
    disk_total: dict[str, int] = field(default_factory=dict)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sampled_at: float = 0.0


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
        # Per component, kept in step with the supervisor's components on every pass (`_follow`): a
        # reload adds, removes and replaces components while this runs.
        self.components: dict[str, Usage] = {}
        self._done: dict[str, float] = {}  # CPU seconds of each component's ended replicas
        self._owners: dict[str, Runtime] = {}  # the runtime the figures of each name belong to
        self._last_root_cpu: dict[int, float] = {}
        # Each component's root pids at the last sample: a tuple, smaller than a set.
        self._roots: dict[str, tuple[int, ...]] = {}
        self._follow()
        self.host = HostUsage()
        # When the figures were last read (a scrape, `agent status`); starts "now" for a first pass.
        self.last_read = time.monotonic()
        psutil.cpu_percent(interval=None)  # prime the host CPU counter
        # Set when a replica starts in a component with no figures yet: a pass follows soon instead of
        # after the interval, so a long one (the seed's cycle_interval: 300) shows no CPU 0 / RSS 0 B
        # for minutes after the start (the first pass runs before the components are up).
        self._wake = asyncio.Event()
        supervisor.spawn_listeners.append(self._replica_started)

    def configure(self, settings: ResourceSettings) -> None:
        """A reload's `agent.resources`: from the next pass on."""
        self.interval = settings.interval
        self.mountpoints = settings.mountpoints

    def _replica_started(self, rt: Runtime, rep: Replica) -> None:
        usage = self.components.get(rt.name)
        if usage is None or usage.rss_bytes == 0:
            self._wake.set()

    async def _pause(self) -> None:
        """Until the next pass: the interval, or shortly after a replica started unsampled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.interval)
        if self._wake.is_set():
            await asyncio.sleep(min(WAKE_DELAY, self.interval))  # one pass for a burst of starts
            self._wake.clear()

    def hand_over(self) -> dict[str, Any]:
        """Each component's CPU seconds, of its ended replicas and per live root, for the next image
        (`agent reexec`, agent/daemon/carry.py): the replicas it adopts are the same processes, so the
        counter goes on."""
        return {name: {"cpu": usage.cpu_seconds, "done": self._done.get(name, 0.0),
                       "roots": {str(pid): self._last_root_cpu.get(pid, 0.0) for pid in self._roots.get(name, ())}}
                for name, usage in self.components.items()}

    def adopt(self, document: Any) -> None:
        """Go on from the previous image's figures (`hand_over`); anything of another shape is skipped."""
        for name, entry in document.items() if isinstance(document, dict) else ():
            if name not in self.components or not isinstance(entry, dict):
                continue
            cpu, done, roots = entry.get("cpu"), entry.get("done"), entry.get("roots")
            if not (isinstance(cpu, int | float) and isinstance(done, int | float) and isinstance(roots, dict)):
                continue
            self.components[name].cpu_seconds = float(cpu)
            self._done[name] = float(done)
            pids = [(int(pid), float(used)) for pid, used in roots.items()
                    if pid.isdigit() and isinstance(used, int | float)]
            self._roots[name] = tuple(pid for pid, _ in pids)
            self._last_root_cpu.update(pids)

    def mark_read(self) -> None:
        """Someone reads the figures now (a scrape, `agent status`): keep sampling."""
        self.last_read = time.monotonic()

    def _targets(self) -> dict[str, dict[int, int]]:
        return {name: {r.pid: index for index, r in rt.replicas.items() if r.pid is not None}
                for name, rt in self.sup.components.items()}

    def collect(self, targets: dict[str, dict[int, int]], host: bool = True) -> Sample:
        """Read everything for these live replicas (pure reads: safe in a worker thread); the host's
        figures too unless `host` is false (they are then left at zero)."""
        self.procfs.begin_pass()
        components: dict[str, Usage] = {}
        replicas = []
        for name, live in targets.items():
            usage = Usage()
            for pid, index in live.items():
                tree, pids = self.procfs.tree(pid)
                if not pids:  # ended since the targets were taken: what it used stays as last sampled
                    continue
                usage.cpu_seconds += tree.cpu_seconds
                usage.rss_bytes += tree.rss_bytes
                usage.threads += tree.threads
                usage.open_fds += tree.open_fds
                replicas.append((name, index, pid, tree.rss_bytes, tree.cpu_seconds))
            components[name] = usage
        return Sample(components, replicas, sample_host(self.mountpoints) if host else HostUsage())

    async def collect_in_slices(self, targets: dict[str, dict[int, int]]) -> Sample:
        """`collect` in a worker thread, about SLICE replicas at a time with a pause between.

        The reads compete with the event loop for the interpreter lock and, on a small machine, for a
        core: one pass over 1,000 replicas in one go slowed every restart that fell in it. In slices, a
        restart meets at most one slice. Without the kernel's children files every slice would scan all
        of /proc for parents: then it is one pass.
        """
        if not self.procfs.children_files:
            return await asyncio.to_thread(self.collect, targets)
        slices: list[dict[str, dict[int, int]]] = [{}]
        count = 0
        for name, live in targets.items():
            if count >= SLICE:
                slices.append({})
                count = 0
            slices[-1][name] = live
            count += max(1, len(live))
        sample = Sample({}, [], HostUsage())
        for i, part in enumerate(slices):
            if i:
                await asyncio.sleep(SLICE_PAUSE)
            got = await asyncio.to_thread(self.collect, part, i == len(slices) - 1)
            sample.components.update(got.components)
            sample.replicas += got.replicas
            sample.host = got.host
        return sample

    def current(self) -> dict[str, Usage]:
        """The figures per component as the supervisor's components are now: a scrape or `agent status`
        between a reload and the next pass shows no figures of a removed component under the name of one
        added again (it did, and the counter then went back; found by the interleaving harness)."""
        self._follow()
        return self.components

    def _follow(self) -> None:
        """Follow the supervisor's components as they are now (on the loop): an added one gets fresh
        figures, a removed one is dropped (its series leave /metrics), a name given a new runtime (removed,
        then added again) starts afresh. A kept component keeps its figures across a reload, so the CPU
        counter of one whose replicas a reload replaced never goes backwards."""
        current = self.sup.components
        if len(self._owners) == len(current) and all(self._owners.get(n) is rt for n, rt in current.items()):
            return
        for name in [n for n, rt in self._owners.items() if current.get(n) is not rt]:
            del self._owners[name]
            self.components.pop(name, None)
            self._done.pop(name, None)
            for root in self._roots.pop(name, ()):
                self._last_root_cpu.pop(root, None)
        for name, rt in current.items():
            if name not in self._owners:
                self._owners[name] = rt
                self.components[name] = Usage()
                self._done[name] = 0.0

    def apply(self, targets: dict[str, dict[int, int]], sample: Sample,
              owners: dict[str, Runtime] | None = None) -> None:
        """Fold a sample into the exported state and feed memory limits to the supervisor (on the loop).

        `owners` are the runtimes the targets were taken from: a component that a reload removed or
        replaced by a new one of the same name meanwhile is left out of this sample.
        """
        self._follow()
        stale = {name for name in targets if name not in self._owners}
        if owners is not None:
            stale.update(name for name, rt in owners.items() if self._owners.get(name) is not rt)
        if stale:
            targets = {n: live for n, live in targets.items() if n not in stale}
            sample = Sample({n: u for n, u in sample.components.items() if n not in stale},
                            [r for r in sample.replicas if r[0] not in stale], sample.host)
        for name, live in targets.items():
            for root in self._roots.get(name, ()):
                if root not in live:
                    self._done[name] += self._last_root_cpu.pop(root, 0.0)
            self._roots[name] = tuple(live)
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
        owners = dict(self.sup.components)
        targets = self._targets()
        self.apply(targets, self.collect(targets), owners)

    def needed(self) -> bool:
        """Sampling serves memory limits and scrapes: skip it while neither wants it."""
        if any(rt.spec.limits.memory_bytes is not None for rt in self.sup.components.values()):
            return True
        return time.monotonic() - self.last_read < 3 * self.interval

    async def run(self) -> None:
        """Sample on the interval (reads run in a worker thread) while anyone needs the figures."""
        while True:
            if not self.needed():
                await self._pause()
                continue
            try:
                await self._pass()
            except Exception:
                log.exception("resource sampling failed")
            await self._pause()

    async def _pass(self) -> None:
        # A pass's targets and sample go with it, not held over the pause (they grow with the components).
        owners = dict(self.sup.components)
        targets = self._targets()
        self.apply(targets, await self.collect_in_slices(targets), owners)
