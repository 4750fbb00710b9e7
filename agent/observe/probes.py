"""Health probes: http, tcp, exec and mcp, one task per live replica (and per watched external
component, which has no process), bounded by their timeout.

Every probe result goes to the supervisor (`report_probe`); supervise/health.py decides on a restart. One
shared httpx.AsyncClient serves every HTTP probe (made by the first one: agent/observe/httpclient.py);
each replica has its own task, so a slow probe never delays another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.config.component import Component, ProbeSettings, substitute
from agent.observe.httpclient import HttpClient
from agent.supervise.process import ExitStatus, Reaper, signal_group

if TYPE_CHECKING:
    import httpx

    from agent.supervise.replica import Replica, Runtime
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.probes")

# Bounded values of the `reason` label of orchestrator_component_probe_error.
PROBE_ERRORS = ("none", "timeout", "connect", "status", "body", "exec", "protocol")


class ProbeFailure(Exception):
    """A failed probe: `reason` is one of PROBE_ERRORS, the message says what happened."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ProbeResult:
    ok: bool
    reason: str
    message: str
    duration: float


def _json_path(document: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            raise ProbeFailure("body", f"JSON field {path!r} missing")
    return document


async def probe_http(client: httpx.AsyncClient, settings: ProbeSettings, replica: int) -> str:
    import httpx  # imported with the client already (agent/observe/httpclient.py)

    spec = settings.http
    assert spec is not None
    url = substitute(spec.url, replica)
    try:
        response = await client.request(spec.method, url, timeout=settings.timeout)
    except httpx.TimeoutException:
        raise ProbeFailure("timeout", f"GET {url}: no answer within {settings.timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise ProbeFailure("connect", f"GET {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != spec.expected_status:
        raise ProbeFailure("status", f"GET {url}: status {response.status_code}, expected {spec.expected_status}")
    if spec.json_field:
        try:
            document = response.json()
        except (ValueError, json.JSONDecodeError):
            raise ProbeFailure("body", f"GET {url}: body is not JSON") from None
        value = _json_path(document, spec.json_field)
        if spec.json_equals is not None and value != spec.json_equals:
            raise ProbeFailure("body", f"GET {url}: {spec.json_field} is {value!r}, expected {spec.json_equals!r}")
    return f"status {response.status_code}"


async def probe_tcp(settings: ProbeSettings) -> str:
    spec = settings.tcp
    assert spec is not None
    try:
        _, writer = await asyncio.open_connection(spec.host, spec.port)
    except OSError as exc:
        raise ProbeFailure("connect", f"tcp {spec.host}:{spec.port}: {exc.strerror or exc}") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "connected"


async def probe_exec(reaper: Reaper, settings: ProbeSettings, replica: int, env: dict[str, str] | None) -> str:
    spec = settings.exec
    assert spec is not None
    argv = [substitute(a, replica) for a in spec.command]
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable  # as in component commands: the agent's own interpreter
    done: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()

    def finished(status: ExitStatus) -> None:
        if not done.done():
            done.set_result(status)

    try:
        pid = reaper.spawn(argv, finished, env=env, stdout=subprocess.DEVNULL)
    except OSError as exc:
        raise ProbeFailure("exec", f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        status = await asyncio.shield(done)
    except asyncio.CancelledError:
        signal_group(pid, 9)
        raise
    if status.code != 0:
        raise ProbeFailure("exec", f"{argv[0]} {status.describe}")
    return "exit 0"


async def probe_mcp(url: str, timeout: float) -> str:
    """A real MCP handshake over streamable HTTP (`initialize`, then `ping`) with the official SDK."""
    from agent.observe.mcp_probe import MCPCheckError, mcp_ping

    try:
        await mcp_ping(url, timeout)
    except MCPCheckError as exc:
        raise ProbeFailure("timeout" if "no answer within" in str(exc) else "protocol", str(exc)) from None
    return "initialize+ping ok"


async def run_probe(
    spec: Component, replica: int, client: HttpClient, reaper: Reaper | None,
    env: dict[str, str] | None = None,
) -> ProbeResult:
    """Run a component's probe once against one replica, bounded by its timeout."""
    settings = spec.probe
    assert settings is not None
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.timeout):
            if settings.http is not None:
                message = await probe_http(client.get(), settings, replica)
            elif settings.tcp is not None:
                message = await probe_tcp(settings)
            elif settings.exec is not None:
                if reaper is None:
                    raise ProbeFailure("exec", "exec probes need the agent's reaper")
                message = await probe_exec(reaper, settings, replica, env)
            else:
                assert settings.mcp is not None
                message = await probe_mcp(substitute(settings.mcp.url, replica), settings.timeout)
    except TimeoutError:
        return ProbeResult(False, "timeout", f"{settings.kind} probe: no answer within {settings.timeout:g}s",
                           time.perf_counter() - started)
    except ProbeFailure as exc:
        return ProbeResult(False, exc.reason, str(exc), time.perf_counter() - started)
    return ProbeResult(True, "none", message, time.perf_counter() - started)


class ProbeRunner:
    """Runs a probe loop for each replica the supervisor spawns; the loop ends with that process, or
    when a reload changes the component's probe (a loop with the new settings takes over)."""

    def __init__(self, supervisor: Supervisor, client: HttpClient,
                 observe: Callable[[str, str, float], None] | None = None) -> None:
        self.sup = supervisor
        self.client = client
        self.observe = observe
        self.last_reason: dict[str, str] = dict.fromkeys(supervisor.components, "none")
        # The last failed probe of each component (wall time, message), for `agent status NAME`: kept
        # after the replica recovers or is replaced, since that is when someone asks why.
        self.last_error: dict[str, tuple[float, str]] = {}
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        supervisor.spawn_listeners.append(self.replica_started)
        supervisor.spec_listeners.append(self.spec_changed)
        supervisor.watch_listeners.append(self.watch)
        supervisor.layout_listeners.append(self._forget_removed)

    def _forget_removed(self) -> None:
        """Supervisor hook (a component or replica came or went): what was kept of a component a reload
        removed goes with it, so one added again under its name starts with no last error of the old."""
        names = self.sup.components.keys()
        gone = (self.last_reason.keys() | self.last_error.keys()) - names
        if not gone:
            return
        for name in gone:
            self.last_reason.pop(name, None)
            self.last_error.pop(name, None)
        for key in [k for k in self._tasks if k[0] in gone]:
            self._cancel(key)

    def watch_externals(self) -> None:
        """Start probing every external component (once, when the agent starts serving)."""
        for rt in list(self.sup.components.values()):
            if rt.external:
                self.watch(rt)

    def watch(self, rt: Runtime) -> None:
        """Probe an external component: one loop, not tied to any process (key index -1)."""
        key = (rt.name, -1)
        self._cancel(key)
        observed = rt.observed
        if observed is None or rt.spec.probe is None:
            return
        self.last_reason.setdefault(rt.name, "none")
        task = asyncio.ensure_future(self._watch_loop(rt, observed))
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None) if self._tasks.get(key) is t else None)

    def replica_started(self, rt: Runtime, rep: Replica) -> None:
        """Supervisor hook: a replica was spawned."""
        self._start(rt, rep)

    def spec_changed(self, rt: Runtime, previous: Component) -> None:
        """Supervisor hook: a reload gave the component a new spec; a changed probe restarts its loops."""
        if rt.spec.probe == previous.probe or rt.external:  # an external one: `watch` follows
            return
        self.last_reason.setdefault(rt.name, "none")
        for rep in rt.replicas.values():
            if rep.pid is not None and not rep.stopping:
                self._start(rt, rep)
            else:
                self._cancel((rt.name, rep.index))

    def _start(self, rt: Runtime, rep: Replica) -> None:
        key = (rt.name, rep.index)
        self._cancel(key)
        if rt.spec.probe is None:
            return
        task = asyncio.ensure_future(self._loop(rt, rep, rep.generation))
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None) if self._tasks.get(key) is t else None)

    def _cancel(self, key: tuple[str, int]) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def _loop(self, rt: Runtime, rep: Replica, generation: int) -> None:
        settings = rt.spec.probe
        assert settings is not None
        spec = rt.spec
        # Only an exec probe starts a process; the others need no environment copy per replica.
        env = {**os.environ, "AGENT_COMPONENT": rt.name, "AGENT_REPLICA": str(rep.index)} if settings.exec else None
        # First probe soon after the start, then every interval.
        await asyncio.sleep(min(settings.interval, 0.2))
        while rep.generation == generation and rep.pid is not None and not self.sup.shutting_down:
            result = await run_probe(spec, rep.index, self.client, self.sup.reaper, env)
            if rep.generation != generation or rep.pid is None:
                return
            if self.observe is not None:
                self.observe(rt.name, settings.kind, result.duration)
            self.last_reason[rt.name] = result.reason
            if not result.ok:
                self.last_error[rt.name] = (time.time(), result.message)
            if not result.ok and rep.probe_ok is not False:
                log.info("component %s replica %d probe failed: %s", rt.name, rep.index, result.message)
            self.sup.report_probe(rt.name, rep.index, generation, result.ok, result.message)
            await asyncio.sleep(settings.interval)

    async def _watch_loop(self, rt: Runtime, observed: Replica) -> None:
        settings = rt.spec.probe
        assert settings is not None
        spec = rt.spec
        env = {**os.environ, "AGENT_COMPONENT": rt.name, "AGENT_REPLICA": "0"} if settings.exec else None
        await asyncio.sleep(min(settings.interval, 0.2))
        while rt.observed is observed and not rt.retired and not self.sup.shutting_down:
            result = await run_probe(spec, 0, self.client, self.sup.reaper, env)
            if rt.observed is not observed or rt.retired:
                return
            if self.observe is not None:
                self.observe(rt.name, settings.kind, result.duration)
            self.last_reason[rt.name] = result.reason
            if not result.ok and observed.probe_ok is not False:
                log.info("external component %s probe failed: %s", rt.name, result.message)
            self.sup.report_external(rt.name, observed, result.ok, result.message)
            await asyncio.sleep(settings.interval)

    def close(self) -> None:
        """Cancel every probe loop."""
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()
