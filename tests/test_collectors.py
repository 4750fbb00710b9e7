"""The /metrics collectors and event stores in process, as prometheus_client tests its own: each test builds
a collector over real in-memory objects (a Supervisor that starts nothing, a resource monitor over a fixture
/proc tree, a todo store on a SQLite file), renders it, parses the text with prometheus_client's parser
and reads sample values. The end-to-end tests that scrape a running agent are beside these
(test_metrics_series.py, test_observe.py, test_webhook.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from agent.act.dedupe import JOURNAL_FILE, DedupeStore
from agent.act.history import HISTORY_FILE, AuditEntry, History
from agent.act.modes import Modes
from agent.config.changes import ReloadStatus, hash_value
from agent.config.models import Config
from agent.config.settings import Autonomy
from agent.config.sources import BacklogSource
from agent.export.collectors import AgentCollector, BacklogCollector, ComponentCollector, HostCollector
from agent.export.events import WEBHOOK_CODES, EventMetrics
from agent.export.exposition import Family, Samples, render
from agent.observe.backlog import BacklogMonitor
from agent.observe.httpclient import HttpClient
from agent.observe.probes import ProbeRunner
from agent.observe.resources import HostUsage, ResourceMonitor
from agent.supervise.process import ExitStatus
from agent.supervise.replica import Replica, ReplicaState
from agent.supervise.state import STATE_FILE, StateStore
from agent.supervise.supervisor import Supervisor
from agent.supervise.tracking import TrackingContainment
from agent.todos.store import open_store
from tests.test_resources import fake_proc

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(families: Iterable[Family | Samples]) -> Scrape:
    """Render as /metrics does (text format) and parse it back: {(sample name, labels): value}."""
    out: Scrape = {}
    for family in text_string_to_metric_families(render(families, False).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(samples: Scrape, name: str, **labels: str) -> float | None:
    """One sample's value, as prometheus_client's registry.get_sample_value: None when absent."""
    return samples.get((name, frozenset(labels.items())))


def series(samples: Scrape, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


class NoReaper:
    """The one thing a Supervisor that never spawns asks of its reaper."""

    orphans_reaped = 0

    def running(self) -> list[int]:
        return []


def _config(tmp_path: Path, components: dict[str, Any]) -> Config:
    return Config.model_validate({"agent": {"state_dir": str(tmp_path / "state")}, "components": components})


# --- EventMetrics ---------------------------------------------------------------------------------


def test_event_metrics_precreate_count_and_keep_exemplars(tmp_path: Path) -> None:
    config = _config(tmp_path, {"web": {"command": ["x"], "probe": {"http": {"url": "http://127.0.0.1:1/"}}}})
    events = EventMetrics(config)
    before = scrape(events.families())
    # Known label values exist from the first scrape, at 0.
    assert {dict(k)["code"]: v for k, v in series(before, "orchestrator_webhook_requests_total").items()} == \
        dict.fromkeys(WEBHOOK_CODES, 0.0)
    assert get(before, "orchestrator_probe_duration_seconds_count", component="web", probe="http") == 0
    assert get(before, "orchestrator_remediation_duration_seconds_count", action="scale_to") == 0
    assert series(before, "orchestrator_remediation_actions_total") == {}  # born at the first decision

    events.webhook_requests.inc("200")
    events.observe_probe("web", "http", 0.03)
    events.observe_probe("web", "tcp", 0.03)  # not a probe the config has: not recorded
    events.decided("web", "restart", "executed", "4bf92f3577b34da6a3ce929d0e0e4736")
    events.decided("", "restart", "rejected", "")
    events.action_took("restart", 0.2)
    events.rollout_halt("web")
    after = scrape(events.families())
    assert get(after, "orchestrator_webhook_requests_total", code="200") == 1
    assert get(after, "orchestrator_probe_duration_seconds_bucket", component="web", probe="http", le="0.025") == 0
    assert get(after, "orchestrator_probe_duration_seconds_bucket", component="web", probe="http", le="0.1") == 1
    assert get(after, "orchestrator_probe_duration_seconds_count", component="web", probe="http") == 1
    assert get(after, "orchestrator_probe_duration_seconds_sum", component="web", probe="http") == pytest.approx(0.03)
    assert get(after, "orchestrator_probe_duration_seconds_count", component="web", probe="tcp") is None
    assert get(after, "orchestrator_remediation_actions_total", component="web", action="restart",
               result="executed") == 1
    assert get(after, "orchestrator_remediation_duration_seconds_bucket", action="restart", le="0.5") == 1
    assert get(after, "orchestrator_remediation_duration_seconds_bucket", action="restart", le="0.1") == 0
    assert get(after, "orchestrator_rollout_halted_total", component="web") == 1

    # OpenMetrics carries the decision's trace id as the exemplar.
    text = render(events.families(), True).decode()
    actions = next(f for f in openmetrics_families(text) if f.name == "orchestrator_remediation_actions")
    executed = next(s for s in actions.samples if s.labels.get("result") == "executed")
    assert executed.exemplar is not None
    assert executed.exemplar.labels == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}


def test_event_metrics_go_on_from_a_dump_and_drop_removed_components(tmp_path: Path) -> None:
    both = _config(tmp_path, {"web": {"command": ["x"]}, "db": {"command": ["x"]}})
    events = EventMetrics(both)
    events.decided("web", "restart", "executed", "")
    events.decided("db", "restart", "executed", "")
    events.decided("_unknown", "start", "rejected", "")
    events.webhook_requests.inc("200")

    only_db = _config(tmp_path, {"db": {"command": ["x"]}})
    successor = EventMetrics(only_db)
    successor.load(json.loads(json.dumps(events.dump())), only_db)  # as `agent reexec` hands them over
    successor.webhook_requests.inc("200")
    samples = scrape(successor.families())
    assert get(samples, "orchestrator_webhook_requests_total", code="200") == 2
    assert get(samples, "orchestrator_remediation_actions_total", component="db", action="restart",
               result="executed") == 1
    assert get(samples, "orchestrator_remediation_actions_total", component="web", action="restart",
               result="executed") is None
    assert get(samples, "orchestrator_remediation_actions_total", component="_unknown", action="start",
               result="rejected") == 1


# --- AgentCollector -------------------------------------------------------------------------------


def test_agent_collector_reads_modes_reload_state_files_and_dedupe(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    modes = Modes(StateStore(state_dir), Autonomy.DRY_RUN)
    # State files under a path that is a file, not a directory: their writes fail, and are counted.
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    store = StateStore(blocked)
    store.save()
    assert not store.flush(10)
    dedupe = DedupeStore(state_dir / JOURNAL_FILE, ttl=3600, max_entries=2)
    for n in range(3):  # one over the bound: the oldest is evicted before its TTL
        dedupe.add(f"key-{n}")
    history = History(blocked / HISTORY_FILE, max_entries=1)
    for n in range(3):
        history.append(AuditEntry(ts=time.time(), alertname=f"A{n}", component="web", action="restart",
                                  result="executed", reason="", fingerprint="f", status="firing", trace_id=""))
    history.close(10)  # its writes fail: every line is dropped, and counted
    digest = "ab" * 32
    reload = ReloadStatus(digest, successful=False, success_wall=1_700_000_000.0)
    guardian = SimpleNamespace(alive=True, restarts=2)  # the real one starts a process: only its counters are read
    collector = AgentCollector("1.2.3", 1_600_000_000.0, modes, TrackingContainment(set), guardian,  # type: ignore[arg-type]
                               NoReaper(), store, dedupe, reload,  # type: ignore[arg-type]
                               memory=[(HISTORY_FILE, history)], history=history,
                               log_errors=lambda: {"agent.log": 4}, revision="0123abc", python_version="3.11.9")
    try:
        s = scrape(collector.families())
    finally:
        store.close(1)
        modes.store.close(1)
    assert get(s, "orchestrator_build_info", version="1.2.3", revision="0123abc", python_version="3.11.9") == 1
    assert {dict(k)["mode"]: v for k, v in series(s, "orchestrator_autonomy_mode").items()} == \
        {"on": 0, "dry-run": 1, "off": 0}
    assert get(s, "orchestrator_emergency_stop") == 0
    assert get(s, "orchestrator_agent_start_time_seconds") == 1_600_000_000.0
    assert get(s, "orchestrator_config_last_reload_successful") == 0
    assert get(s, "orchestrator_config_last_reload_success_timestamp_seconds") == 1_700_000_000.0
    assert get(s, "orchestrator_config_hash") == hash_value(digest)
    assert get(s, "orchestrator_containment_info", mechanism="tracking") == 1
    assert get(s, "orchestrator_guardian_up") == 1
    assert get(s, "orchestrator_guardian_restarts_total") == 2
    assert get(s, "orchestrator_orphans_reaped_total") == 0
    assert (get(s, "orchestrator_state_write_errors_total", file=STATE_FILE) or 0) >= 1
    assert get(s, "orchestrator_state_write_errors_total", file=JOURNAL_FILE) == 0
    assert (get(s, "orchestrator_state_write_errors_total", file=HISTORY_FILE) or 0) >= 1
    assert get(s, "orchestrator_history_entries_dropped_total") == 3
    assert get(s, "orchestrator_log_write_errors_total", file="agent.log") == 4
    assert get(s, "orchestrator_dedupe_keys") == 2
    assert get(s, "orchestrator_dedupe_evictions_total") == 1
    assert (get(s, "process_open_fds") or 0) > 0  # this process, read from /proc


def test_agent_collector_shows_an_emergency_stop(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    modes = Modes(state, Autonomy.ON)
    asyncio.run(modes.hold_emergency())
    dedupe = DedupeStore(tmp_path / JOURNAL_FILE, ttl=3600, max_entries=10)
    collector = AgentCollector("0", 0.0, modes, TrackingContainment(set), SimpleNamespace(alive=False, restarts=0),  # type: ignore[arg-type]
                               NoReaper(), state, dedupe, ReloadStatus("0" * 64))  # type: ignore[arg-type]
    s = scrape(collector.families())
    state.close(1)
    assert get(s, "orchestrator_emergency_stop") == 1
    assert get(s, "orchestrator_autonomy_mode", mode="off") == 1
    assert get(s, "orchestrator_guardian_up") == 0
    assert get(s, "orchestrator_history_entries_dropped_total") == 0  # no history given


# --- ComponentCollector ---------------------------------------------------------------------------


def test_component_collector_reads_runtimes_probes_and_resources(tmp_path: Path) -> None:
    config = _config(tmp_path, {
        "web": {"command": ["x"], "replicas": {"min": 1, "max": 3, "initial": 2}, "capabilities": ["gpu"],
                "probe": {"http": {"url": "http://127.0.0.1:1/"}}, "limits": {"memory_bytes": "1GiB"}},
        "batch": {"command": ["x"], "kind": "job", "essential": True},
        "ext": {"probe": {"tcp": {"port": 1}}},
    })
    sup = Supervisor(config, NoReaper(), StateStore(tmp_path / "state"))  # type: ignore[arg-type]
    web, batch = sup.components["web"], sup.components["batch"]
    web.replicas = {0: Replica(0, state=ReplicaState.RUNNING, pid=100, probe_ok=True),
                    1: Replica(1, state=ReplicaState.RUNNING, pid=101, probe_ok=False)}
    web.restarts["probe"] += 2
    web.last_exit = ExitStatus(None, 9)
    batch.manual_stop = True
    proc = tmp_path / "proc"
    fake_proc(proc, 100, 1, utime=300, stime=100, cutime=0, threads=1, rss_pages=10, children=[], fds=3)
    fake_proc(proc, 101, 1, utime=100, stime=0, cutime=0, threads=1, rss_pages=5, children=[], fds=2)
    resources = ResourceMonitor(sup, 5.0, [], proc_root=str(proc))
    resources.sample_once()
    probes = ProbeRunner(sup, HttpClient())
    probes.last_reason["web"] = "http_status"

    s = scrape(ComponentCollector(sup, resources, probes).families())
    assert get(s, "orchestrator_component_info", component="web", kind="process", essential="false") == 1
    assert get(s, "orchestrator_component_info", component="batch", kind="job", essential="true") == 1
    assert series(s, "orchestrator_component_capability") == {frozenset({("component", "web"),
                                                                         ("capability", "gpu")}): 1}
    assert {dict(k)["component"]: dict(k)["state"] for k in series(s, "orchestrator_component_state")} == \
        {"web": "unhealthy", "batch": "stopped", "ext": "external"}
    # One of two desired replicas healthy; stopped by hand wants none; the external one not yet seen up.
    assert get(s, "orchestrator_component_up", component="web") == 0.5
    assert get(s, "orchestrator_component_up", component="batch") == 1
    assert get(s, "orchestrator_component_up", component="ext") == 0
    assert get(s, "orchestrator_component_replicas", component="web") == 2
    assert get(s, "orchestrator_component_desired_replicas", component="web") == 2
    assert get(s, "orchestrator_component_min_replicas", component="web") == 1
    assert get(s, "orchestrator_component_max_replicas", component="web") == 3
    assert series(s, "orchestrator_component_manual_stop") == {frozenset({("component", "batch")}): 1}
    # Restart reasons the rules alert on are there from 0: `probe` with a probe, `resource` with a limit.
    assert {dict(k)["reason"]: v for k, v in series(s, "orchestrator_component_restarts_total").items()
            if dict(k)["component"] == "web"} == {"exit": 0, "probe": 2, "resource": 0}
    assert {dict(k)["reason"]: v for k, v in series(s, "orchestrator_component_restarts_total").items()
            if dict(k)["component"] == "batch"} == {"exit": 0}
    assert {(dict(k)["component"], dict(k)["replica"]): v
            for k, v in series(s, "orchestrator_component_probe_success").items()} == \
        {("web", "0"): 1, ("web", "1"): 0, ("ext", "0"): 0}
    assert {dict(k)["component"]: dict(k)["reason"] for k in series(s, "orchestrator_component_probe_error")} == \
        {"web": "http_status", "ext": "none"}
    assert series(s, "orchestrator_component_last_exit_code") == {frozenset({("component", "web")}): 137}
    tick, page = resources.procfs.tick, resources.procfs.page
    assert get(s, "orchestrator_component_cpu_seconds_total", component="web") == pytest.approx(500 / tick)
    assert get(s, "orchestrator_component_resident_memory_bytes", component="web") == 15 * page
    assert get(s, "orchestrator_component_open_fds", component="web") == 5
    assert get(s, "orchestrator_component_cpu_seconds_total", component="batch") == 0
    assert series(s, "orchestrator_component_memory_limit_bytes") == {frozenset({("component", "web")}): 1 << 30}


# --- HostCollector --------------------------------------------------------------------------------


def test_host_collector_reads_the_last_host_sample(tmp_path: Path) -> None:
    sup = Supervisor(_config(tmp_path, {}), NoReaper(), StateStore(tmp_path / "state"))  # type: ignore[arg-type]
    resources = ResourceMonitor(sup, 5.0, [])
    resources.host = HostUsage(cpu_ratio=0.25, memory_available=3 << 30, memory_total=8 << 30,
                               disk_free={"/": 10 << 30, "/data": 1 << 30}, disk_total={"/": 100 << 30},
                               load=(1.5, 1.0, 0.5), sampled_at=1_700_000_000.0)
    s = scrape(HostCollector(resources).families())
    assert get(s, "orchestrator_host_cpu_usage_ratio") == 0.25
    assert get(s, "orchestrator_host_memory_available_bytes") == 3 << 30
    assert get(s, "orchestrator_host_memory_total_bytes") == 8 << 30
    assert get(s, "orchestrator_host_disk_free_bytes", mountpoint="/") == 10 << 30
    assert get(s, "orchestrator_host_disk_free_bytes", mountpoint="/data") == 1 << 30
    assert get(s, "orchestrator_host_disk_total_bytes", mountpoint="/") == 100 << 30
    assert get(s, "orchestrator_host_disk_total_bytes", mountpoint="/data") == 0  # size unknown
    assert [get(s, f"orchestrator_host_load{p}") for p in ("1", "5", "15")] == [1.5, 1.0, 0.5]
    assert get(s, "orchestrator_resources_sampled_timestamp_seconds") == 1_700_000_000.0


# --- BacklogCollector -----------------------------------------------------------------------------


def test_backlog_collector_reads_each_source_as_last_read(tmp_path: Path) -> None:
    db = tmp_path / "todos.db"
    with open_store(str(db)) as store:
        store.add("a", "high", ["gpu"])
        store.add("b", "high", ["quantum"])
        store.finish(store.add("c", "low"), "done")
    aged = tmp_path / "todos.json"
    aged.write_text(json.dumps([{"status": "pending", "priority": "low", "created_at": time.time() - 600},
                                {"status": "no such status"}]))
    sources = [BacklogSource(kind="sqlite", path=db, name="queue"),
               BacklogSource(kind="json", path=aged, name="file"),
               BacklogSource(kind="json", path=tmp_path / "gone.json", name="gone")]

    async def read() -> BacklogCollector:
        async with HttpClient() as client:
            monitor = BacklogMonitor(sources, client)
            collector = BacklogCollector(monitor, ["gpu"])
            await monitor.read_all()
            return collector

    s = scrape(asyncio.run(read()).families())
    backlog = {tuple(dict(k)[n] for n in ("status", "priority", "capability")): v
               for k, v in series(s, "orchestrator_todo_backlog").items()}
    # Only the non-zero counts (`quantum` is `_other`), and the pending/normal zero of each capability a
    # component works on (`gpu` and `any`, never `_other`) that the rules' per-capability sums need.
    assert backlog == {("pending", "high", "gpu"): 1, ("pending", "high", "_other"): 1, ("done", "low", "any"): 1,
                       ("pending", "low", "any"): 1, ("pending", "normal", "gpu"): 0, ("pending", "normal", "any"): 0}
    assert get(s, "orchestrator_todo_oldest_pending_age_seconds", priority="low") == pytest.approx(600, abs=60)
    assert get(s, "orchestrator_todo_oldest_pending_age_seconds", priority="critical") == 0
    assert {dict(k)["source"]: v for k, v in series(s, "orchestrator_todo_source_up").items()} == \
        {"queue": 1, "file": 1, "gone": 0}
    assert get(s, "orchestrator_todo_source_last_success_timestamp_seconds", source="gone") == 0
    assert (get(s, "orchestrator_todo_source_last_success_timestamp_seconds", source="queue") or 0) > 0
    assert get(s, "orchestrator_todo_invalid_rows", source="file") == 1
    assert get(s, "orchestrator_todo_invalid_rows", source="queue") == 0
    # Per source: the backlog of up sources only; the store's own counters from its first good read.
    assert get(s, "orchestrator_todo_source_backlog", source="queue", status="pending", priority="high",
               capability="gpu") == 1
    assert {dict(k)["source"] for k in series(s, "orchestrator_todo_source_backlog")} == {"queue", "file"}
    per_source = {tuple(dict(k)[n] for n in ("status", "priority", "capability")): v
                  for k, v in series(s, "orchestrator_todo_source_backlog").items() if dict(k)["source"] == "file"}
    assert per_source == {("pending", "low", "any"): 1, ("pending", "normal", "gpu"): 0,
                          ("pending", "normal", "any"): 0}
    assert series(s, "orchestrator_todo_leases_expired_total") == {frozenset({("source", "queue")}): 0}
    assert series(s, "orchestrator_todo_completions_rejected_total") == {frozenset({("source", "queue")}): 0}
    assert get(s, "orchestrator_todo_source_created_total", source="queue", capability="_other") == 1
    assert get(s, "orchestrator_todo_source_completed_total", source="queue", capability="any") == 1
