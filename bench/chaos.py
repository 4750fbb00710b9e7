"""`python -m bench.chaos`: random kills across 20 components for a bounded time, then the counts.

The agent supervises 20 components that all carry a marker in their environment (`CHAOS_MARK`):
12 sleepers (4 of them with two replicas), 4 small HTTP services with a liveness probe, and 4 forkers
that start a `setsid` grandchild and exit on their own. Replicas of the sleepers and services get, at
random gaps, SIGKILL, SIGTERM, or SIGSTOP then SIGCONT (shorter than the probe's failure window).

Afterwards it checks, and prints: every component at its desired replicas;
`orchestrator_component_restarts_total{reason="exit"}` of the targets equal to the SIGKILLs and
SIGTERMs sent, and no probe restart; no zombie; and no process carrying the marker that is not a
live replica or one of its descendants (the forkers are stopped first, so their grandchildren must
be gone). The test suite runs it briefly under both containment mechanisms (tests/test_chaos.py);
`python -m bench.chaos --kills 1000 --duration 600` is the long mode (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.ports import free_port
from bench.waiting import Timeout, wait_for

ROOT = Path(__file__).resolve().parent.parent
MARK_VAR = "CHAOS_MARK"
SLEEPERS, WEBS, FORKERS = 12, 4, 4
_libc = ctypes.CDLL(None, use_errno=True)


def chaos_components(mark: str) -> dict[str, dict[str, Any]]:
    """The 20 components, each with the marker in its environment."""
    restart = {"max_restarts": 1_000_000, "window": 60,
               "backoff": {"initial": 0.01, "max": 0.2, "reset_after": 5}}
    env = {MARK_VAR: mark}
    out: dict[str, dict[str, Any]] = {}
    for i in range(SLEEPERS):
        n = 2 if i < 4 else 1
        out[f"sleeper{i:02d}"] = {"command": ["sleep", "100000"], "env": env, "restart": restart,
                                  "replicas": {"min": n, "max": n}, "stop": {"grace": 2}}
    for i in range(WEBS):
        port = free_port()
        out[f"web{i}"] = {
            "command": [sys.executable, "-m", "agent.demo.demo_service", "--port", str(port)],
            "cwd": str(ROOT), "env": env, "restart": restart, "stop": {"grace": 2},
            # Failure window 8 x 0.5 s = 4 s: a SIGSTOP of at most 0.5 s must restart nothing.
            "probe": {"http": {"url": f"http://127.0.0.1:{port}/health"}, "interval": 0.5, "timeout": 0.3,
                      "failure_threshold": 8},
        }
    for i in range(FORKERS):
        out[f"forker{i}"] = {"command": "setsid sleep 100000 </dev/null >/dev/null 2>&1 & sleep 0.8; exit 3",
                             "shell": True, "env": env, "restart": restart, "stop": {"grace": 2}}
    return out


def targets(components: dict[str, Any]) -> list[str]:
    """The components whose replicas get signals (the forkers die on their own)."""
    return [n for n in components if not n.startswith("forker")]


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rfind(b")") + 2:][:1].decode()
    except (OSError, IndexError):
        return None


def marked(mark: str) -> set[int]:
    """Live (non-zombie) processes whose environment carries CHAOS_MARK=mark."""
    entry = f"{MARK_VAR}={mark}".encode()
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if entry not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        if proc_state(int(name)) not in (None, "Z"):
            found.add(int(name))
    return found


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    return out


def descendants(roots: set[int]) -> set[int]:
    """The roots and every process below them."""
    out: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid not in out and proc_state(pid) is not None:
            out.add(pid)
            stack.extend(children(pid))
    return out


def zombie_children(pid: int) -> list[int]:
    return [c for c in children(pid) if proc_state(c) == "Z"]


class ChaosAgent:
    """`agent run` on the chaos config, in a work dir, ended by its pid."""

    def __init__(self, workdir: Path, mark: str, containment: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.components = chaos_components(mark)
        config = {"agent": {"listen": f"127.0.0.1:{self.port}", "state_dir": str(workdir / "state"),
                            "log_dir": str(workdir / "logs"), "containment": containment,
                            "resources": {"interval": 1}},
                  "components": self.components}
        self.config_path = workdir / "chaos.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(timeout=10)

    def start(self) -> None:
        stderr = open(self.workdir / "agent.stderr", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                                     cwd=self.workdir, stdout=stderr, stderr=stderr,
                                     preexec_fn=lambda: _libc.prctl(1, signal.SIGTERM, 0, 0, 0))
        stderr.close()
        wait_for(self._healthy, 20, 0.02, "the agent to answer")
        self.token = (self.workdir / "state" / "control.token").read_text().strip()
        wait_for(self.all_running, 30, 0.02, "every component to run")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}: {self.log()[-3000:]}")
        try:
            return self.client.get(self.url + "/-/healthy").status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return (self.workdir / "agent.stderr").read_text(errors="replace")

    def api(self, method: str, path: str) -> Any:
        r = self.client.request(method, self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return r.json()

    def status(self) -> dict[str, dict[str, Any]]:
        return {c["component"]: c for c in self.api("GET", "/api/v1/status")["components"]}

    def exit_restarts(self) -> dict[str, float]:
        """restarts_total by component and reason, read from /metrics."""
        text = self.client.get(self.url + "/metrics").text
        out: dict[str, float] = Counter()
        for fam in text_string_to_metric_families(text):
            if fam.name == "orchestrator_component_restarts":
                for s in fam.samples:
                    if s.name.endswith("_total"):
                        out[f"{s.labels['component']}/{s.labels['reason']}"] = s.value
        return out

    def all_running(self, names: list[str] | None = None) -> bool:
        """Every component (or those named) at its desired replicas, all running and alive."""
        status = self.status()
        return all(c["replicas"] == c["desired"] and c["state"] == "running" and len(c["pids"]) == c["desired"]
                   for n, c in status.items() if names is None or n in names)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.client.close()


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    exits_by_component: Counter[str] = field(default_factory=Counter)
    signalled: set[int] = field(default_factory=set)

    @property
    def kills(self) -> int:
        return self.sent["SIGKILL"] + self.sent["SIGTERM"]


def run_chaos(agent: ChaosAgent, kills: int, duration: float, seed: int,
              progress: Callable[[str], None] | None = None) -> Tally:
    """Send `kills` signals (or as many as fit in `duration`) to random replicas of the targets."""
    rng = random.Random(seed)
    names = targets(agent.components)
    tally = Tally()
    gap = duration / max(kills, 1)
    started = time.monotonic()
    deadline = started + duration
    reported = started
    while sum(tally.sent.values()) < kills and time.monotonic() < deadline:
        if progress is not None and time.monotonic() - reported >= 30:
            reported = time.monotonic()
            progress(f"[{reported - started:5.0f}s] {dict(tally.sent)}")
        status = agent.status()
        choices = [(n, p) for n in names for p in status[n]["pids"]
                   if p not in tally.signalled and proc_state(p) in ("S", "R")]
        if choices:
            name, pid = rng.choice(choices)
            kind = rng.choices(["SIGKILL", "SIGTERM", "SIGSTOP"], [45, 35, 20])[0]
            if kind == "SIGSTOP":  # it lives on, so it may be picked again
                os.kill(pid, signal.SIGSTOP)
                time.sleep(rng.uniform(0.1, 0.5))  # the stop itself, shorter than the probe window
                os.kill(pid, signal.SIGCONT)
            else:
                # A pid is killed at most once: a second signal could land on it before it is reaped
                # and cause no second exit.
                tally.signalled.add(pid)
                os.kill(pid, signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM)
                tally.exits_by_component[name] += 1
            tally.sent[kind] += 1
        # Pacing: signal n lands at a random moment of its slot [n, n+1) x gap, so `kills` fit in
        # `duration` whatever a SIGSTOP's hold took, and crashes land at random phases of the agent's loops.
        slot = sum(tally.sent.values())
        time.sleep(max(0.0, started + (slot + rng.random()) * gap - time.monotonic()))
    return tally


def settle(agent: ChaosAgent, tally: Tally, mark: str, timeout: float = 30) -> dict[str, Any]:
    """Wait for the agent to heal, then check every invariant; returns the figures (raises when one fails)."""
    names = targets(agent.components)

    def healed() -> bool:
        restarts = agent.exit_restarts()
        return agent.all_running(names) and all(
            restarts[f"{n}/exit"] == tally.exits_by_component[n] for n in names)

    try:
        wait_for(healed, timeout, 0.02, "every component at its desired replicas with one restart per kill")
    except Timeout as exc:
        restarts = agent.exit_restarts()
        status = agent.status()
        off = {n: {"kills": tally.exits_by_component[n], **{k.split("/")[1]: v for k, v in restarts.items()
                                                             if k.startswith(n + "/") and v}}
               for n in names if restarts[f"{n}/exit"] != tally.exits_by_component[n]}
        down = {n: (c["state"], c["replicas"], c["desired"]) for n, c in status.items()
                if n in names and (c["state"] != "running" or c["replicas"] != c["desired"])}
        raise AssertionError(f"{exc}: restarts differ {off}; not running {down}") from None
    restarts = agent.exit_restarts()
    probe_restarts = sum(v for k, v in restarts.items() if k.endswith("/probe"))
    assert probe_restarts == 0, f"a SIGSTOP inside the probe window restarted something: {restarts}"
    forker_exits = sum(v for k, v in restarts.items() if k.startswith("forker") and k.endswith("/exit"))
    for name in agent.components:
        if name.startswith("forker"):
            agent.api("POST", f"/api/v1/components/{name}/stop")

    def strays() -> set[int]:
        leaders = {p for c in agent.status().values() for p in c["pids"]}
        return marked(mark) - descendants(leaders)

    wait_for(lambda: not strays(), 10, 0.02, "no process with the marker outside a live replica")
    assert agent.proc is not None
    wait_for(lambda: not zombie_children(agent.proc.pid), 5, 0.02, "no zombie child of the agent")  # type: ignore[union-attr]
    return {"signals": dict(tally.sent), "kills": tally.kills,
            "exit_restarts_of_targets": int(sum(restarts[f"{n}/exit"] for n in names)),
            "probe_restarts": int(probe_restarts), "forker_exits": int(forker_exits),
            "replicas_running": sum(len(c["pids"]) for c in agent.status().values()),
            "zombies": 0, "strays": 0}


@contextlib.contextmanager
def chaos_agent(workdir: Path, mark: str, containment: str) -> Iterator[ChaosAgent]:
    agent = ChaosAgent(workdir, mark, containment)
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=1000, help="signals to send (default 1000)")
    parser.add_argument("--duration", type=float, default=600, help="at most this many seconds (default 600)")
    parser.add_argument("--containment", choices=["auto", "cgroup", "tracking"], default="auto")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    mark = uuid.uuid4().hex
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp, chaos_agent(Path(tmp), mark, args.containment) as agent:
        mechanism = agent.api("GET", "/api/v1/status")["containment"]["mechanism"]
        tally = run_chaos(agent, args.kills, args.duration, args.seed,
                          progress=lambda line: print(line, file=sys.stderr, flush=True))
        report = settle(agent, tally, mark)
        code = agent.stop()
        left = marked(mark)
    report.update(mechanism=mechanism, seconds=round(time.monotonic() - started, 1), agent_exit=code,
                  left_after_agent_stop=len(left))
    print(json.dumps(report, indent=2))
    return 0 if code == 0 and not left else 1


if __name__ == "__main__":
    sys.exit(main())
