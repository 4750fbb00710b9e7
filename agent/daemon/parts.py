"""The parts of a running agent (state, modes, supervisor, monitors, remediation, credentials, HTTP
guard), built together in the running loop, reconfigured together by a reload, closed together, and the
HTTP app and status document made from them."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from agent import __version__
from agent.act.dedupe import DedupeStore
from agent.act.history import HISTORY_FILE, STAMPS_FILE
from agent.act.modes import Modes
from agent.act.remediation import Remediator
from agent.config.changes import ReloadPlan, ReloadStatus, config_hash
from agent.daemon import carry
from agent.export.collectors import (
    AgentCollector,
    BacklogCollector,
    Collector,
    ComponentCollector,
    HostCollector,
    PipelineCollector,
)
from agent.export.events import EventMetrics
from agent.export.tracing import Tracing
from agent.http.connections import ConnectionCollector, ConnectionGuard
from agent.http.control import control_routes
from agent.http.credentials import Auth, Credentials
from agent.http.metrics import metrics_routes
from agent.http.server import build_app
from agent.http.statuspage import page_routes
from agent.http.webhook import webhook_routes
from agent.http.websecurity import WebGate, WebSecurity
from agent.observe.backlog import BacklogMonitor
from agent.observe.httpclient import HttpClient
from agent.observe.probes import ProbeRunner
from agent.observe.prometheus_alerts import PrometheusAlerts
from agent.observe.resources import ResourceMonitor
from agent.supervise.choice import choose
from agent.supervise.containment import Containment, ContainmentError
from agent.supervise.guardian import Guardian
from agent.supervise.leftovers import Ledger
from agent.supervise.policy import Circuit
from agent.supervise.process import Reaper, raise_fd_limit
from agent.supervise.state import StateStore
from agent.supervise.supervisor import Supervisor

if TYPE_CHECKING:
    from agent.config.models import Config
    from agent.config.settings import Autonomy
    from agent.daemon.handover import Handover

log = logging.getLogger("agent")

# Modules imported only when the config uses them (bench/memory.py says what each costs); the status
# document lists those loaded.
OPTIONAL_IMPORTS = ("httpx", "mcp", "opentelemetry.sdk", "psycopg", "sqlite3", "bcrypt", "redis")


def create_missing_stores(config: Config) -> None:
    """Create a missing embedded SQLite todo store (agent/todos/transactions.py), loading sqlite3 only for one."""
    if any(source.kind == "sqlite" for source in config.backlog.sources):
        from agent.todos import transactions as todos

        todos.create_missing_stores(config)


@dataclass(eq=False)
class Parts:
    """Everything a running agent is made of, built before its server starts: nothing is filled in later.

    Each consumer is handed the few parts it uses (see `app()`), or a protocol naming them: the reload
    (daemon/reload.py `Reloadable`), the hand-over (daemon/handover.py `Handing`, `Adopting`) and the
    counters it carries (daemon/carry.py `Counted`).
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
    page_alerts: PrometheusAlerts
    auth: Auth
    web: WebSecurity
    reload_status: ReloadStatus
    started_wall: float
    # The absolute paths of the files the config is read from; empty: the embedded default.
    config_files: tuple[str, ...] = ()

    @classmethod
    def build(cls, config: Config, autonomy: Autonomy | None, loop: asyncio.AbstractEventLoop,
              handover: Handover | None = None, config_files: Sequence[Path] | None = None) -> Parts:
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
        remediator.pending_todos = backlog.pending
        supervisor.roll_listeners += [lambda name, why: events.rollout_halt(name), remediator.rollout_halted]
        supervisor.restart_listeners.append(remediator.restarted)
        supervisor.circuit_listeners.append(remediator.circuit_changed)
        parts = cls(
            config=config, store=store, modes=modes, events=events, tracing=tracing,
            guard=ConnectionGuard(settings.http.max_connections, settings.http.request_timeout),
            reaper=reaper, containment=containment, ledger=ledger, guardian=guardian, supervisor=supervisor,
            resources=ResourceMonitor(supervisor, settings.resources.interval, settings.resources.mountpoints),
            client=client, probes=ProbeRunner(supervisor, client, observe=events.observe_probe),
            backlog=backlog, backlog_view=BacklogCollector(backlog, config.served_capabilities()),
            remediator=remediator, page_alerts=PrometheusAlerts(client),
            auth=auth, web=web, reload_status=ReloadStatus(config_hash(config)), started_wall=time.time(),
            config_files=tuple(str(p.absolute()) for p in config_files or ()),
        )
        remediator.pipeline.watch_since = parts.started_wall  # before a heartbeat, silence counts from the start
        if handover is not None:
            handover.adopt(parts)
            carry.resume(parts, handover.counters)
        remediator.pipeline.start()
        return parts

    async def reconfigure(self, config: Config, plan: ReloadPlan, credentials: tuple[Credentials, Credentials]) -> None:
        """Apply a validated, planned reload: settings first (instant), then the components (may roll)."""
        old = self.config
        settings = config.agent
        self.config = config
        self.auth.use(settings, credentials)
        self.remediator.configure(config)
        self.events.configure(config)
        self.backlog.configure(config.backlog.sources)
        self.backlog_view.serve(config.served_capabilities())
        self.resources.configure(settings.resources)
        self.guard.configure(settings.http)
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
        self.remediator.forget_removed(config.components)

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
            PipelineCollector(self.remediator.pipeline),
            ComponentCollector(sup, self.resources, self.probes, self.remediator.last_scale_up),
            HostCollector(self.resources),
            self.backlog_view,
            self.web,
        ]
        routes = metrics_routes(collectors, self.resources.mark_read)
        routes += webhook_routes(self.auth, self.modes, self.remediator, self.tracing, self.events.webhook_requests)
        routes += control_routes(self.auth, sup, self.modes, self.remediator, self.status)
        routes += page_routes(self.auth, self.backlog, lambda: self.web.context is not None, self.page_alerts)
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
                # When the open circuit's cooldown ends and its trial start is due (null unless open: closed,
                # or half-open with the trial under way).
                "circuit_until": None if rt.circuit is not Circuit.OPEN
                else rt.circuit_opened_wall + rt.spec.restart.circuit_cooldown,
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
                           "loaded_at": self.reload_status.success_wall,
                           # What `agent backtest` and `agent config show` read when they ask this agent.
                           "files": list(self.config_files), "embedded": not self.config_files},
                "containment": {
                    "mechanism": self.containment.mechanism.value,
                    "detail": self.containment.detail,
                    "guardian_pid": guardian.pid if guardian.alive else None,
                    "guardian_restarts": guardian.restarts,
                },
                "optional_imports": [name for name in OPTIONAL_IMPORTS if name in sys.modules],
                # null while agent.webhook.heartbeat_timeout is unset (agent/act/pipeline.py)
                "alert_pipeline": self.remediator.pipeline.document(now),
                # The status page's reads of Prometheus's alerts: what failed last (null when fine or off), when.
                "status_page": {"prometheus_url": self.config.agent.status_page.prometheus_url,
                                **self.page_alerts.status(self.config.agent.status_page.prometheus_url)},
                "components": components}
