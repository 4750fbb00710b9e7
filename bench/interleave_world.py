"""The interleaving harness's world: the components it declares and the config file it writes.

Every replica is a small Python process whose argv carries a marker, `il<run>:<component>:v<version>`,
so a scan of /proc finds each component's processes (and those of an older command version) without
asking the agent. The world changes only by the harness's own steps (a reload adds or removes a
component, bumps a command's version, changes a limit), so the plan of a seed and its run agree.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
HOG_BYTES = 96 * 1000 * 1000  # what the hog allocates (and touches) right after it starts
HOG_LIMIT = 40 * MIB
DYNAMIC = ("x1", "x2", "x3", "x4")  # the names a reload may add (and remove)

# A replica: holds its marker in argv, optionally allocates `hog` bytes, optionally takes `delay`
# seconds to honour SIGTERM (a busy lock for a re-exec to wait on), then sleeps until signalled.
REPLICA_SCRIPT = """\
import os, signal, sys, time
delay, hog = float(sys.argv[2]), int(sys.argv[3])
if delay > 0:
    def _slow(*_):
        time.sleep(delay)
        os._exit(0)
    signal.signal(signal.SIGTERM, _slow)
blob = b"x" * hog if hog else b""
while True:
    time.sleep(3600)
"""

FAST_RESTART = {"max_restarts": 1_000_000, "window": 60,
                "backoff": {"initial": 0.05, "max": 0.5, "multiplier": 2, "reset_after": 5}}
# Restart alerts act within a second of each other; scale-downs are not held after a scale-up.
REMEDIATION = {"cooldown": 1, "scale_down_stabilization": 0, "max_step": 2}


@dataclass(frozen=True)
class Spec:
    """One component as the harness declares it."""

    name: str
    minimum: int
    maximum: int
    initial: int
    version: int = 0
    delay: float = 0.0  # seconds a replica takes to honour SIGTERM
    hog: int = 0  # bytes a replica allocates
    memory_limit: int | None = None
    fragile: bool = False  # any unplanned restart opens its circuit (for an hour)

    def to_config(self, python: str, script: Path, run: str) -> dict[str, Any]:
        marker = f"il{run}:{self.name}:v{self.version}"
        doc: dict[str, Any] = {
            "command": [python, "-I", "-S", str(script), marker, str(self.delay), str(self.hog)],
            "replicas": {"min": self.minimum, "max": self.maximum, "initial": self.initial},
            "restart": copy.deepcopy(FAST_RESTART),
            "stop": {"grace": max(2.0, self.delay + 2.5)},
            "remediation": dict(REMEDIATION),
        }
        if self.fragile:
            doc["restart"].update(max_restarts=0, window=600, circuit_cooldown=3600)
        if self.memory_limit is not None:
            doc["limits"] = {"memory_bytes": self.memory_limit}
        return doc


def base_specs() -> dict[str, Spec]:
    """The components every run starts with."""
    specs = [
        Spec("web", 1, 4, 2),
        Spec("pool", 0, 3, 1),
        Spec("slow", 1, 1, 1, delay=1.5),
        Spec("fragile", 1, 1, 1, fragile=True),
        Spec("hog", 0, 1, 0, hog=HOG_BYTES, memory_limit=HOG_LIMIT),
    ]
    return {s.name: s for s in specs}


@dataclass
class World:
    """The declared components (in config order) and whether the small disk is full."""

    specs: dict[str, Spec] = field(default_factory=base_specs)
    disk_full: bool = False

    def copy(self) -> World:
        return World(dict(self.specs), self.disk_full)

    def add(self, name: str) -> None:
        self.specs[name] = Spec(name, 0, 2, 1)

    def remove(self, name: str) -> None:
        del self.specs[name]

    def bump(self, name: str) -> None:
        spec = self.specs[name]
        self.specs[name] = replace(spec, version=spec.version + 1)

    def limit(self, name: str, limit: int | None) -> None:
        self.specs[name] = replace(self.specs[name], memory_limit=limit)

    def absent_dynamic(self) -> list[str]:
        return [n for n in DYNAMIC if n not in self.specs]

    def present_dynamic(self) -> list[str]:
        return [n for n in DYNAMIC if n in self.specs]

    def actionable(self) -> list[str]:
        """Components that alerts and manual commands aim at (the hog has its own step)."""
        return [n for n in self.specs if n != "hog"]

    def config(self, listen: str, state_dir: Path, log_dir: Path, script: Path, run: str) -> dict[str, Any]:
        return {
            "agent": {"listen": listen, "state_dir": str(state_dir), "log_dir": str(log_dir),
                      "resources": {"interval": 0.5}, "shutdown_timeout": 30},
            "components": {name: spec.to_config(sys.executable, script, run) for name, spec in self.specs.items()},
        }
