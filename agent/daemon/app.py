"""The running agent: wires the supervisor, observers and HTTP server together and owns shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from agent import __version__
from agent.act.dedupe import DedupeStore
from agent.act.history import HISTORY_FILE, STAMPS_FILE
from agent.act.modes import Modes
from agent.act.remediation import Remediator
from agent.config.changes import ReloadPlan, ReloadStatus, config_hash
from agent.config.dirs import readable_dirs
from agent.config.loader import config_paths
from agent.config.models import AgentSettings, Autonomy, Config
from agent.config.webconfig import WebConfigError
from agent.daemon.reexec import Handover, Trigger, drop_reserve, hand_over, reexec_routes
from agent.daemon.reload import Reloader
from agent.daemon.settle import settle_gc, settle_malloc
from agent.daemon.signals import HeldSignals, ignore_hangup
from agent.export.metrics import (
    AgentCollector,
    BacklogCollector,
    Collector,
    ComponentCollector,
    EventMetrics,
    HostCollector,
    metrics_routes,
)
from agent.export.tracing import Tracing
from agent.http.connections import ConnectionCollector, ConnectionGuard
from agent.http.control import control_routes
from agent.http.credentials import Auth, Credentials, SecretFileError, SecretWriteError
from agent.http.server import HttpServer, build_app
from agent.http.statuspage import announce_page, page_routes, page_url
from agent.http.webhook import webhook_routes
from agent.http.websecurity import INSECURE_ADVICE, WebGate, WebSecurity
from agent.observe.backlog import BacklogMonitor
from agent.observe.httpclient import HttpClient
from agent.observe.probes import ProbeRunner
from agent.observe.resources import ResourceMonitor
from agent.supervise.containment import Containment, ContainmentError, choose
from agent.supervise.guardian import Guardian
from agent.supervise.leftovers import Ledger
from agent.supervise.process import Reaper, raise_fd_limit, set_child_subreaper
from agent.supervise.rotation import rotate_logs_forever
from agent.supervise.state import StateStore
from agent.supervise.statelock import StateDirOwned, StateLock
from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_OWNED = 4  # the state dir is owned by another running agent (agent/supervise/statelock.py)

# Modules imported only when the config uses them (bench/memory.py says what each costs); the status
# document lists those loaded.
OPTIONAL_IMPORTS = ("httpx", "mcp", "opentelemetry.sdk", "psycopg", "sqlite3", "bcrypt")


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


def _own_and_bind(settings: AgentSettings, inherited: StateLock | None) -> tuple[socket.socket, StateLock]:
    """Create and lock the state dir (StateDirOwned when another agent holds it), then bind the HTTP socket."""
    try:
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create state dir {settings.state_dir}: {exc.strerror or exc}") from None
    try:
        lock = StateLock.take(settings.state_dir, inherited)
    except OSError as exc:
        raise StartupError(f"cannot lock state dir {settings.state_dir}: {exc.strerror or exc}") from None
    try:
        return bind_listen_socket(settings.listen_host, settings.listen_port), lock
    except StartupError:
        if lock is not inherited:
            lock.release()
        raise


def create_missing_stores(config: Config) -> None:
    """Create a missing embedded SQLite todo store (agent/todos/transactions.py), loading sqlite3 only for one."""
    if any(source.kind == "sqlite" for source in config.backlog.sources):
        from agent.todos import transactions as todos

        todos.create_missing_stores(config)


def served_capabilities(config: Config) -> list[str]:
    """Every capability a configured component serves (bounds the backlog's `capability` label)."""
    return [cap for comp in config.components.values() for cap in comp.capabilities]


@dataclass(eq=False)
class Parts:
    """Everything a running agent is made of, built before its server starts: nothing is filled in later.

    Each consumer is handed the few parts it uses (see `app()`); nothing receives the whole.
    """

    config: Config
    store: StateStore
    modes: Modes
    events: EventMetrics
    tracing: Tracing
    guard: ConnectionGuard
    reaper: Reaper
    containment: Containment
    ledger: Ledger
    guardian: Guardian
    supervisor: Supervisor
    resources: ResourceMonitor
    client: HttpClient
    probes: ProbeRunner
    backlog: BacklogMonitor
    backlog_view: BacklogCollector
    remediator: Remediator
    auth: Auth
    web: WebSecurity
    reload_status: ReloadStatus
    started_wall: float

    @classmethod
    def build(cls, config: Config, autonomy: Autonomy | None, loop: asyncio.AbstractEventLoop,
              handover: Handover | None = None) -> Parts:
        """Build every part in the running loop; ContainmentError when `agent.containment` cannot be had,
        SecretFileError (or OSError) when a credentials file is refused, SecretWriteError when one cannot be
        created, and then nothing was started.

        With a `handover` (after `agent reexec`), the parts take over the previous image's processes:
        its containment and guardian, nothing swept, its replicas adopted.
        """
        settings = config.agent
        web = WebSecurity(settings)
        auth = Auth(settings, web)
        store = StateStore(settings.state_dir)
        events = EventMetrics(config)
        reaper = Reaper(loop, child_nofile=raise_fd_limit() if handover is None else handover.child_nofile)
        try:
            if handover is None:
                containment = choose(settings.containment, lambda: set(reaper.running()))
            else:
                containment = handover.containment(lambda: set(reaper.running()))
        except ContainmentError:
            reaper.close()
            raise
        ledger = Ledger(settings.state_dir)
        if handover is None:
            ledger.sweep_previous()
        ledger.write(containment)
        log.info("process containment: %s (%s)", containment.mechanism.value, containment.detail)
        guardian = Guardian(reaper, containment.guardian_lines(), adopt=handover.guardian if handover else None)
        supervisor = Supervisor(config, reaper, store, guardian=guardian, containment=containment)
        modes = Modes(store, autonomy or settings.autonomy)
        tracing = Tracing(settings.node, __version__)
        client = HttpClient()  # httpx is imported by the first http probe or http backlog source
        hook = settings.webhook
        dedupe = DedupeStore(settings.state_dir / "dedupe.jsonl", hook.dedupe_ttl, hook.dedupe_max_entries)
        backlog = BacklogMonitor(config.backlog.sources, client)
        remediator = Remediator(config, supervisor, modes, dedupe, events, tracing)
        supervisor.roll_listeners += [lambda name, why: events.rollout_halt(name), remediator.rollout_halted]
        parts = cls(
            config=config, store=store, modes=modes, events=events, tracing=tracing,
            guard=ConnectionGuard(settings.http.max_connections, settings.http.request_timeout),
            reaper=reaper, containment=containment, ledger=ledger, guardian=guardian, supervisor=supervisor,
            resources=ResourceMonitor(supervisor, settings.resources.interval, settings.resources.mountpoints),
            client=client, probes=ProbeRunner(supervisor, client, observe=events.observe_probe),
            backlog=backlog, backlog_view=BacklogCollector(backlog, served_capabilities(config)),
            remediator=remediator,
            auth=auth, web=web, reload_status=ReloadStatus(config_hash(config)), started_wall=time.time(),
        )
        if handover is not None:
            handover.adopt(parts)
        return parts

    async def reconfigure(self, config: Config, plan: ReloadPlan, credentials: tuple[Credentials, Credentials]) -> None:
        """Apply a validated, planned reload: settings first (instant), then the components (may roll)."""
        old = self.config
        settings = config.agent
        self.config = config
        self.auth.use(settings, credentials)
        self.remediator.config = config
        self.events.configure(config)
        self.backlog.configure(config.backlog.sources)
        self.backlog_view.serve(served_capabilities(config))
        self.resources.interval = settings.resources.interval
        self.resources.mountpoints = settings.resources.mountpoints
        self.guard.max_connections = settings.http.max_connections
        self.guard.request_timeout = settings.http.request_timeout
        self.remediator.dedupe.ttl = settings.webhook.dedupe_ttl
        self.remediator.dedupe.max_entries = settings.webhook.dedupe_max_entries
        if settings.log_level != old.agent.log_level:
            logging.getLogger().setLevel(settings.log_level)
        if settings.autonomy != old.agent.autonomy:
            if self.modes.emergency:
                log.warning("agent.autonomy changed to %s in the config, not applied: an emergency stop is in "
                            "force (only `agent autonomy on` lifts it)", settings.autonomy.value)
            else:
                self.modes.set_autonomy(settings.autonomy)
        create_missing_stores(config)
        await self.supervisor.reconfigure(config, plan, hold_new=self.modes.emergency)
        self.remediator.stamps.keep_only(config.components)  # once the removed components are gone

    async def aclose(self) -> None:
        """After the components stopped: containment, state, clients, guardian, reaper, tracing."""
        loop = asyncio.get_running_loop()
        self.containment.close()
        self.ledger.clear()
        await asyncio.to_thread(self.store.close)  # the last state snapshot, written before we exit
        await asyncio.to_thread(self.remediator.close)  # its timestamps and history too
        self.probes.close()
        await self.client.aclose()
        self.guardian.close()  # it exits at EOF: reap it (bounded) before the reaper lets go of SIGCHLD
        deadline = loop.time() + 5.0
        while self.guardian.alive and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.reaper.close()
        self.tracing.shutdown()

    def app(self, extra_routes: Sequence[Route] = ()) -> Starlette:
        """The HTTP app: health from the supervisor, /metrics from the collectors, webhook and control API."""
        sup = self.supervisor
        collectors: list[Collector] = [
            AgentCollector(__version__, self.started_wall, self.modes, self.containment, self.guardian,
                           self.reaper, self.store, self.remediator.dedupe, self.reload_status,
                           [(STAMPS_FILE, self.remediator.stamps.store), (HISTORY_FILE, self.remediator.history)],
                           history=self.remediator.history),
            ConnectionCollector(self.guard),
            self.events,
            ComponentCollector(sup, self.resources, self.probes),
            HostCollector(self.resources),
            self.backlog_view,
            self.web,
        ]
        routes = metrics_routes(collectors, self.resources.mark_read)
        routes += webhook_routes(self.auth, self.modes, self.remediator, self.tracing, self.events.webhook_requests)
        routes += control_routes(self.auth, sup, self.modes, self.remediator, self.status)
        routes += page_routes(self.auth, self.backlog, lambda: self.web.context is not None)
        return build_app(sup, [*routes, *extra_routes], [Middleware(WebGate, self.web, self.auth)])

    def status(self) -> dict[str, Any]:
        """The `agent status --json` document."""
        now = time.time()
        components = []
        usage = self.resources.current()
        self.resources.mark_read()
        for name, rt in self.supervisor.components.items():
            running = [r for r in rt.replicas.values() if r.pid is not None]
            oldest = min((r.started_wall for r in running), default=0.0)
            # Figures of processes: none when none runs (not the last sample of a stopped one).
            use = usage.get(name) if running else None
            probe = self.probes.last_error.get(name)
            components.append({
                "component": name,
                "state": rt.state.value,
                "replicas": rt.running_count,
                "desired": rt.desired,
                "min": rt.spec.replicas.min,
                "max": rt.spec.replicas.max,
                "healthy": rt.healthy_count,
                "manual_stop": rt.manual_stop,
                "circuit": rt.circuit.value,
                "restarts": sum(rt.restarts.values()),
                "last_reason": rt.last_reason,
                "last_exit": rt.last_exit.describe if rt.last_exit else "",
                "uptime_seconds": round(now - oldest, 1) if oldest else None,
                "cpu_seconds": round(use.cpu_seconds, 2) if use else None,
                "rss_bytes": use.rss_bytes if use else None,
                "pids": [r.pid for r in running],
                "external": rt.external,  # state "external": probed and exported, never run by the agent
                "last_probe_error": {"ts": probe[0], "message": probe[1]} if probe else None,
                "instances": [{
                    "replica": index, "pid": r.pid, "state": r.state.value, "ready": r.ready, "healthy": r.healthy,
                    "uptime_seconds": round(now - r.started_wall, 1) if r.pid is not None and r.started_wall else None,
                    "probe_error": r.probe_error,
                } for index, r in sorted(rt.replicas.items())],
            })
        guardian = self.guardian
        return {"node": self.config.agent.node, "version": __version__, "autonomy": self.modes.autonomy.value,
                "emergency_stop": self.modes.emergency, "uptime_seconds": round(now - self.started_wall, 1),
                "start_time": self.started_wall,
                "config": {"hash": self.reload_status.hash, "last_reload_successful": self.reload_status.successful,
                           "loaded_at": self.reload_status.success_wall},
                "containment": {
                    "mechanism": self.containment.mechanism.value,
                    "detail": self.containment.detail,
                    "guardian_pid": guardian.pid if guardian.alive else None,
                    "guardian_restarts": guardian.restarts,
                },
                "optional_imports": [name for name in OPTIONAL_IMPORTS if name in sys.modules],
                "components": components}


def serving_app(parts: Parts, reloader: Reloader, trigger: Trigger) -> Starlette:
    """The whole app `agent run` serves: the parts' routes, `/-/reload` and `/-/reexec`."""
    return parts.app([*reloader.routes(), *reexec_routes(parts.auth, trigger, parts.started_wall)])


class Agent:
    """One agent process: builds its parts, serves, and owns start-up, shutdown and re-exec."""

    def __init__(self, config: Config, *, autonomy: Autonomy | None = None, config_paths: list[Path] | None = None,
                 handover: Handover | None = None, held: HeldSignals | None = None) -> None:
        self.config = config
        self.autonomy = autonomy
        # The files the config was read from (None: the embedded default); `agent reexec` checks them.
        self.config_paths = config_paths
        # What the previous image of this process handed over (`agent reexec`), adopted at start.
        self.handover = handover
        self.held = held  # the stop signals sent during that reexec, handled once the handlers are in place
        self.stop_event = asyncio.Event()
        self.reexec_requested = False
        self.lock: StateLock | None = None  # the state dir's, taken (or adopted after a reexec) by _listen
        self._signal_tasks: set[asyncio.Task[None]] = set()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (signal handlers call this); it wins over a pending reexec."""
        if not self.stop_event.is_set() or self.reexec_requested:
            log.info("shutdown requested")
        self.reexec_requested = False
        self.stop_event.set()

    def request_reexec(self) -> None:
        """Hand the components over to a new image of this process (a Trigger accepted the request)."""
        if not self.stop_event.is_set():
            self.reexec_requested = True
            self.stop_event.set()

    def _listen(self) -> socket.socket:
        """Create and lock the state dir and bind the HTTP socket, before anything starts; after a reexec
        whose new config cannot have them (its state dir owned by another agent too), the previous image's
        config is used instead (the components are not left unsupervised). The lock the previous image
        held is kept for its state dir (Handover.adopt lets it go once a new one is in use)."""
        inherited = self.handover.lock if self.handover is not None else None
        try:
            sock, self.lock = _own_and_bind(self.config.agent, inherited)
        except (StartupError, StateDirOwned) as exc:
            previous = self.handover.config if self.handover is not None else None
            if previous is None or previous.agent == self.config.agent:
                raise
            log.error("%s; running on the previous image's config instead", exc)
            self.config = previous
            sock, self.lock = _own_and_bind(previous.agent, inherited)
        return sock

    async def _give_up(self, code: int) -> int:
        """Nothing could be built: stop what a previous image handed over, if anything, then exit."""
        if self.handover is not None:
            await self.handover.stop_all()
        return code

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code (a reexec does not return)."""
        loop = asyncio.get_running_loop()
        try:
            sock = self._listen()
        except StateDirOwned as exc:  # another agent's: start nothing, touch nothing there
            log.error("%s; nothing started", exc)
            return await self._give_up(EXIT_OWNED)
        except StartupError as exc:
            log.error("%s; nothing started", exc)
            return await self._give_up(EXIT_UNAVAILABLE)
        settings = self.config.agent
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if not set_child_subreaper():
            log.warning("could not become a child subreaper; orphaned grandchildren are reaped by init")
        try:
            parts = Parts.build(self.config, self.autonomy, loop, self.handover)
        except ContainmentError as exc:
            log.error("%s (agent.containment: %s); nothing started", exc, settings.containment)
            return await self._give_up(EXIT_UNAVAILABLE)
        except (SecretFileError, WebConfigError) as exc:
            log.error("%s; nothing started", exc)
            return await self._give_up(EXIT_CONFIG)
        except SecretWriteError as exc:  # a full or read-only state dir, as an unwritable one (exit 3)
            log.error("%s; nothing started", exc)
            return await self._give_up(EXIT_UNAVAILABLE)
        except OSError as exc:
            if self.handover is not None:
                log.exception("cannot take over the previous image's components")
                return await self._give_up(EXIT_FAILURE)
            log.error("cannot read or create a credentials file: %s; nothing started", exc)
            return EXIT_CONFIG
        except Exception:
            if self.handover is None:
                raise
            log.exception("cannot take over the previous image's components")
            return await self._give_up(EXIT_FAILURE)
        create_missing_stores(self.config)
        reloader = Reloader(parts, self.config_paths or config_paths())
        loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
        trigger = Trigger(parts.supervisor, parts.reaper, self.config_paths, self.request_reexec, parts.modes,
                          parts.remediator)
        loop.add_signal_handler(signal.SIGUSR2, self._on_sigusr2, trigger)
        if self.held is not None:  # after every handler is in place: those held across the exec
            handlers = {signal.SIGTERM: self.request_stop, signal.SIGINT: self.request_stop,
                        signal.SIGHUP: reloader.trigger, signal.SIGUSR2: lambda: self._on_sigusr2(trigger)}
            for signum in self.held.release():
                log.info("%s held across the exec: handled now", signal.Signals(signum).name)
                handlers[signal.Signals(signum)]()
        try:
            server = HttpServer(serving_app(parts, reloader, trigger), parts.guard, sock, parts.web)
        except (OSError, ValueError) as exc:
            log.error("cannot set up the HTTP server: %s; nothing started", exc)
            return await self._abort(parts, EXIT_UNAVAILABLE)
        await server.start()
        settle_gc()
        settle_malloc()
        host, port = sock.getsockname()[:2]
        scheme = "https" if parts.web.context else "http"
        log.info("agent %s listening on %s://%s:%d (node %s, autonomy %s; %s)", __version__, scheme, host, port,
                 settings.node, parts.modes.autonomy.value, parts.web.describe())
        announce_page(page_url(scheme, host, port, (parts.auth.control.bearer or b"").decode()))
        if self.handover is not None:
            log.info("agent %s took over from agent %s (same pid %d): %d replica(s) adopted",
                     __version__, self.handover.version, os.getpid(),
                     sum(rt.running_count for rt in parts.supervisor.components.values()))
        for where, message in readable_dirs(self.config):  # an existing state or log dir others may read
            log.warning("%s: %s", where, message)
        missing = parts.web.insecure(host)
        if missing:
            log.warning("listening on %s, off loopback, without %s: %s", host, " and ".join(missing),
                        INSECURE_ADVICE)
        if parts.modes.emergency:
            log.warning("emergency stop in force (from the state dir): components stay stopped; "
                        "`agent autonomy on` lifts it")
        parts.probes.watch_externals()  # also during an emergency stop: they are not ours to stop
        tasks = [asyncio.ensure_future(c) for c in (rotate_logs_forever(parts.supervisor),
                                                    parts.resources.run(), parts.backlog.run())]
        starting = asyncio.ensure_future(self._start_components(parts))
        await self.stop_event.wait()
        parts.modes.closing = True
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        for task in tasks:
            task.cancel()
        if not self.reexec_requested:
            parts.supervisor.begin_shutdown()  # rolls in flight end now; a re-exec settled its actions already
        await parts.remediator.drain(5.0)
        code = EXIT_OK
        served = True
        if self.reexec_requested:
            await server.stop()
            served = False
            parts.probes.close()
            await parts.client.aclose()
            # A SIGTERM handled during those awaits wins: it was taken here, so the new image would never
            # see it (the agent ran on, deaf to the stop it had been sent).
            if self.reexec_requested:
                why = hand_over(parts, self.autonomy, self.lock)  # returns only when the exec failed
                log.error("reexec failed (%s); stopping the components and exiting", why)
                code = EXIT_FAILURE
            else:
                log.info("reexec given up: a stop was requested meanwhile")
                drop_reserve(parts.supervisor)
        try:
            await asyncio.wait_for(parts.supervisor.shutdown(), parts.config.agent.shutdown_timeout)
        except TimeoutError:
            log.error("components did not stop within %.0fs", parts.config.agent.shutdown_timeout)
        await parts.aclose()
        if self.lock is not None:
            self.lock.release()  # after the last state file was written
        if served:
            await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            loop.remove_signal_handler(sig)
        ignore_hangup()
        log.info("agent stopped")
        return code

    def _on_sigusr2(self, trigger: Trigger) -> None:
        log.info("reexec requested by SIGUSR2")
        task = asyncio.ensure_future(trigger.on_signal())
        self._signal_tasks.add(task)
        task.add_done_callback(self._signal_tasks.discard)

    async def _abort(self, parts: Parts, code: int) -> int:
        """The server cannot be set up: stop whatever runs (adopted replicas), close the parts."""
        await parts.supervisor.shutdown()
        await parts.aclose()
        return code

    async def _start_components(self, parts: Parts) -> None:
        if parts.modes.emergency:
            if any(rt.running_count for rt in parts.supervisor.components.values()):
                # Adopted after a re-exec during which an emergency stop was asked for (api.py: it waits
                # for no lock the re-exec holds): this image carries it out.
                log.warning("emergency stop in force: stopping the replicas handed over by the previous image")
                await parts.supervisor.emergency_stop()
            return
        sup = parts.supervisor
        await sup.start_all()
        names = [n for n in sup.order if sup.components[n].target > 0]
        log.info("components started: %s", ", ".join(names) or "none")
        if self.handover is not None:  # adopted replicas launched with what the file no longer says
            await asyncio.gather(*(sup.replace_stale(rt) for rt in list(sup.components.values())))
