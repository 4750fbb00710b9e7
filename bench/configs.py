"""Equivalent configs for the agent, supervisord and circus: N identical `sleep` children each.

Each child is `/bin/sleep <marker>` (see procfs.marker): the same program under every supervisor.
"Default" keeps each supervisor's defaults; "aggressive" is each one's fastest legitimate restart:
the agent with `restart.backoff.initial: 0`, supervisord with `startsecs=0, autorestart=true`,
circus with `check_delay=0.01, warmup_delay=0`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.procfs import SLEEP, marker

Kind = Literal["agent", "supervisord", "circus"]
KINDS: tuple[Kind, ...] = ("agent", "supervisord", "circus")
REPLICA_STRIDE = 10  # slot = component * REPLICA_STRIDE + replica for multi-replica agent components


@dataclass(frozen=True)
class Setup:
    """What to run: which supervisor, how many children, and with which settings."""

    kind: Kind
    n: int
    aggressive: bool = False
    probe_port: int | None = None  # agent only: a tcp probe every 5 s on every component
    sample_interval: str | None = None  # agent only: resources.interval (None = default 5s)
    replicas: int = 1  # agent only
    webhook_token_file: Path | None = None  # agent only
    source: str | None = None  # agent only: run the agent package of this checkout (PYTHONPATH) instead

    @property
    def label(self) -> str:
        parts = [self.kind, "aggressive" if self.aggressive else "default"]
        if self.probe_port is not None:
            parts.append("probes")
        if self.sample_interval is not None:
            parts.append(f"sample={self.sample_interval}")
        return "/".join(parts)

    def slots(self) -> list[int]:
        if self.replicas == 1:
            return list(range(self.n))
        return [c * REPLICA_STRIDE + r for c in range(self.n) for r in range(self.replicas)]


def agent_config(setup: Setup, instance: int, workdir: Path, port: int) -> dict[str, Any]:
    """The agent's config document (written as JSON)."""
    settings: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "state_dir": str(workdir / "state"),
        "log_dir": str(workdir / "logs"),
    }
    if setup.sample_interval is not None:
        settings["resources"] = {"interval": setup.sample_interval}
    if setup.webhook_token_file is not None:
        settings["webhook"] = {"bearer_token_file": str(setup.webhook_token_file)}
    components: dict[str, Any] = {}
    for c in range(setup.n):
        if setup.replicas == 1:
            arg = str(marker(instance, c))
        else:
            # `{replica}` is substituted by the agent: marker(instance, c*10) ends in 0.
            arg = str(marker(instance, c * REPLICA_STRIDE))[:-1] + "{replica}"
        comp: dict[str, Any] = {"command": [SLEEP, arg]}
        if setup.replicas != 1:
            comp["replicas"] = {"min": setup.replicas, "max": setup.replicas}
        if setup.aggressive:
            comp["restart"] = {"backoff": {"initial": 0}}
        if setup.probe_port is not None:
            comp["probe"] = {"tcp": {"port": setup.probe_port}, "interval": "5s", "timeout": "2s"}
        components[f"c{c}"] = comp
    return {"agent": settings, "components": components}


def supervisord_config(setup: Setup, instance: int, workdir: Path) -> str:
    """supervisord.conf: one [program] per child."""
    lines = [
        "[unix_http_server]",
        f"file={workdir / 'supervisor.sock'}",
        "",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={workdir / 'supervisord.log'}",
        f"pidfile={workdir / 'supervisord.pid'}",
        f"childlogdir={workdir / 'logs'}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
    ]
    for c in range(setup.n):
        lines += [f"[program:c{c}]", f"command={SLEEP} {marker(instance, c)}"]
        if setup.aggressive:
            lines += ["startsecs=0", "autorestart=true"]
        lines.append("")
    return "\n".join(lines)


def circus_config(setup: Setup, instance: int, workdir: Path) -> str:
    """circus.ini: one [watcher] per child; zmq endpoints on ipc sockets, UDP discovery off."""
    lines = [
        "[circus]",
        f"endpoint = ipc://{workdir / 'ctrl.sock'}",
        f"pubsub_endpoint = ipc://{workdir / 'pubsub.sock'}",
        # The default joins a multicast group for cluster auto-discovery; nothing here needs it.
        "multicast_endpoint =",
        f"logoutput = {workdir / 'circusd.log'}",
    ]
    if setup.aggressive:
        lines += ["check_delay = 0.01", "warmup_delay = 0"]
    lines.append("")
    for c in range(setup.n):
        lines += [f"[watcher:c{c}]", f"cmd = {SLEEP}", f"args = {marker(instance, c)}", "numprocesses = 1"]
        if setup.aggressive:
            lines.append("warmup_delay = 0")
        lines.append("")
    return "\n".join(lines)


def write_config(setup: Setup, instance: int, workdir: Path, port: int) -> Path:
    """Write the config file for this setup into workdir and return its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    if setup.kind == "agent":
        path = workdir / "agent.json"
        path.write_text(json.dumps(agent_config(setup, instance, workdir, port), indent=1))
    elif setup.kind == "supervisord":
        path = workdir / "supervisord.conf"
        path.write_text(supervisord_config(setup, instance, workdir))
    else:
        path = workdir / "circus.ini"
        path.write_text(circus_config(setup, instance, workdir))
    return path
