"""The agent's own process_* series, read from /proc at scrape time, with the names, help and values
prometheus_client's ProcessCollector gives them (the daemon does not import prometheus_client)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from agent.export.exposition import Family

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def boot_time(proc: str = "/proc") -> float | None:
    """The host's boot time (epoch s), None when /proc cannot say."""
    try:
        with open(f"{proc}/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


class ProcessFamilies:
    """process_cpu_seconds_total, process_resident_memory_bytes and the others for this process."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.btime = boot_time(proc)

    def families(self) -> Iterator[Family]:
        if self.btime is None:
            return
        me = f"{self.proc}/self"
        try:
            with open(f"{me}/stat", "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
        except OSError:
            pass
        else:
            yield Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", value=float(parts[20]))
            yield Family("process_resident_memory_bytes", "Resident memory size in bytes.",
                         value=float(parts[21]) * PAGE_SIZE)
            yield Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                         value=float(parts[19]) / TICKS + self.btime)
            yield Family("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                         value=(float(parts[11]) + float(parts[12])) / TICKS, typ="counter")
        try:
            max_fds = None
            with open(f"{me}/limits", "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open file"):
                        max_fds = float(line.split()[3])
                        break
            open_fds = len(os.listdir(f"{me}/fd"))
        except OSError:
            return
        yield Family("process_open_fds", "Number of open file descriptors.", value=open_fds)
        if max_fds is not None:
            yield Family("process_max_fds", "Maximum number of open file descriptors.", value=max_fds)
