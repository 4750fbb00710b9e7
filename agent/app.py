"""The running agent: wires the supervisor, observers and HTTP server together and owns shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sqlite3
import time
from collections.abc import Coroutine
from typing import Any

import httpx

from agent import __version__
from agent.api import SecretFileError
from agent.backlog import BacklogMonitor
from agent.config import Autonomy, Config
from agent.connections import ConnectionGuard
from agent.containment import Containment, ContainmentError, Ledger, choose
from agent.logs import LogRotator
from agent.metrics import EventMetrics
from agent.probes import ProbeRunner
from agent.process import Guardian, Reaper, raise_fd_limit, set_child_subreaper
from agent.remediation import DedupeStore, Remediator
from agent.resources import ResourceMonitor
from agent.server import HttpServer
from agent.state import StateStore
from agent.supervisor import Supervisor, replica_log_path
from agent.tracing import Tracing

log = logging.getLogger("agent")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


class StartupError(Exception):
    """The agent cannot start (port in use, state dir unwritable); nothing was started."""


def bind_listen_socket(host: str, port: int) -> socket.socket:
    """Bind the HTTP socket before anything starts, so a port in use stops the agent cleanly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    """True for a loopback address or `localhost`; a wildcard (0.0.0.0, ::) or any other name is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Agent:
    """One agent process: supervisor, observers, HTTP server, and their shared state."""

    def __init__(self, config: Config, *, autonomy: Autonomy | None = None) -> None:
        self.config = config
        self.started_wall = time.time()
        self.version = __version__
        self.state_dir = config.agent.state_dir
        self.store = StateStore(self.state_dir)
        self.emergency = bool(self.store.data.get("emergency_stop", False))
        self.autonomy = Autonomy.OFF if self.emergency else (autonomy or config.agent.autonomy)
        self.stop_event = asyncio.Event()
        self.shutting_down = False
        self.sock: socket.socket | None = None
        self.reaper: Reaper | None = None
        self.guardian: Guardian | None = None
        self.containment: Containment | None = None
        self.supervisor: Supervisor | None = None
        self.resources: ResourceMonitor | None = None
        self.probes: ProbeRunner | None = None
        self.backlog: BacklogMonitor | None = None
        http = config.agent.http
        self.connections = ConnectionGuard(http.max_connections, http.request_timeout)
        self.events = EventMetrics(config)
        self.tracing = Tracing(config.agent.node, self.version)
        self.remediator: Remediator | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def sup(self) -> Supervisor:
        assert self.supervisor is not None, "the agent is not running"
        return self.supervisor

    def set_autonomy(self, mode: Autonomy) -> None:
        """Change the autonomy mode; `on` also lifts an emergency stop."""
        self.autonomy = mode
        if mode is Autonomy.ON and self.emergency:
            self.emergency = False
            self.store.data["emergency_stop"] = False
            self.store.save()
            log.warning("emergency stop lifted: autonomy on")
        log.info("autonomy set to %s", mode.value)

    async def emergency_stop(self) -> None:
        """Stop every component now and hold autonomy off (persisted) until `autonomy on`."""
        self.emergency = True
        self.autonomy = Autonomy.OFF
        self.store.data["emergency_stop"] = True
        self.store.save()
        # Durable before anything is stopped: an agent killed right after must come back stopped.
        if not await asyncio.to_thread(self.store.flush, 5.0):
            log.error("emergency stop could not be written to %s; it holds until this agent stops",
                      self.store.path)
        log.critical("EMERGENCY STOP: stopping every component, autonomy off until `agent autonomy on`")
        await self.sup.emergency_stop()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (signal handlers call this)."""
        if not self.stop_event.is_set():
            log.info("shutdown requested")
        self.stop_event.set()

    async def _rotate_logs_forever(self) -> None:
        settings = self.config.agent
        rotator = LogRotator(settings.log_max_bytes, settings.log_backups, max(1.0, settings.resources.interval))
        while True:
            paths = [replica_log_path(settings.log_dir, rt.name, index)
                     for rt in self.sup.components.values() for index in list(rt.replicas)]
            # Stat, copy and truncate in a thread: copying a large log must not stall the event loop.
            delay = await asyncio.to_thread(rotator.check, paths)
            await asyncio.sleep(delay)

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        loop = asyncio.get_running_loop()
        settings = self.config.agent
        try:
            self.sock = bind_listen_socket(settings.listen_host, settings.listen_port)
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except StartupError as exc:
            log.error("%s; nothing started", exc)
            return EXIT_UNAVAILABLE
        except OSError as exc:
            log.error("cannot create state dir %s: %s; nothing started", self.state_dir, exc.strerror or exc)
            return EXIT_UNAVAILABLE
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if not set_child_subreaper():
            log.warning("could not become a child subreaper; orphaned grandchildren are reaped by init")
        reaper = self.reaper = Reaper(loop, child_nofile=raise_fd_limit())
        try:
            self.containment = choose(settings.containment, lambda: set(reaper.running()))
        except ContainmentError as exc:
            log.error("%s (agent.containment: cgroup); nothing started", exc)
            return EXIT_UNAVAILABLE
        ledger = Ledger(self.state_dir)
        ledger.sweep_previous()
        ledger.write(self.containment)
        log.info("process containment: %s (%s)", self.containment.mechanism.value, self.containment.detail)
        self.guardian = Guardian(self.reaper, self.containment.guardian_lines())
        self.supervisor = Supervisor(self.config, self.reaper, self.store, guardian=self.guardian,
                                     containment=self.containment)
        self.resources = ResourceMonitor(self.supervisor, settings.resources.interval,
                                         settings.resources.mountpoints)
        client = httpx.AsyncClient(follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=64))
        self.probes = ProbeRunner(self.supervisor, client, observe=self.events.observe_probe)
        self.backlog = BacklogMonitor(self.config.backlog.sources, client)
        self._create_todo_stores()
        hook = settings.webhook
        self.remediator = Remediator(self, DedupeStore(self.state_dir / "dedupe.jsonl", hook.dedupe_ttl,
                                                       hook.dedupe_max_entries))
        try:
            server = HttpServer(self, self.sock)
        except SecretFileError as exc:
            log.error("%s; nothing started", exc)
            return EXIT_CONFIG
        except (OSError, ValueError) as exc:
            log.error("cannot set up the HTTP server: %s; nothing started", exc)
            return EXIT_UNAVAILABLE
        await server.start()
        host, port = self.sock.getsockname()[:2]
        log.info("agent %s listening on http://%s:%d (node %s, autonomy %s)",
                 self.version, host, port, settings.node, self.autonomy.value)
        if not is_loopback(host):
            log.warning("listening on %s, off loopback: this agent has no TLS and no authentication on "
                        "/metrics, /-/healthy and /-/ready (TLS and authentication come with a later "
                        "release); bind 127.0.0.1, or put a TLS proxy or a firewall in front", host)
        if self.emergency:
            log.warning("emergency stop in force (from the state dir): components stay stopped; "
                        "`agent autonomy on` lifts it")
        self._tasks.append(asyncio.ensure_future(self._rotate_logs_forever()))
        for observer in self._observers():
            self._tasks.append(asyncio.ensure_future(observer))
        starting = asyncio.ensure_future(self._start_components())
        await self.stop_event.wait()
        self.shutting_down = True
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        for task in self._tasks:
            task.cancel()
        await self.remediator.drain(5.0)
        try:
            await asyncio.wait_for(self.sup.shutdown(), settings.shutdown_timeout)
        except TimeoutError:
            log.error("components did not stop within %.0fs", settings.shutdown_timeout)
        self.containment.close()
        ledger.clear()
        await asyncio.to_thread(self.store.close)  # the last state snapshot, written before we exit
        self.probes.close()
        await server.stop()
        await client.aclose()
        self.guardian.close()
        self.reaper.close()
        self.tracing.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("agent stopped")
        return EXIT_OK

    def _create_todo_stores(self) -> None:
        """The embedded SQLite store is the agent's own: create a missing one, empty, so workers can start."""
        from agent import todos

        for source in self.config.backlog.sources:
            if source.kind == "sqlite" and source.path is not None and not source.path.exists():
                try:
                    with todos.connect(source.path):
                        pass
                except (OSError, sqlite3.Error) as exc:
                    log.error("cannot create the todo store %s: %s", source.path, exc)
                else:
                    log.info("created an empty todo store at %s", source.path)

    async def _start_components(self) -> None:
        if self.emergency:
            return
        await self.sup.start_all()
        names = [n for n in self.sup.order if self.sup.components[n].target > 0]
        log.info("components started: %s", ", ".join(names) or "none")

    def _observers(self) -> list[Coroutine[Any, Any, None]]:
        """Coroutines that observe probes, resources and the backlog."""
        assert self.resources is not None and self.backlog is not None
        return [self.resources.run(), self.backlog.run()]

