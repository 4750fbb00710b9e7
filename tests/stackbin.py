"""Helpers for tests of the Prometheus stack: find its binaries (skip without them locally, fail without
them in CI). The short-clock rules come from the generator: scripts.gen_stack.write_fast_rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import end_processes, free_port, missing, wait_for

# Debian package that ships each binary (upstream names the Alertmanager binary `alertmanager`).
PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
    "chromium": "chromium",  # the status page tests (tests/browser.py)
}


def require_binary(*names: str) -> str:
    """Path of the first of `names` on PATH; otherwise `missing` (a failure under CI=true, else a skip)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    packages = sorted({PACKAGES.get(name, name) for name in names})
    missing(f"none of {', '.join(names)} is on PATH: install the Debian package(s) {' '.join(packages)} "
            f"(apt-get install {' '.join(packages)}; ./dev.sh test does this when run as root)")



def spawn_alertmanager(config: Path, data: Path, port: int) -> subprocess.Popen[bytes]:
    """A single Alertmanager (no gossip port) on 127.0.0.1:`port`; the caller ends it by its PID."""
    binary = require_binary("prometheus-alertmanager", "alertmanager")
    return subprocess.Popen([binary, f"--config.file={config}", f"--storage.path={data}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def spawn_prometheus(config: Path, data: Path, port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """A Prometheus on 127.0.0.1:`port`, its output to `log` (else dropped); the caller ends it by its PID."""
    binary = require_binary("prometheus")
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    if log is None:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def rules_prometheus(tmp: Path, rules: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    """A Prometheus evaluating `rules` every second (no scrapes, no Alertmanager), once it is ready; the
    process (ended by the caller, by its PID) and its base URL. Its output is in `tmp`/prometheus.log."""
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(
        {"global": {"evaluation_interval": "1s"}, "rule_files": [str(tmp / "rules.yml")]}))
    port = free_port()
    log = tmp / "prometheus.log"
    proc = spawn_prometheus(tmp / "prometheus.yml", tmp / "data", port, log)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(url + "/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    try:
        wait_for(ready, 60, 0.1, "Prometheus to be ready")
    except BaseException:
        end_processes([proc])
        raise
    return proc, url
