"""The running agent: wires the supervisor, observers and HTTP server together and owns shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

from starlette.applications import Starlette

from agent import __version__
from agent.config.dirs import readable_dirs
from agent.config.loader import DEFAULT_CONFIG
from agent.config.models import Config
from agent.config.settings import AgentSettings, Autonomy
from agent.config.webconfig import WebConfigError
from agent.daemon.handover import Handover, drop_reserve, hand_over
from agent.daemon.parts import Parts, create_missing_stores
from agent.daemon.reexec import Trigger
from agent.daemon.reload import Reloader
from agent.daemon.settle import settle_gc, settle_malloc
from agent.daemon.signals import HeldSignals, ignore_hangup
from agent.http.admin import reexec_routes, reload_routes
from agent.http.credentials import SecretFileError, SecretWriteError
from agent.http.server import HttpServer
from agent.http.statuspage import announce_page, page_url
from agent.http.websecurity import INSECURE_ADVICE
from agent.supervise.containment import ContainmentError
from agent.supervise.process import set_child_subreaper
from agent.supervise.rotation import rotate_logs_forever
from agent.supervise.statelock import StateDirOwned, StateLock

log = logging.getLogger("agent")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_OWNED = 4  # the state dir is owned by another running agent (agent/supervise/statelock.py)


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
            lock.release(stopped=False)  # a start that failed is no clean stop (`agent --once` says CRITICAL)
        raise


def serving_app(parts: Parts, reloader: Reloader, trigger: Trigger) -> Starlette:
    """The whole app `agent run` serves: the parts' routes, `/-/reload` and `/-/reexec`."""
    return parts.app([*reload_routes(parts.auth, parts.modes, reloader),
                      *reexec_routes(parts.auth, trigger, parts.started_wall)])


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
            parts = Parts.build(self.config, self.autonomy, loop, self.handover, config_files=self.config_paths)
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
        # The files it started with: searching again could find a file that appeared since.
        reloader = Reloader(parts, self.config_paths or [DEFAULT_CONFIG])
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
            # After the last state file was written. Only a clean stop leaves the stop mark: after a failed
            # reexec nothing supervises the dir any more, and `agent --once` must say CRITICAL.
            self.lock.release(stopped=code == EXIT_OK)
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
                # Adopted after a re-exec during which an emergency stop was asked for (act/manual.py: it waits
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
