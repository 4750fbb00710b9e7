"""The collectors /metrics renders: each reads one part's state at scrape time and yields fresh families.

Names follow the contract in docs/metrics.md. The collectors never probe or sample: they only read
what the supervisor, probe runner, resource monitor and backlog monitor last recorded.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from agent import revision as agent_revision
from agent.act.dedupe import JOURNAL_FILE
from agent.config.changes import ReloadStatus, hash_value
from agent.config.settings import Autonomy
from agent.export.exposition import Family, Row, Samples, gauge
from agent.export.families import (
    disk_free_family,
    memory_available_family,
    probe_success_family,
    source_up_family,
    todo_backlog_family,
)
from agent.export.process import ProcessFamilies
from agent.observe.backlog import ANY_CAPABILITY, OTHER_CAPABILITY, Counts, Key, bounded
from agent.supervise.logs import log_write_errors
from agent.supervise.replica import REASONS
from agent.supervise.state import STATE_FILE
from agent.todos.row import PRIORITIES

if TYPE_CHECKING:  # types of the sources the collectors read; none of them imports this module
    from agent.act.dedupe import DedupeStore
    from agent.act.modes import Modes
    from agent.act.pipeline import AlertPipeline
    from agent.observe.backlog import BacklogMonitor
    from agent.observe.probes import ProbeRunner
    from agent.observe.resources import ResourceMonitor
    from agent.supervise.containment import Containment
    from agent.supervise.guardian import Guardian
    from agent.supervise.process import Reaper
    from agent.supervise.procfs import Usage
    from agent.supervise.replica import Runtime
    from agent.supervise.state import StateStore
    from agent.supervise.supervisor import Supervisor


class Collector(Protocol):
    """What /metrics renders: fresh families read from a source at scrape time (never probing or sampling)."""

    def families(self) -> Iterable[Family | Samples]: ...


class WriteCounted(Protocol):
    """A writer of a state dir file that counts its failed writes."""

    write_errors: int


class Dropping(Protocol):
    """The history: lines that never reached its file."""

    dropped: int


class AgentCollector:
    """The agent itself: build (version, revision, Python), start time, modes, containment, guardian, reaper,
    state dir and log writes."""

    def __init__(self, version: str, started_wall: float, modes: Modes, containment: Containment,
                 guardian: Guardian, reaper: Reaper, store: StateStore, dedupe: DedupeStore,
                 reload: ReloadStatus, memory: Sequence[tuple[str, WriteCounted]] = (),
                 history: Dropping | None = None,
                 log_errors: Callable[[], dict[str, int]] = log_write_errors,
                 revision: str | None = None, python_version: str | None = None) -> None:
        self.version, self.started_wall, self.reload = version, started_wall, reload
        # The build's labels, as Prometheus exporters carry theirs: read once, at start (agent/__init__.py).
        self.revision = agent_revision() if revision is None else revision
        self.python_version = platform.python_version() if python_version is None else python_version
        self.modes, self.containment, self.guardian, self.reaper = modes, containment, guardian, reaper
        self.store, self.dedupe, self.memory = store, dedupe, list(memory)
        self.history, self.log_errors = history, log_errors
        # The agent's own CPU, memory and descriptors (`process_open_fds`, `process_max_fds`), read
        # from /proc at scrape time; not registered anywhere, so nothing process-global.
        self.process = ProcessFamilies()

    def families(self) -> Iterator[Family | Samples]:
        """The agent's own series, then the process_* set."""
        build = gauge("orchestrator_build_info", "The agent's version, the git revision it was built from "
                      "(unknown when not recorded) and the Python that runs it.",
                      ["version", "revision", "python_version"])
        build.add_metric([self.version, self.revision, self.python_version], 1)
        yield build
        mode = gauge("orchestrator_autonomy_mode", "Autonomy mode (1 for the current one).", ["mode"])
        for m in Autonomy:
            mode.add_metric([m.value], 1 if self.modes.autonomy is m else 0)
        yield mode
        yield Family("orchestrator_emergency_stop", "1 while an emergency stop is in force.",
                     value=1 if self.modes.emergency else 0)
        yield Family("orchestrator_agent_start_time_seconds", "When the agent started (epoch s).",
                     value=self.started_wall)
        reload = self.reload
        yield Family("orchestrator_config_last_reload_successful", "1 when the last config reload (or the "
                     "start) succeeded, 0 while the files on disk are invalid or need `agent reexec`.",
                     value=1 if reload.successful else 0)
        yield Family("orchestrator_config_last_reload_success_timestamp_seconds", "When the config in force "
                     "was loaded (epoch s).", value=reload.success_wall)
        yield Family("orchestrator_config_hash", "Hash of the config in force (first 52 bits of its "
                     "sha256; changes with every applied change).", value=hash_value(reload.hash))
        mechanism = gauge("orchestrator_containment_info",
                           "How a replica's whole process tree is contained (1 for the mechanism in use).",
                           ["mechanism"])
        mechanism.add_metric([self.containment.mechanism.value], 1)
        yield mechanism
        yield Family("orchestrator_guardian_up", "1 while the guardian that ends the components after an "
                     "agent crash runs.", value=1 if self.guardian.alive else 0)
        yield Family("orchestrator_guardian_restarts", "Guardian processes started again after one died.",
                     value=self.guardian.restarts, typ="counter")
        yield Family("orchestrator_orphans_reaped", "Exited processes the agent reaped that it had not "
                     "started: orphaned descendants of components.", value=self.reaper.orphans_reaped,
                     typ="counter")
        errors = Family("orchestrator_state_write_errors", "Failed writes of a state dir file: disk full "
                        "or read-only.", labels=["file"], typ="counter")
        errors.add_metric([STATE_FILE], self.store.write_errors)
        errors.add_metric([JOURNAL_FILE], self.dedupe.write_errors)
        for name, writer in self.memory:  # remediation.json, history.jsonl
            errors.add_metric([name], writer.write_errors)
        yield errors
        yield Family("orchestrator_history_entries_dropped", "History lines that never reached history.jsonl: "
                     "beyond the history's size while its writes failed, or left at shutdown.",
                     value=self.history.dropped if self.history is not None else 0, typ="counter")
        log_errors = Family("orchestrator_log_write_errors", "Failed writes of the agent's own log lines "
                            "(each line lost): disk full, or stderr closed.", labels=["file"], typ="counter")
        for name, count in self.log_errors().items():
            log_errors.add_metric([name], count)
        yield log_errors
        yield Family("orchestrator_dedupe_keys", "Alert keys held by the dedupe journal, at most "
                     "dedupe_max_entries.", value=len(self.dedupe.keys))
        yield Family("orchestrator_dedupe_evictions", "Dedupe keys dropped for dedupe_max_entries before "
                     "their TTL.", value=self.dedupe.evicted, typ="counter")
        yield from self.process.families()


class PipelineCollector:
    """The alert pipeline's heartbeat (agent/act/pipeline.py): the counts always; whether it is up and when
    the last heartbeat came only while `agent.webhook.heartbeat_timeout` is set. Computed from the
    timestamps when read."""

    def __init__(self, pipeline: AlertPipeline) -> None:
        self.pipeline = pipeline

    def families(self) -> Iterator[Family]:
        """The heartbeat counters, then the two gauges while a timeout is set."""
        pipeline = self.pipeline
        yield Family("orchestrator_alert_pipeline_heartbeats", "Heartbeats (firing alerts with label "
                     "heartbeat=\"true\") delivered by Alertmanager; never acted on.", value=pipeline.heartbeats,
                     typ="counter")
        yield Family("orchestrator_alert_pipeline_heartbeats_resolved", "Heartbeat alerts delivered as resolved "
                     "(the heartbeat rule stopped firing); not heartbeats.", value=pipeline.resolved, typ="counter")
        yield Family("orchestrator_alert_pipeline_silences", "Times no heartbeat came within "
                     "agent.webhook.heartbeat_timeout.", value=pipeline.silences, typ="counter")
        if pipeline.timeout is None:
            return
        yield Family("orchestrator_alert_pipeline_up", "1 while the last heartbeat came within "
                     "agent.webhook.heartbeat_timeout (counted from the agent's start before the first), 0 after.",
                     value=1 if pipeline.up() else 0)
        yield Family("orchestrator_alert_pipeline_last_heartbeat_timestamp_seconds", "When the last heartbeat "
                     "came (epoch s; 0: none yet).", value=pipeline.last or 0.0)


def precreated_reasons(probe: bool, memory_limit: bool) -> tuple[str, ...]:
    """The restart reasons written at 0 before their first restart: those the rules alert on that can
    happen to the component. `increase()` needs a sample before an increment to count it, so a series
    born at 1 loses its first restart; the other reasons appear at their first restart."""
    return ("exit", *(("probe",) if probe else ()), *(("resource",) if memory_limit else ()))


def alert_scales_down(rt: Runtime) -> bool:
    """Whether an alert can lower the component's desired count: it has a command, room between its
    bounds, and `scale_down` or `scale_to` among its allowed actions."""
    spec = rt.spec
    return (not rt.external and spec.replicas.min < spec.replicas.max
            and not {"scale_down", "scale_to"}.isdisjoint(spec.remediation.allowed_actions))


class ComponentCollector:
    """Every configured component: state, replicas, restarts, probes, resource use.

    Lean with many components: a series is written only when it says something a query cannot derive.
    One-hot families carry only their current value (state, probe error); `manual_stop` only while 1;
    `last_exit_code` once a replica has exited; restart reasons only those the rules alert on (`exit`,
    `probe` with a probe, `resource` with a memory limit) before they are first counted. The budget per
    component is in docs/metrics.md ("Series per component").
    """

    def __init__(self, supervisor: Supervisor, resources: ResourceMonitor, probes: ProbeRunner,
                 last_scale_up: Mapping[str, float] | None = None) -> None:
        self.sup, self.resources, self.probes = supervisor, resources, probes
        # When an alert last scaled each component up (epoch s; the remediator's, persisted in
        # remediation.json): the start of its scale-down stabilisation window.
        self.last_scale_up: Mapping[str, float] = {} if last_scale_up is None else last_scale_up
        # Each component's `(name,)`, the same tuple every scrape: the renderer's line cache keeps the
        # label values of every row, and eight families share this one.
        self._keys: dict[str, tuple[str]] = {}

    def _labelled(self) -> list[tuple[tuple[str], Runtime]]:
        keys = self._keys
        if len(keys) > 2 * len(self.sup.components):  # components a reload removed
            keys.clear()
        return [(keys.get(name) or keys.setdefault(name, (name,)), rt) for name, rt in self.sup.components.items()]

    def families(self) -> Iterator[Family | Samples]:
        """One set of series per component, all components in each family.

        Each family reads its rows as it is rendered, one family after the other: a scrape never holds
        the rows of every family at once (what a scrape holds at once, it leaves resident:
        docs/benchmarks.md, Memory). Rendering never awaits, so they read one state.
        """
        labelled = self._labelled()  # every component as ((name,), runtime)
        usage = self.resources.current()

        def each(read: Callable[[Runtime], float]) -> Iterator[Row]:
            return ((key, read(rt)) for key, rt in labelled)

        def used(read: Callable[[Usage], float]) -> Iterator[Row]:
            return ((key, read(use) if (use := usage.get(key[0])) else 0) for key, _ in labelled)

        def info() -> Iterator[Row]:
            for (name,), rt in labelled:
                yield (name, rt.spec.kind, "true" if rt.spec.essential else "false"), 1

        def up(rt: Runtime) -> float:
            target = rt.target
            return min(1.0, rt.healthy_count / target) if target else 1.0

        def probe_ok() -> Iterator[Row]:
            for (name,), rt in labelled:
                spec = rt.spec
                if spec.probe is None:
                    continue
                for index in range(max(spec.replicas.max, 1)):
                    rep = rt.observed if rt.external else rt.replicas.get(index)
                    if rep is not None or index < rt.desired:
                        yield (name, str(index)), 1 if rep is not None and rep.probe_ok else 0

        def restarts() -> Iterator[Row]:
            for (name,), rt in labelled:
                shown = precreated_reasons(rt.spec.probe is not None, rt.spec.limits.memory_bytes is not None)
                for reason in REASONS:
                    n = rt.restarts[reason]
                    if n or reason in shown:
                        yield (name, reason), n

        component = ["component"]
        yield Family("orchestrator_component_info", "Configured components.", labels=["component", "kind", "essential"],
                     source=info())
        yield Family("orchestrator_component_capability", "Capabilities a component serves.",
                     labels=["component", "capability"],
                     source=(((name, cap), 1) for (name,), rt in labelled for cap in rt.spec.capabilities))
        yield Family("orchestrator_component_state", "Component state (only the current one, at 1).",
                     labels=["component", "state"], source=(((name, rt.state.value), 1) for (name,), rt in labelled))
        yield Family("orchestrator_component_up", "Fraction of desired replicas running and passing their probe "
                     "(1 when none is desired).", labels=component, source=each(up))
        yield Family("orchestrator_component_replicas", "Replicas running now.", labels=component,
                     source=each(lambda rt: rt.running_count))
        yield Family("orchestrator_component_desired_replicas", "Desired replicas.", labels=component,
                     source=each(lambda rt: rt.desired))
        yield Family("orchestrator_component_scale_down_not_before_timestamp_seconds", "When an alert may next "
                     "lower the desired replicas (epoch s): the last scale-up by an alert (0: none) plus "
                     "remediation.scale_down_stabilization. Only for components an alert can scale down.",
                     labels=component, source=((key, self.last_scale_up.get(key[0], 0.0)
                                                + rt.spec.remediation.scale_down_stabilization)
                                               for key, rt in labelled if alert_scales_down(rt)))
        yield Family("orchestrator_component_min_replicas", "Configured minimum replicas.", labels=component,
                     source=each(lambda rt: rt.spec.replicas.min))
        yield Family("orchestrator_component_max_replicas", "Configured maximum replicas.", labels=component,
                     source=each(lambda rt: rt.spec.replicas.max))
        yield Family("orchestrator_component_manual_stop", "1 when stopped by hand (absent otherwise).",
                     labels=component, source=((key, 1) for key, rt in labelled if rt.manual_stop))
        yield Family("orchestrator_component_restarts", "Restarts by reason.", labels=["component", "reason"],
                     typ="counter", source=restarts())
        yield probe_success_family(probe_ok())
        yield Family("orchestrator_component_probe_error", "Reason of the last probe result (only the current "
                     "one, at 1).", labels=["component", "reason"],
                     source=(((name, self.probes.last_reason.get(name, "none")), 1) for (name,), rt in labelled
                             if rt.spec.probe is not None))
        yield Family("orchestrator_component_last_exit_code",
                     "Exit code of the last replica that ended (128+N for signal N).", labels=component,
                     source=((key, rt.last_exit.metric_code) for key, rt in labelled if rt.last_exit is not None))
        yield Family("orchestrator_component_cpu_seconds", "CPU time of the process trees.", labels=component,
                     typ="counter", source=used(lambda use: use.cpu_seconds))
        yield Family("orchestrator_component_resident_memory_bytes", "RSS of the process trees.", labels=component,
                     source=used(lambda use: use.rss_bytes))
        yield Family("orchestrator_component_open_fds", "Open file descriptors in the process trees.",
                     labels=component, source=used(lambda use: use.open_fds))
        yield Family("orchestrator_component_memory_limit_bytes", "Configured memory limit.", labels=component,
                     source=((key, rt.spec.limits.memory_bytes) for key, rt in labelled
                             if rt.spec.limits.memory_bytes is not None))


class HostCollector:
    """The host's CPU, memory, disks and load, as the resource monitor last sampled them."""

    def __init__(self, resources: ResourceMonitor) -> None:
        self.resources = resources

    def families(self) -> Iterator[Family | Samples]:
        """Host gauges, and when they were sampled."""
        host = self.resources.host
        yield Family("orchestrator_host_cpu_usage_ratio", "Host CPU busy ratio (0..1) since the "
                                "previous sample.", value=host.cpu_ratio)
        yield memory_available_family(host.memory_available)
        yield Family("orchestrator_host_memory_total_bytes", "Host memory total.",
                                value=host.memory_total)
        free = disk_free_family()
        total = gauge("orchestrator_host_disk_total_bytes", "Size per configured mountpoint.", ["mountpoint"])
        for mount, value in host.disk_free.items():
            free.add_metric([mount], value)
            total.add_metric([mount], host.disk_total.get(mount, 0))
        yield free
        yield total
        for i, period in enumerate(("1", "5", "15")):
            yield Family(f"orchestrator_host_load{period}", f"Load average over {period} minute(s).",
                                    value=host.load[i])
        # Sampling pauses while nothing reads the figures, so a scrape may serve an old sample.
        yield Family("orchestrator_resources_sampled_timestamp_seconds", "When the component and host "
                     "resource figures were last sampled (epoch s; 0: not yet).", value=host.sampled_at)


FLOW_HELP = {
    "created": "Todos added to the store, under each capability they need (a todo store's own counter).",
    "completed": "Todos that left the store as done or failed, under each capability they need (a todo "
                 "store's own counter).",
    "work_seconds": "Seconds between claim and finish of the todos counted in "
                    "orchestrator_todo_source_completed_total (a todo store's own counter).",
}


class BacklogCollector:
    """The todo backlog as the sources were last read, capabilities bounded by the config."""

    def __init__(self, monitor: BacklogMonitor, capabilities: Iterable[str]) -> None:
        self.monitor = monitor
        self.serve(capabilities)

    def serve(self, capabilities: Iterable[str]) -> None:
        """The capabilities the configured components serve (again after a reload)."""
        self.served = frozenset(capabilities)
        self.capabilities = sorted(self.served | {ANY_CAPABILITY, OTHER_CAPABILITY})
        # The capabilities whose pending count is written even at 0 (`_other` only while non-zero: no
        # component works on it, so no rule reads it).
        self.kept = sorted(self.served | {ANY_CAPABILITY})
        self._bounded: tuple[Counts, Counts] | None = None  # (totals as read, folded), refolded per read

    def _sparse(self, by_key: Mapping[Key, int]) -> list[tuple[Key, int]]:
        """The backlog series worth writing: every non-zero count, and the one zero each rule needs per
        capability a component works on (pending, normal): the per-capability sums of pending todos
        (capability:orchestrator_todo_pending:sum and the W default written from it) read 0, not "no
        data", for a capability with nothing waiting. Every other combination at 0 is left out: of
        4 statuses x 4 priorities, 15 zeros a capability wrote before (docs/metrics.md)."""
        keys = {key for key, n in by_key.items() if n}
        keys.update(("pending", "normal", cap) for cap in self.kept)
        return [(key, by_key.get(key, 0)) for key in sorted(keys)]

    def families(self) -> Iterator[Family | Samples]:
        """Backlog counts, oldest pending age, and each source's health."""
        monitor = self.monitor
        if self._bounded is None or self._bounded[0] is not monitor.totals:
            self._bounded = (monitor.totals, bounded(monitor.totals, self.served))
        totals = self._bounded[1]
        backlog = todo_backlog_family()
        for key, n in self._sparse(totals.by_key):
            backlog.add_metric(list(key), n)
        yield backlog
        age = gauge("orchestrator_todo_oldest_pending_age_seconds", "Age of the oldest pending todo "
                     "(0 when none is pending).", ["priority"])
        now = time.time()
        for priority in PRIORITIES:
            created = totals.oldest_pending.get(priority)
            age.add_metric([priority], max(0.0, now - created) if created is not None else 0.0)
        yield age
        up = source_up_family()
        last = gauge("orchestrator_todo_source_last_success_timestamp_seconds",
                      "When the source was last read successfully (0: never).", ["source"])
        duration = gauge("orchestrator_todo_source_read_duration_seconds", "Duration of the last read.",
                          ["source"])
        invalid = gauge("orchestrator_todo_invalid_rows", "Malformed rows skipped by the last read of the source.",
                         ["source"])
        unmapped = gauge("orchestrator_todo_unmapped_rows", "Todos a sql source's last read left out because "
                         "their status is not in its status_map (sql sources only).", ["source"])
        for label, source in monitor.sources.items():
            up.add_metric([label], 1 if source.up else 0)
            last.add_metric([label], source.last_success)
            duration.add_metric([label], source.duration)
            invalid.add_metric([label], source.counts.invalid)
            if source.spec.kind == "sql":
                unmapped.add_metric([label], source.counts.unmapped)
        yield from (up, last, duration, invalid, unmapped)
        yield from self._per_source()

    def _per_source(self) -> Iterator[Family]:
        """Each source's own backlog and store counters, labelled with the source: agents that read one
        shared queue export identical series, which the rules count once (max without instance, node)."""
        backlog = gauge("orchestrator_todo_source_backlog", "Todos of one source (up sources only) by status, "
                        "priority and required capability.", ["source", "status", "priority", "capability"])
        expired = Family("orchestrator_todo_leases_expired", "Claims whose lease ran out, so the todo went "
                         "back to pending (a todo store's own counter).", labels=["source"], typ="counter")
        rejected = Family("orchestrator_todo_completions_rejected", "Completions refused because the claim "
                          "token held no live lease (a todo store's own counter).", labels=["source"],
                          typ="counter")
        flows = {kind: Family(f"orchestrator_todo_source_{kind}", help_text, labels=["source", "capability"],
                              typ="counter") for kind, help_text in FLOW_HELP.items()}
        for label, source in self.monitor.sources.items():
            if source.flow is not None:  # from the first good read on, every capability from 0
                for kind, family in flows.items():
                    folded = dict.fromkeys(self.capabilities, 0.0)
                    for (k, cap), n in source.flow.items():
                        if k == kind:
                            folded[cap if cap in self.served or cap == ANY_CAPABILITY else OTHER_CAPABILITY] += n
                    for cap in self.capabilities:
                        family.add_metric([label, cap], folded[cap])
            if source.up:
                for key, n in self._sparse(bounded(source.counts, self.served).by_key):
                    backlog.add_metric([label, *key], n)
            if source.counters is not None:  # from the first good read on: a counter never starts at a guess
                expired.add_metric([label], source.counters["leases_expired"])
                rejected.add_metric([label], source.counters["completions_rejected"])
        yield from (backlog, expired, rejected, *flows.values())
