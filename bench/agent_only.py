"""Agent-only figures: /metrics latency and RSS at M components, and the sample/probe cycle cost.

/metrics: an agent with M components of 2 replicas each (real `sleep` processes), default settings.
After every child runs and a resource sample has covered them all, the bench scrapes /metrics
sequentially (`scrapes` times, 20 ms apart, so the agent's 5 s sampler lands inside the series as it
would for Prometheus) and records the latency to the last byte, the body size, and the agent's RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.configs import Setup
from bench.launch import Fleet, Instance, start_and_wait
from bench.stats import summary_ms

REPLICAS = 2


@dataclass
class MetricsResult:
    components: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    body_bytes: int = 0
    series: int = 0
    rss: int = 0
    cpu_per_scrape_ms: float = 0.0
    startup_s: float = 0.0


def _covered(client: httpx.Client, url: str, last: str) -> bool:
    """A resource sample has covered the last component (its RSS is in the body, above 0)."""
    text = client.get(url, headers={"Accept-Encoding": "identity"}).text
    needle = f'orchestrator_component_resident_memory_bytes{{component="{last}"}} '
    return any(line.startswith(needle) and float(line.rsplit(" ", 1)[1]) > 0 for line in text.splitlines())


def wait_for_sample(client: httpx.Client, inst: Instance, last: str, timeout: float, what: str) -> None:
    """Poll /metrics until a resource sample covered component `last`; TimeoutError after `timeout` s."""
    url = inst.url + "/metrics"
    deadline = time.monotonic() + timeout
    while not _covered(client, url, last):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}no resource sample covered every component within {timeout:.0f} s")
        inst.check_alive()
        time.sleep(0.5)


def metrics_latency(root: Path, components: int, scrapes: int) -> MetricsResult:
    """Scrape an agent with `components` x 2 sleeping replicas."""
    fleet = Fleet(root)
    result = MetricsResult(components)
    try:
        inst = fleet.add(Setup("agent", components, replicas=REPLICAS))
        start_and_wait([inst], timeout=180.0, on_each=lambda i, s: setattr(result, "startup_s", s))
        url = inst.url + "/metrics"
        proc = psutil.Process(inst.pid)
        # At 500 components one resource sample blocks the agent's loop for many seconds (see cycle).
        with httpx.Client(timeout=90.0) as client:
            wait_for_sample(client, inst, f"c{components - 1}", 90.0, "")
            latencies: list[float] = []
            times = proc.cpu_times()
            cpu0 = times.user + times.system
            for _ in range(scrapes):
                began = time.perf_counter()
                response = client.get(url)
                latencies.append(time.perf_counter() - began)
                response.raise_for_status()
                result.body_bytes = len(response.content)
                result.rss = max(result.rss, int(proc.memory_info().rss))
                time.sleep(0.02)
            times = proc.cpu_times()
            result.cpu_per_scrape_ms = 1000.0 * (times.user + times.system - cpu0) / max(1, scrapes)
            result.series = sum(1 for line in response.text.splitlines() if line and not line.startswith("#"))
        result.latency_ms = summary_ms(latencies)
        return result
    finally:
        fleet.close()


def cycle_cost(sizes: list[int], repeats: int, timeout: float = 600.0) -> list[dict[str, Any]]:
    """Run bench.cycle in its own process (it owns SIGCHLD there) and return its measurements."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.cycle", "--sizes", ",".join(map(str, sizes)), "--repeats", str(repeats)],
        capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.cycle failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    for row in rows:
        row["sample_us_per_component"] = 1e6 * row["sample_cpu_s"] / row["n"]
        row["probe_us_per_component"] = 1e6 * row["probe_round_cpu_s"] / row["n"]
    return rows
