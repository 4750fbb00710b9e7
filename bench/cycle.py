"""In-process cost of one resource-sample pass and one probe round as N grows (`python -m bench.cycle`).

Runs in its own process: the agent's Reaper owns SIGCHLD and waitpid(-1), which must not reap the
bench's own children. For each size it builds the agent's Supervisor with N `sleep` components (a tcp
probe each, against a listener in this process), starts them, then times
`ResourceMonitor.sample_once()` and one round of `run_probe()` over every component (concurrently, as
the agent's probe loops run), in wall and CPU seconds. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.config.loader import build_config
from agent.daemon.eventloop import run
from agent.observe.httpclient import HttpClient
from agent.observe.probes import run_probe
from agent.observe.resources import ResourceMonitor
from agent.supervise.process import Reaper
from agent.supervise.state import StateStore
from agent.supervise.supervisor import Supervisor
from bench.configs import Setup, agent_config
from bench.procfs import all_pids

MARKER_INSTANCE = 900  # markers of this process's children, apart from the main bench's instances


async def _serve(sock: socket.socket) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, sock=sock, backlog=4096)
    async with server:
        await server.serve_forever()


async def _wait_spawned(sup: Supervisor, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for rt in sup.components.values() for r in rt.replicas.values() if r.pid) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only some of {n} components started")
        await asyncio.sleep(0.01)


async def measure(sizes: list[int], repeats: int, workdir: Path) -> list[dict[str, Any]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    serving = asyncio.ensure_future(_serve(listener))
    reaper = Reaper(asyncio.get_running_loop())
    out: list[dict[str, Any]] = []
    async with HttpClient() as client:
        for index, n in enumerate(sizes):
            doc = agent_config(Setup("agent", n, probe_port=port), MARKER_INSTANCE + index, workdir / f"n{n}", 0)
            config = build_config(doc, f"cycle-{n}")
            sup = Supervisor(config, reaper, StateStore(workdir / f"n{n}" / "state"))
            await sup.start_all()
            await _wait_spawned(sup, n, 120.0)
            monitor = ResourceMonitor(sup, 5.0, ["/"])
            monitor.sample_once()  # the first pass creates psutil handles; the agent pays it once
            samples, sample_cpu, probes, probe_cpu = [], [], [], []
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                monitor.sample_once()
                samples.append(time.perf_counter() - t)
                sample_cpu.append(time.process_time() - c)
                t, c = time.perf_counter(), time.process_time()
                results = await asyncio.gather(*(run_probe(rt.spec, 0, client, reaper)
                                                 for rt in sup.components.values()))
                probes.append(time.perf_counter() - t)
                probe_cpu.append(time.process_time() - c)
                if not all(r.ok for r in results):
                    raise RuntimeError("a tcp probe failed: " + next(r.message for r in results if not r.ok))
            out.append({
                "n": n,
                "host_processes": len(all_pids()),
                "sample_wall_s": min(samples),
                "sample_cpu_s": min(sample_cpu),
                "probe_round_wall_s": min(probes),
                "probe_round_cpu_s": min(probe_cpu),
            })
            await sup.shutdown()
    serving.cancel()
    reaper.close()
    listener.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cycle")
    parser.add_argument("--sizes", default="50,100,200,400")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="agent-bench-cycle-") as tmp:
        result = run(measure(sizes, args.repeats, Path(tmp)))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
