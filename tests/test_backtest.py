"""`agent backtest` against a real Prometheus backfilled with two days of synthetic history (1-minute samples).

Day 1 (a weekday): indexer (3 replicas recorded, idle) is scaled down at midnight, gets a burst of 40
todos at 09:00 (scaled up), and its next scale-down is held by its 1 h stabilisation; todo_worker's
backlog rises (30 pending from 14:00, 70 from 14:30) and drains at 16:00; ollama's memory grows from
10:00 towards its limit, forecast past the headroom around 12:30, during peak hours. Day 2: web is
down 10:00-10:10 and again 10:40-10:50, closer than its 1 h cooldown.
Expected times follow from the shipped rules (15 s evaluations), the shipped Alertmanager routing
(group_wait 5s, group_interval 30s, repeat_interval 2m, scale_to every 30 s; off-peak restarts muted
08:00-20:00 Mon-Fri)
and the components' guardrails below.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.tsdb import OpenMetrics, PrometheusServer, backfill, every
from tests.helpers import ROOT, AgentProcess
from tests.stackbin import require_binary

pytestmark = [pytest.mark.stack]

MiB = 1024 * 1024
MIN = 60.0
HOUR = 3600.0


def first_day() -> datetime:
    """Midnight UTC of a Monday-Thursday at least two days ago: both days are weekdays, wholly past."""
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    while day.weekday() > 3:
        day -= timedelta(days=1)
    return day


def history(out: Path, d0: float) -> None:
    end = d0 + 2 * 24 * HOUR
    d1 = d0 + 24 * HOUR

    def const(v: float) -> Any:
        return lambda t: v

    def pending(t: float) -> float:
        if d0 + 14 * HOUR <= t < d0 + 14.5 * HOUR:
            return 30
        if d0 + 14.5 * HOUR <= t < d0 + 16 * HOUR:
            return 70
        return 0

    def rss(t: float) -> float:
        if d0 + 10 * HOUR <= t < d0 + 21 * HOUR:
            return 880 * MiB + 0.2 * MiB * (t - (d0 + 10 * HOUR)) / MIN
        return 880 * MiB

    def web_up(t: float) -> float:
        minute = (t - d1 - 10 * HOUR) / MIN  # day 2, minutes after 10:00
        return 0 if 0 <= minute < 10 or 40 <= minute < 50 else 1

    def indexing(t: float) -> float:
        return 40 if d0 + 9 * HOUR <= t < d0 + 9 * HOUR + 10 * MIN else 0

    def not_before(t: float) -> float:
        # What the live agent exported for indexer: its last scale-up (at 09:00:20, for the burst) plus its
        # 1 h scale-down stabilisation; before, a scale-up long ago.
        return d0 if t < d0 + 9 * HOUR + 20 else d0 + 10 * HOUR + 20

    comps = {"web": (1, 1), "todo_worker": (1, 8), "ollama": (1, 1), "indexer": (1, 4)}
    recorded = {"indexer": 3}
    with open(out, "w") as f:
        om = OpenMetrics(f)

        def per_component(name: str, value: Any) -> None:
            for comp in comps:
                om.series(name, {"component": comp}, every(d0, end, MIN, value(comp)))

        per_component("orchestrator_component_up", lambda c: web_up if c == "web" else const(1))
        for metric in ("orchestrator_component_desired_replicas", "orchestrator_component_replicas"):
            per_component(metric, lambda c: const(recorded.get(c, 1)))
        per_component("orchestrator_component_min_replicas", lambda c: const(1))
        per_component("orchestrator_component_max_replicas", lambda c: const(comps[c][1]))
        # As the agent writes them: the current state only (no zeros for the others), and no
        # manual_stop series while nothing is stopped by hand; the automation guard is 1 regardless.
        for comp in comps:
            om.series("orchestrator_component_state", {"component": comp, "state": "running"},
                      every(d0, end, MIN, const(1)))
        om.series("orchestrator_component_memory_limit_bytes", {"component": "ollama"},
                  every(d0, end, MIN, const(1024 * MiB)))
        om.series("orchestrator_component_resident_memory_bytes", {"component": "ollama"}, every(d0, end, MIN, rss))
        om.series("orchestrator_component_capability", {"component": "todo_worker", "capability": "todo_processing"},
                  every(d0, end, MIN, const(1)))
        om.series("orchestrator_component_capability", {"component": "indexer", "capability": "indexing"},
                  every(d0, end, MIN, const(1)))
        om.series("orchestrator_todo_backlog", {"status": "pending", "priority": "normal", "capability": "any"},
                  every(d0, end, MIN, pending))
        om.series("orchestrator_todo_backlog", {"status": "pending", "priority": "normal", "capability": "indexing"},
                  every(d0, end, MIN, indexing))
        om.series("orchestrator_component_scale_down_not_before_timestamp_seconds", {"component": "indexer"},
                  every(d0, end, MIN, not_before))
        om.series("orchestrator_todo_source_up", {"source": "todos"}, every(d0, end, MIN, const(1)))
        om.close()


AGENT_CONFIG = {
    "agent": {"node": "backtest"},
    "components": {
        "web": {"command": [sys.executable, "-c", "pass"], "remediation": {"cooldown": "1h"}},
        "todo_worker": {"command": [sys.executable, "-c", "pass"], "capabilities": ["todo_processing"],
                        "replicas": {"min": 1, "max": 8}, "remediation": {"max_step": 2, "max_step_percent": 0}},
        "ollama": {"command": [sys.executable, "-c", "pass"]},
        "indexer": {"command": [sys.executable, "-c", "pass"], "capabilities": ["indexing"],
                    "replicas": {"min": 1, "max": 4}, "remediation": {"scale_down_stabilization": "1h"}},
    },
}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float, Path]]:
    require_binary("promtool")
    binary = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("backtest")
    d0 = first_day().timestamp()
    history(tmp / "history.om", d0)
    backfill(tmp / "history.om", tmp / "data")
    (tmp / "agent.yml").write_text(yaml.safe_dump(AGENT_CONFIG))
    server = PrometheusServer(tmp / "data", tmp, binary).start()
    try:
        yield server.url, d0, tmp
    finally:
        server.stop()


def backtest(url: str, d0: float, tmp: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    start = datetime.fromtimestamp(d0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = datetime.fromtimestamp(d0 + 2 * 24 * HOUR, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = subprocess.run([sys.executable, "-m", "agent", "backtest", "--prometheus", url, "--start", start,
                           "--end", end, "-c", str(tmp / "agent.yml"), "--json", *extra],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def at(d0: float, day: int, hh: int, mm: int, ss: int = 0) -> str:
    t = d0 + day * 24 * HOUR + hh * HOUR + mm * MIN + ss
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rows(doc: dict[str, Any], component: str, policy: int = 0) -> list[dict[str, Any]]:
    return [r for r in doc["policies"][policy]["timeline"] if r["component"] == component]


def decided(rs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["time"], r["action"], r["result"], r["replicas_before"], r["replicas_after"]) for r in rs]


def test_timeline_matches_the_rules_and_guardrails(prometheus: tuple[str, float, Path]) -> None:
    url, d0, tmp = prometheus
    code, doc, err = backtest(url, d0, tmp)
    assert code == 0, err
    timeline = doc["policies"][0]["timeline"]

    # Two outages 40 minutes apart: ComponentDown fires after its 5m `for:`, group_wait 5s later the
    # first restart runs; the second, within web's 1h cooldown, is held by it.
    web = rows(doc, "web")
    assert [(r["time"], r["alert"], r["action"], r["result"]) for r in web] == [
        (at(d0, 1, 10, 5, 5), "OrchestratorComponentDown", "restart", "executed"),
        (at(d0, 1, 10, 7, 5), "OrchestratorComponentDown", "restart", "duplicate"),
        (at(d0, 1, 10, 45, 5), "OrchestratorComponentDown", "restart", "cooldown"),
    ], web
    assert web[0]["starts_at"] == at(d0, 1, 10, 5) and web[1]["repeats"] == 2  # repeats at 10:07:05, 10:09:05
    assert web[2]["reason"] == "restarted 2400s ago (cooldown 3600s)"
    assert web[2]["repeats"] == 3  # 10:45:05, 10:47:05, 10:49:05: still within the cooldown

    # The backlog (no store counters: 6 s a todo, a 60 s drain target): scale_to 3 fires at 14:00:15 (two
    # evaluations), then 7 from 14:30; each delivery moves at most max_step (2; max_step_percent 0), and the
    # scale_to route repeats every 30 s.
    worker = [r for r in rows(doc, "todo_worker") if r["result"] == "executed"]
    assert decided(worker) == [
        (at(d0, 0, 14, 0, 20), "scale_to", "executed", 1, 3),
        (at(d0, 0, 14, 30, 20), "scale_to", "executed", 3, 5),
        (at(d0, 0, 14, 30, 50), "scale_to", "executed", 5, 7),
    ]
    assert all(abs(r["replicas_after"] - r["replicas_before"]) <= 2 for r in worker)
    held = [r for r in rows(doc, "todo_worker") if r["result"] == "ignored"]
    assert held and all(r["reason"].startswith("already at") for r in held)
    assert all(r["time"] < at(d0, 0, 16, 0) for r in rows(doc, "todo_worker"))  # drained: nothing after

    # The leak: firing since early afternoon, muted through peak hours, restarted at the first group
    # interval at or after 20:00.
    ollama = rows(doc, "ollama")
    # Open loop: the recorded RSS keeps growing until 21:00, so the alert stays firing and its repeats
    # are duplicates of the one restart.
    assert [(r["action"], r["result"]) for r in ollama] == [("restart", "executed"), ("restart", "duplicate")]
    sent = datetime.fromisoformat(ollama[0]["time"].replace("Z", "+00:00")).timestamp()
    assert ollama[1]["time"] == at(sent, 0, 0, 2) and ollama[1]["last"] < at(d0, 0, 21, 1)  # repeat_interval 2m
    assert at(d0, 0, 12, 0) < ollama[0]["starts_at"] < at(d0, 0, 13, 0)
    assert at(d0, 0, 20, 0) <= ollama[0]["time"] < at(d0, 0, 20, 0, 30)

    # Nothing pending from the start and the stabilisation long past: straight to min at the first
    # evaluation (for: 0s, group_wait 5s; the repeats find it there). The burst at 09:00 scales up (1 -> 4,
    # its max); drained again from 09:10, the scale-down waits for the exported stabilisation after the
    # 09:00:20 scale-up (10:00:20): the evaluation at 10:00:30, delivered at 10:00:35. No delivery is
    # answered "cooldown": the rule waited for the agent.
    indexer = rows(doc, "indexer")
    assert [(r["time"], r["alert"], r["result"], r["replicas_before"], r["replicas_after"]) for r in indexer] == [
        (at(d0, 0, 0, 0, 5), "OrchestratorBacklogLow", "executed", 3, 1),
        (at(d0, 0, 0, 0, 35), "OrchestratorBacklogLow", "ignored", 1, 1),
        (at(d0, 0, 9, 0, 20), "OrchestratorBacklogHigh", "executed", 1, 4),
        (at(d0, 0, 9, 0, 50), "OrchestratorBacklogHigh", "ignored", 4, 4),
        (at(d0, 0, 10, 0, 35), "OrchestratorBacklogLow", "executed", 4, 1),
        # Open loop: the recorded replicas stay at 3, so the alert fires on to the end of the history.
        (at(d0, 0, 10, 1, 5), "OrchestratorBacklogLow", "ignored", 1, 1),
    ], indexer
    assert indexer[-1]["last"] == at(d0, 1, 23, 59, 35)
    # A rule that reads its own past values cannot be recomputed from the files: the note names it.
    stored = doc["policies"][0]["notes"][0].rsplit(": ", 1)[-1].split(", ")
    assert "capability:orchestrator_todo_seconds_per_todo:ratio" in stored, doc["policies"][0]["notes"]

    assert {r["component"] for r in timeline} == {"web", "todo_worker", "ollama", "indexer"}
    summary = {(s["component"], s["action"]): s for s in doc["policies"][0]["summary"]}
    assert summary[("web", "restart")]["results"] == {"executed": 1, "cooldown": 3, "duplicate": 2}
    assert summary[("todo_worker", "scale_to")]["results"]["executed"] == 3
    assert summary[("todo_worker", "scale_to")]["replicas_end"] == 7
    # 1 replica until 14:00:20, 3 until 14:30:20, 5 until 14:30:50, then 7 to the end of day 2.
    hours = (14 * HOUR + 20 + 3 * 30 * MIN + 5 * 30 + 7 * (48 * HOUR - 14 * HOUR - 30 * MIN - 50)) / HOUR
    assert doc["policies"][0]["replica_hours"]["todo_worker"] == pytest.approx(hours, abs=0.01)


def test_compare_a_shorter_drain_target_scales_up_more(prometheus: tuple[str, float, Path]) -> None:
    url, d0, tmp = prometheus
    shorter = tmp / "shorter-rules"
    shutil.rmtree(shorter, ignore_errors=True)
    shutil.copytree(ROOT / "rules", shorter, ignore=shutil.ignore_patterns("tests"))
    backlog = shorter / "orchestrator-backlog.yml"
    text = backlog.read_text()
    threshold = 'orchestrator_component_max_replicas{job="orchestrator-agent"} + 60'
    assert threshold in text
    backlog.write_text(text.replace(threshold, threshold[:-2] + "30"))

    code, doc, err = backtest(url, d0, tmp, "--compare", str(shorter))
    assert code == 0, err
    totals = doc["compare"]["totals"]["scale_up"]
    assert totals == {"a": 4, "b": 5}  # indexer's 1 -> 4 in both
    # Drained within 30 s: 30 pending wants 6 (1->3->5->6), 70 wants 14, clamped to max 8 (6->8).
    assert decided([r for r in rows(doc, "todo_worker", 1) if r["result"] == "executed"]) == [
        (at(d0, 0, 14, 0, 20), "scale_to", "executed", 1, 3),
        (at(d0, 0, 14, 0, 50), "scale_to", "executed", 3, 5),
        (at(d0, 0, 14, 1, 20), "scale_to", "executed", 5, 6),
        (at(d0, 0, 14, 30, 20), "scale_to", "executed", 6, 8),
    ]
    (diff,) = [r for r in doc["compare"]["executed"] if r["component"] == "todo_worker"]
    assert diff == {"component": "todo_worker", "kind": "scale_up", "a": 3, "b": 4, "difference": 1}
    # The restarts do not depend on the backlog threshold: the same in both.
    assert rows(doc, "web", 0) == rows(doc, "web", 1)


def test_errors_name_the_problem_and_exit_with_the_documented_codes(prometheus: tuple[str, float, Path],
                                                                    tmp_path: Path) -> None:
    url, d0, tmp = prometheus
    code, doc, _ = backtest("http://127.0.0.1:9", d0, tmp)
    assert code == 3 and "cannot reach Prometheus" in doc["error"]
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: g\n    rules:\n      - alert: X\n        expr: up ==\n"
                   "        labels: {action: restart}\n")
    code, doc, _ = backtest(url, d0, tmp, "--rules", str(bad))
    assert code == 2 and "alert X" in doc["error"] and str(bad) in doc["error"]
    bad.write_text("groups: [")
    code, doc, _ = backtest(url, d0, tmp, "--rules", str(bad))
    assert code == 2 and "cannot read it" in doc["error"]
    done = subprocess.run([sys.executable, "-m", "agent", "backtest", "--prometheus", url, "--start", "yesterday"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "--start: not a time: 'yesterday'" in done.stderr
    # A relative time is a value, not an option, though it starts with "-".
    done = subprocess.run([sys.executable, "-m", "agent", "backtest", "--prometheus", url, "--start", "-1h30m",
                           "--end", "-2h"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "must be after --start" in done.stderr


def test_compare_an_agent_config_with_a_shorter_cooldown(prometheus: tuple[str, float, Path]) -> None:
    url, d0, tmp = prometheus
    shorter = json.loads(json.dumps(AGENT_CONFIG))
    shorter["components"]["web"]["remediation"]["cooldown"] = "30m"
    (tmp / "shorter.yml").write_text(yaml.safe_dump(shorter))
    code, doc, err = backtest(url, d0, tmp, "--compare", str(tmp / "shorter.yml"))
    assert code == 0, err
    assert doc["policies"][1]["config"] == [str(tmp / "shorter.yml")]
    # 40 minutes after the first restart, a 30m cooldown no longer holds the second one.
    assert [(r["time"], r["result"]) for r in rows(doc, "web", 1) if r["result"] != "duplicate"] == [
        (at(d0, 1, 10, 5, 5), "executed"), (at(d0, 1, 10, 45, 5), "executed")]
    assert doc["compare"]["totals"]["restart"] == {"a": 2, "b": 3}
    assert doc["compare"]["totals"]["scale_up"] == {"a": 4, "b": 4}


def test_a_component_missing_from_the_config_is_reported_apart_from_the_guardrails(
        prometheus: tuple[str, float, Path]) -> None:
    # docs/backtest.md's example read the embedded demo while the agent ran with its own files: a restart
    # the agent had executed came out as `web restart rejected unknown component`, a guardrail's words.
    url, d0, tmp = prometheus
    without_web = json.loads(json.dumps(AGENT_CONFIG))
    del without_web["components"]["web"]
    (tmp / "without-web.yml").write_text(yaml.safe_dump(without_web))
    start = datetime.fromtimestamp(d0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = datetime.fromtimestamp(d0 + 2 * 24 * HOUR, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    argv = [sys.executable, "-m", "agent", "backtest", "--prometheus", url, "--start", start, "--end", end,
            "-c", str(tmp / "without-web.yml")]
    done = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    policy = doc["policies"][0]
    web = rows(doc, "web")
    assert web and {r["result"] for r in web} == {"not_in_config"}, web
    assert web[0]["reason"] == "no component 'web' in the config read"
    summary = {(s["component"], s["action"]): s["results"] for s in policy["summary"]}
    assert summary[("web", "restart")] == {"not_in_config": 6}  # the 1 + 2 + 3 deliveries of the full config
    assert policy["not_in_config"] == {"components": {"web": 6}, "decisions": 6}
    assert not any(r["result"] == "rejected" for r in policy["timeline"])
    assert any("not in the config read (web): not refused by a guardrail" in n for n in policy["notes"])

    human = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert human.returncode == 0, human.stderr
    lines = [line for line in human.stdout.splitlines() if "OrchestratorComponentDown" in line]
    assert lines and all("not_in_config" in line and "rejected" not in line for line in lines), lines
    assert "unknown component" not in human.stdout
    assert "note: alerts for components not in the config read (web)" in human.stdout


def test_without_c_it_replays_with_the_files_the_running_agent_uses(prometheus: tuple[str, float, Path],
                                                                    tmp_path: Path) -> None:
    # The agent runs with two files (the user's config and a site layer that adds web); `agent backtest`
    # from an empty directory, without -c, asks it and replays with both.
    url, d0, _ = prometheus
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    base = json.loads(json.dumps(AGENT_CONFIG))
    web = base["components"].pop("web")
    for spec in base["components"].values():
        spec["command"] = sleeper
    base["agent"]["state_dir"] = "state"
    xdg = tmp_path / "xdg"
    (xdg / "agent").mkdir(parents=True)
    site = tmp_path / "site.yml"
    site.write_text(yaml.safe_dump({"components": {"web": {**web, "command": sleeper}}}))
    agent = AgentProcess(xdg / "agent", base, ("-c", str(site)))
    agent.config_path.rename(xdg / "agent" / "config.yaml")
    agent.config_path = xdg / "agent" / "config.yaml"
    agent.state_dir = xdg / "agent" / "state"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("AGENT_CONFIG", "AGENT_URL")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(xdg), AGENT_SYSTEM_CONFIG=str(tmp_path / "none.yaml"))
    start = datetime.fromtimestamp(d0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = datetime.fromtimestamp(d0 + 2 * 24 * HOUR, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    agent.start()
    try:
        done = subprocess.run([sys.executable, "-m", "agent", "backtest", "--prometheus", url, "--start", start,
                               "--end", end, "--json"], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    finally:
        agent.stop()
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"agent: config {agent.config_path} + {site} (the running agent's, at {agent.url}; "
                           "-c FILE or $AGENT_CONFIG to choose another)\n")
    doc = json.loads(done.stdout)
    assert doc["policies"][0]["config"] == [str(agent.config_path), str(site)]
    assert [(r["action"], r["result"]) for r in rows(doc, "web")] == [
        ("restart", "executed"), ("restart", "duplicate"), ("restart", "cooldown")]
