"""What machine the figures come from."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def revision() -> str:
    """The last commit that touched agent/, with "+ N uncommitted file(s)" when the tree under test differs."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "log", "-1", "--format=%h", "--", "agent"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head} + {len(dirty)} uncommitted file(s) in agent/" if dirty else head or "?"


def describe(peer_versions: dict[str, str]) -> dict[str, str | int | float]:
    """CPU model, cores, kernel, Python and the versions under test."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(_memory_gib(), 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "agent": _version("agent"),
        "agent_revision": revision(),
        "supervisor": peer_versions.get("supervisor", "?"),
        "circus": peer_versions.get("circus", "?"),
        "psutil": _version("psutil"),
    }


def one_line(machine: dict[str, str | int | float]) -> str:
    return (f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, {machine['kernel']}, "
            f"{machine['python']}; agent {machine['agent']} ({machine['agent_revision']}), "
            f"supervisor {machine['supervisor']}, circus {machine['circus']}")
