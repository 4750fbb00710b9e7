"""Idle overhead: each supervisor's own CPU seconds and peak RSS over a window, with N children.

Setups:
- agent, probes+metrics on: a tcp probe every 5 s on every component, against one tiny listener
  that the bench runs itself (so every supervisor still has exactly N identical children), and
  /metrics scraped every 5 s;
- agent, probes+metrics off: no probes, no scrapes (the resource sampler still runs every 5 s, its
  default: it cannot be switched off);
- agent, sampler at 1 h: as "off", with resources.interval 1h, to show what the sampler costs;
- supervisord and circus, default settings, and at their restart-aggressive settings.
The agent's resource sampler costs more with every process on the host (see bench.cycle), so each of
the two sampling agents gets a window of its own with only its N children; the other five setups
share a third window. Only the supervisor's own process counts (psutil cpu_times user+system, not
its children's); the agent's helper process (its guardian) is reported separately.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.configs import Setup
from bench.launch import Fleet, Instance, start_and_wait
from bench.ports import free_port
from bench.procfs import child_marker

SCRAPE_EVERY = 5.0
RSS_EVERY = 0.5
SETTLE = 2.0  # after all children run: past the first probes and supervisord's startsecs

# A tiny TCP listener for the probes: accepts and closes, nothing else.
_LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""

@dataclass
class Usage:
    cpu_seconds: float = 0.0
    cpu_percent: float = 0.0
    peak_rss: int = 0
    hwm_rss: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _hwm(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _start_listener(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", _LISTENER, str(port)], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    return proc


def _helper_rss(agent_pid: int) -> int:
    """RSS of the agent's children that are not bench children (its guardian helper)."""
    total = 0
    try:
        children = psutil.Process(agent_pid).children()
    except psutil.Error:
        return 0
    for child in children:
        if child_marker(child.pid) is None:
            with contextlib.suppress(psutil.Error):
                total += int(child.memory_info().rss)
    return total


def _window(fleet: Fleet, setups: dict[str, Setup], window: float, scrape: str | None) -> dict[str, Usage]:
    instances: dict[str, Instance] = {name: fleet.add(s) for name, s in setups.items()}
    try:
        start_and_wait(list(instances.values()), timeout=120.0)
        time.sleep(SETTLE)
        procs = {name: psutil.Process(inst.pid) for name, inst in instances.items()}
        usage = {name: Usage() for name in instances}
        cpu0 = {name: _cpu(p) for name, p in procs.items()}
        scrapes = 0
        started = time.monotonic()
        next_scrape = started
        with httpx.Client(timeout=30.0) as client:
            while True:
                now = time.monotonic()
                if now - started >= window:
                    break
                for name, proc in procs.items():
                    usage[name].peak_rss = max(usage[name].peak_rss, int(proc.memory_info().rss))
                if scrape is not None and now >= next_scrape:
                    client.get(instances[scrape].url + "/metrics").raise_for_status()
                    scrapes += 1
                    next_scrape += SCRAPE_EVERY
                for inst in instances.values():
                    inst.check_alive()
                time.sleep(min(RSS_EVERY, max(0.0, started + window - time.monotonic())))
        elapsed = time.monotonic() - started
        for name, proc in procs.items():
            u = usage[name]
            u.cpu_seconds = _cpu(proc) - cpu0[name]
            u.cpu_percent = 100.0 * u.cpu_seconds / elapsed
            u.peak_rss = max(u.peak_rss, int(proc.memory_info().rss))
            u.hwm_rss = _hwm(proc.pid)
            if name.startswith("agent"):
                u.extra["helper_rss"] = _helper_rss(proc.pid)
        if scrape is not None:
            usage[scrape].extra["scrapes"] = scrapes
        return usage
    finally:
        for inst in instances.values():
            inst.stop()


def idle_overhead(root: Path, n: int, window: float) -> dict[str, Usage]:
    """Three windows of `window` seconds each (see the module doc); usage per setup."""
    port = free_port()
    listener = _start_listener(port)
    fleet = Fleet(root)
    usage: dict[str, Usage] = {}
    try:
        usage |= _window(fleet, {"agent_on": Setup("agent", n, probe_port=port)}, window, scrape="agent_on")
        usage |= _window(fleet, {"agent_off": Setup("agent", n)}, window, scrape=None)
        usage |= _window(fleet, {
            "agent_nosample": Setup("agent", n, sample_interval="1h"),
            "supervisord": Setup("supervisord", n),
            "circus": Setup("circus", n),
            "supervisord_aggr": Setup("supervisord", n, aggressive=True),
            "circus_aggr": Setup("circus", n, aggressive=True),
        }, window, scrape=None)
        return usage
    finally:
        fleet.close()
        listener.send_signal(signal.SIGKILL)
        listener.wait(5)
