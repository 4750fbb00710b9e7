"""Helpers for tests of the Prometheus stack: find its binaries (skip without them locally, fail without
them in CI). The short-clock rules come from the generator: scripts.gen_stack.write_fast_rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers import missing

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


def spawn_prometheus(config: Path, data: Path, port: int) -> subprocess.Popen[bytes]:
    """A Prometheus on 127.0.0.1:`port`; the caller ends it by its PID."""
    binary = require_binary("prometheus")
    return subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
