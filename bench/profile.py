"""Where the agent spends its time in a bench scenario: `python -m bench.profile SCENARIO`.

Runs one agent as the suite does and records it with py-spy (installed into bench/.peers/venv on
first use), then prints the top frames by own time and by inclusive time (file:function:line):
- restart: N components at backoff 0, one SIGKILL every 20 ms for the recording;
- idle:    N components with a tcp probe every 5 s and /metrics scraped every 5 s;
- quiet:   N components, no probes, no scrapes (what the agent does on its own);
- metrics: N components x 2 replicas, /metrics scraped back to back;
- startup: the agent launched under py-spy with N components, recorded from its first instruction;
- webhook: the webhook bench's agent and request mix (bench/webhook.py), sent back to back for the recording.
The raw collapsed stacks stay in bench/results/profile-<scenario>-<N>.txt for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.configs import Setup
from bench.launch import Fleet, Instance, start_and_wait
from bench.overhead import _start_listener
from bench.peers import VENV
from bench.ports import free_port
from bench.procfs import ChildScanner

RESULTS = Path(__file__).resolve().parent / "results"


def py_spy() -> Path:
    """py-spy in bench/.peers/venv (the venv and py-spy installed from PyPI when missing)."""
    binary = VENV / "bin" / "py-spy"
    if not binary.exists():
        # The peers may come from the dev extra, so the venv may not exist yet.
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=600)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "py-spy"], check=True,
                       timeout=600)
    return binary


def _record(pid: int, seconds: float, out: Path, rate: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(py_spy()), "record", "-p", str(pid), "-d", str(max(1, int(seconds))),
                             "-r", str(rate), "-f", "raw", "-o", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_frames(path: Path, count: int = 25) -> str:
    """Own-time and inclusive-time tables from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        n = int(samples)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples (the agent's busy time only)", "-- own time --"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(count)]
    lines.append("-- inclusive --")
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(count + 10)]
    return "\n".join(lines)


def _kill_loop(inst: Instance, seconds: float) -> None:
    """SIGKILL one child after another (round-robin), each once its predecessor is back."""
    scanner = ChildScanner([inst.pid])
    deadline = time.monotonic() + seconds
    slot = 0
    while time.monotonic() < deadline:
        os.kill(inst.children[slot], signal.SIGKILL)
        until = time.monotonic() + 5.0
        back = False
        while not back and time.monotonic() < until:
            for found in scanner.scan():
                inst.children[found.slot] = found.pid
                back = back or found.slot == slot
            time.sleep(0.001)
        slot = (slot + 1) % inst.setup.n
        time.sleep(0.02)


def profile(scenario: str, n: int, seconds: float, root: Path) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{scenario}-{n}.txt"
    fleet = Fleet(root)
    listener = None
    try:
        if scenario == "startup":
            inst = fleet.add(Setup("agent", n))
            proc = subprocess.Popen([str(py_spy()), "record", "-r", "500", "-f", "raw", "-o", str(out), "--",
                                     *inst.argv()], cwd=inst.workdir, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(seconds)
            proc.send_signal(signal.SIGINT)  # py-spy stops the agent and writes the file
            proc.wait(60)
            return out
        if scenario == "webhook":
            from bench import httpload, webhook

            inst, token = webhook.start_agent(fleet, root, n)
            requests, _ = webhook.build_requests(100_000, f"127.0.0.1:{inst.port}", token, seed=1)
            recorder = _record(inst.pid, seconds, out, 1000)
            httpload.load(inst.port, requests, 8, seconds)
            recorder.wait(seconds + 60)
            return out
        if scenario == "idle":
            port = free_port()
            listener = _start_listener(port)
            inst = fleet.add(Setup("agent", n, probe_port=port))
        elif scenario == "metrics":
            inst = fleet.add(Setup("agent", n, replicas=2))
        elif scenario == "quiet":
            inst = fleet.add(Setup("agent", n))
        else:
            inst = fleet.add(Setup("agent", n, aggressive=True))
        start_and_wait([inst], timeout=180.0)
        time.sleep(2.0)
        recorder = _record(inst.pid, seconds, out, 200 if scenario in ("idle", "metrics") else 1000)
        if scenario == "restart":
            _kill_loop(inst, seconds - 0.5)
        elif scenario == "quiet":
            recorder.wait(seconds + 60)
        else:
            pause = 5.0 if scenario == "idle" else 0.02
            deadline = time.monotonic() + seconds
            with httpx.Client(timeout=90.0) as client:
                while time.monotonic() < deadline:
                    client.get(inst.url + "/metrics").raise_for_status()
                    time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        recorder.wait(seconds + 60)
        return out
    finally:
        fleet.close()
        if listener is not None:
            listener.kill()
            listener.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["restart", "idle", "quiet", "metrics", "startup", "webhook"])
    parser.add_argument("--n", type=int, default=50, help="components (default 50)")
    parser.add_argument("--seconds", type=float, default=20.0, help="recording length (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-bench-profile-") as tmp:
        out = profile(args.scenario, args.n, args.seconds, Path(tmp))
    print(top_frames(out))
    print(f"collapsed stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
