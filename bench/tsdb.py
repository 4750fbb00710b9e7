"""History for `agent backtest` tests and benchmarks: OpenMetrics written, backfilled with promtool into a
data directory, served by a real Prometheus on 127.0.0.1 (a free port), stopped by its PID."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import httpx

from bench.ports import free_port

AGENT = {"job": "orchestrator-agent", "instance": "127.0.0.1:9469"}
Samples = Iterable[tuple[float, float]]
_tick = threading.Event()  # never set: wait(interval) paces a deadline loop


def _labels(labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class OpenMetrics:
    """Writes gauge families, each series' samples in time order (promtool's input), then `# EOF`."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.families: set[str] = set()

    def series(self, name: str, labels: dict[str, str], samples: Samples) -> None:
        """One series; all series of a family must be written one after another."""
        if name not in self.families:
            self.families.add(name)
            self.out.write(f"# TYPE {name} gauge\n")
        prefix = name + _labels({**AGENT, **labels}) + " "
        # repr: the shortest exact form (`:g` keeps 6 digits: a timestamp value would be off by hours).
        self.out.write("".join(f"{prefix}{float(v)!r} {t:.0f}\n" for t, v in samples))

    def close(self) -> None:
        self.out.write("# EOF\n")


def every(start: float, end: float, step: float, value: Callable[[float], float]) -> Samples:
    """Samples of `value(t)` every `step` seconds in [start, end)."""
    t = start
    while t < end:
        yield t, value(t)
        t += step


def backfill(openmetrics: Path, data: Path) -> None:
    """`promtool tsdb create-blocks-from openmetrics`: the samples become TSDB blocks in `data`."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise FileNotFoundError("promtool is not on PATH (Debian package prometheus)")
    data.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data)],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"promtool failed ({done.returncode}): {done.stderr[-2000:]}")


class PrometheusServer:
    """A Prometheus serving a backfilled data directory (no scrapes, no rules)."""

    def __init__(self, data: Path, workdir: Path, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("prometheus") or "prometheus"
        self.data = data
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        config = self.workdir / "prometheus-backtest.yml"
        config.write_text("global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\n")
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=30d",
             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: "
                                   f"{(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"prometheus not ready within {timeout}s")
            _tick.wait(0.05)

    def stop(self) -> None:
        """SIGTERM to its PID, SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
