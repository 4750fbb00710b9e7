"""Start a supervisor from its generated config, wait for its children, stop it and clean up by pid."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench.configs import Setup, write_config
from bench.peers import peer_bin
from bench.ports import free_port
from bench.procfs import ProcScanner, all_pids, child_marker, descendants, marker

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
_instance_ids = itertools.count()  # markers stay unique over a whole bench run


def _term_with_parent() -> None:  # between fork and exec: a bench that dies takes its supervisors along
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def agent_argv(config: Path) -> list[str]:
    """The agent's console script beside this interpreter, else `python -m agent`."""
    script = Path(sys.executable).parent / "agent"
    if script.exists():
        return [str(script), "run", "--config", str(config)]
    return [sys.executable, "-m", "agent", "run", "--config", str(config)]


class Instance:
    """One running supervisor and the pids of its children, by slot."""

    def __init__(self, setup: Setup, instance: int, workdir: Path) -> None:
        self.setup = setup
        self.instance = instance
        self.workdir = workdir
        self.port = free_port() if setup.kind == "agent" else 0
        self.config = write_config(setup, instance, workdir, self.port)
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: dict[int, int] = {}
        self.launched_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        if self.setup.kind == "agent":
            return agent_argv(self.config)
        if self.setup.kind == "supervisord":
            return [str(peer_bin("supervisord")), "-n", "-c", str(self.config)]
        return [str(peer_bin("circusd")), str(self.config)]

    def start(self) -> None:
        """Launch the supervisor (output to a file in its workdir); launched_at is taken just before."""
        out = open(self.workdir / "stdout.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            self.launched_at = time.perf_counter()
            env = dict(os.environ, PYTHONPATH=self.setup.source) if self.setup.source else None
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_term_with_parent, close_fds=True, env=env,
            )
        finally:
            out.close()

    def expected(self) -> set[int]:
        return set(self.setup.slots())

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.workdir / "stdout.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.setup.label} exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM, a short wait, then SIGKILL; then SIGKILL any child of ours that is left (by pid).

        Stopping is not measured, so the wait is short: supervisord takes seconds to stop gracefully
        (its 1 s main loop), the agent and circus a fraction of a second.
        """
        if self.proc is None:
            return
        leftovers = set(self.children.values())
        with contextlib.suppress(ProcessLookupError):
            leftovers.update(descendants(self.proc.pid))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        mine = {marker(self.instance, slot) for slot in self.expected()}
        for pid in leftovers:
            value = child_marker(pid)
            if value in mine:  # still our sleep (pids are not reused that fast, but check anyway)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start_and_wait(instances: Iterable[Instance], timeout: float, on_each: Callable[[Instance, float], None]
                   | None = None) -> None:
    """Start each instance in turn and wait until all its children run; `on_each(inst, seconds)`."""
    for inst in instances:
        scanner = ProcScanner([])
        scanner.known = all_pids()
        inst.start()
        scanner.roots.add(inst.pid)
        seconds = wait_children([inst], scanner, timeout)
        if on_each is not None:
            on_each(inst, seconds)


def wait_children(instances: list[Instance], scanner: ProcScanner, timeout: float) -> float:
    """Poll /proc (~1 ms) until every expected child of every instance runs; seconds since the launch."""
    by_instance = {inst.instance: inst for inst in instances}
    missing = {inst.instance: inst.expected() - set(inst.children) for inst in instances}
    deadline = time.monotonic() + timeout
    while any(missing.values()):
        for found in scanner.scan():
            inst = by_instance.get(found.instance)
            if inst is not None:
                inst.children[found.slot] = found.pid
                missing[found.instance].discard(found.slot)
        if not any(missing.values()):
            break
        if time.monotonic() > deadline:
            counts = {by_instance[i].setup.label: len(m) for i, m in missing.items() if m}
            raise TimeoutError(f"children still missing after {timeout:.0f}s: {counts}")
        for inst in instances:
            inst.check_alive()
        time.sleep(0.001)
    return time.perf_counter() - max(inst.launched_at for inst in instances)


class Fleet:
    """Instances that share a scratch dir; `close()` stops them all (also on errors)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances: list[Instance] = []

    def add(self, setup: Setup) -> Instance:
        number = next(_instance_ids)
        inst = Instance(setup, number, self.root / f"i{number}-{setup.kind}")
        self.instances.append(inst)
        return inst

    def close(self) -> None:
        for inst in self.instances:
            inst.stop()
        self.instances.clear()
