"""`python -m bench.tls`: what TLS and basic auth cost a scrape, the agent beside node_exporter.

Both read the same exporter-toolkit web config file (made by `agent tls init`), in three modes:
plain HTTP, TLS, TLS with basic auth. For each, GET /metrics over one kept-alive connection (what
Prometheus does) and over a new connection each time (a TLS handshake per request), with the
server's CPU per request. node_exporter is Debian's `prometheus-node-exporter` (with the cpu,
meminfo, loadavg and filesystem collectors, so its body is of the agent's order).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import yaml

from bench.launch import agent_argv
from bench.ports import free_port

MODES = ("plain", "tls", "tls+basic")


@dataclass
class Row:
    target: str
    mode: str
    body_kb: float
    kept_p50: float
    kept_p99: float
    new_p50: float
    new_p99: float
    cpu_ms: float


def _ms(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return 1000 * statistics.median(ordered), 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _web_configs(root: Path) -> dict[str, Path | None]:
    """The three web config files (None: plain), from one `agent tls init`."""
    certs = root / "certs"
    agent = Path(sys.executable).parent / "agent"
    cli = [str(agent)] if agent.exists() else [sys.executable, "-m", "agent"]
    subprocess.run([*cli, "tls", "init", str(certs)], check=True, capture_output=True)
    full = yaml.safe_load((certs / "web-config.yml").read_text())
    tls_only = {"tls_server_config": full["tls_server_config"]}
    (certs / "tls-only.yml").write_text(yaml.safe_dump(tls_only))
    return {"plain": None, "tls": certs / "tls-only.yml", "tls+basic": certs / "web-config.yml"}


@contextlib.contextmanager
def _running(argv: list[str], ready: Callable[[], bool]) -> Iterator[psutil.Process]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv[0]} did not answer within 60 s")
            time.sleep(0.05)
        yield psutil.Process(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _measure(target: str, mode: str, url: str, proc: psutil.Process, verify: str | bool,
             auth: tuple[str, str] | None, kept: int, fresh: int) -> Row:
    with httpx.Client(verify=verify, auth=auth, timeout=10) as client:
        for _ in range(10):  # warm up: caches, the bcrypt check the agent caches
            client.get(url).raise_for_status()
        cpu0 = sum(proc.cpu_times()[:2])
        kept_times = []
        for _ in range(kept):
            began = time.perf_counter()
            body = client.get(url)
            kept_times.append(time.perf_counter() - began)
            body.raise_for_status()
        cpu_kept = sum(proc.cpu_times()[:2]) - cpu0
    new_times = []
    for _ in range(fresh):
        with httpx.Client(verify=verify, auth=auth, timeout=10) as client:
            began = time.perf_counter()
            client.get(url).raise_for_status()
            new_times.append(time.perf_counter() - began)
    return Row(target, mode, len(body.content) / 1024, *_ms(kept_times), *_ms(new_times), 1000 * cpu_kept / kept)


def run(components: int, kept: int, fresh: int) -> list[Row]:
    exporter = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        root = Path(tmp)
        configs = _web_configs(root)
        password = (root / "certs" / "metrics.password").read_text().strip()
        ca = str(root / "certs" / "ca.crt")
        for mode in MODES:
            web = configs[mode]
            scheme = "https" if web else "http"
            verify: str | bool = ca if web else True
            auth = ("prometheus", password) if mode == "tls+basic" else None

            def answers(url: str, verify: str | bool = verify, auth: tuple[str, str] | None = auth) -> bool:
                try:
                    return httpx.get(url, verify=verify, auth=auth, timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            port = free_port()
            config = {"agent": {"listen": f"127.0.0.1:{port}", "state_dir": str(root / f"state-{mode}"),
                                **({"web_config_file": str(web)} if web else {})},
                      "components": {f"c{i:03d}": {"command": ["sleep", "100000"]} for i in range(components)}}
            path = root / f"agent-{mode}.yaml"
            path.write_text(yaml.safe_dump(config))
            url = f"{scheme}://127.0.0.1:{port}/metrics"
            with _running(agent_argv(path), lambda url=url: answers(url)) as proc:
                rows.append(_measure(f"agent ({components} components)", mode, url, proc, verify, auth, kept, fresh))
            if exporter is None:
                continue
            port = free_port()
            argv = [exporter, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                    "--collector.cpu", "--collector.meminfo", "--collector.loadavg", "--collector.filesystem",
                    *([f"--web.config.file={web}"] if web else [])]
            url = f"{scheme}://127.0.0.1:{port}/metrics"
            with _running(argv, lambda url=url: answers(url)) as proc:
                rows.append(_measure("node_exporter", mode, url, proc, verify, auth, kept, fresh))
    if exporter is None:
        print("note: node_exporter not found (Debian: prometheus-node-exporter); agent rows only", file=sys.stderr)
    return rows


def render(rows: list[Row]) -> str:
    lines = ["| server | mode | body | kept-alive p50 / p99 | new connection p50 / p99 | server CPU / request |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.target} | {r.mode} | {r.body_kb:.0f} KB | {r.kept_p50:.2f} / {r.kept_p99:.2f} ms "
                     f"| {r.new_p50:.2f} / {r.new_p99:.2f} ms | {r.cpu_ms:.2f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--components", type=int, default=50, help="sleeping components in the agent (default 50)")
    parser.add_argument("--requests", type=int, default=300, help="requests over one connection (default 300)")
    parser.add_argument("--connections", type=int, default=100,
                        help="requests on a new connection each (default 100)")
    args = parser.parse_args(argv)
    print(f"# bench.tls on {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(render(run(args.components, args.requests, args.connections)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
