"""The benchmark suite end to end at a tiny size: every planned row present, every figure a number.

The peers, supervisord and circus, are dev dependencies: this test checks that the bench uses the
installed ones (nothing is installed during the run). It checks the shape of the output, not the figures.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--quick", "--n", "10", "--kills", "10", "--default-kills", "5", "--budget", "3", "--startup-reps", "1",
         "--idle-seconds", "2", "--components", "10", "--scrapes", "5", "--cycle-sizes", "10,20",
         "--webhook-requests", "300", "--burst-requests", "200", "--burst-alerts", "50", "--burst-max-entries", "50"]
SECTIONS = ("restart", "startup", "idle", "metrics", "cycle", "webhook", "burst")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_quick_bench_is_complete_and_well_formed(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", *SMALL, "--out-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, f"bench failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    files = list(tmp_path.glob("*-quick.json"))
    assert len(files) == 1, files
    doc = json.loads(files[0].read_text())

    assert doc["mode"] == "quick"
    for key in ("cpu", "cores", "kernel", "python", "supervisor", "circus"):
        assert doc["machine"][key], key
    # The dev extra's peers, not a copy installed by the run.
    assert "installing" not in done.stderr, done.stderr[-2000:]
    assert doc["machine"]["supervisor"] == importlib.metadata.version("supervisor")
    assert doc["machine"]["circus"] == importlib.metadata.version("circus")
    rows = {row["id"]: row for row in doc["rows"]}
    assert list(rows) == doc["planned_rows"]
    assert {row_id.split(".", 1)[0] for row_id in rows} == set(SECTIONS)
    for stat in ("p50", "p90", "p99", "max"):
        for mode in ("aggressive", "default"):
            assert f"restart.{mode}.n10.{stat}" in rows
    assert "startup.n10" in rows and "idle.cpu.on.n10" in rows and "metrics.c10.p99" in rows

    for row_id, row in rows.items():
        if row_id.startswith("webhook.") and row["status"] == "not available":
            continue  # allowed while the endpoint does not exist: the row says so instead of a figure
        assert row["status"] == "ok", row
        assert _number(row["agent"]), row
        peers = row_id.startswith(("restart.", "startup.", "idle."))
        for peer in ("supervisord", "circus"):
            assert _number(row[peer]) if peers else row[peer] is None, row
        if row["target"]:
            assert isinstance(row["met"], bool), row
    assert (tmp_path / files[0].with_suffix(".md").name).exists()
    assert "crash-to-restart p99" in done.stdout


@pytest.mark.timeout(120)
def test_tls_bench_measures_the_agent_in_every_mode() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.tls", "--components", "3", "--requests", "5",
                           "--connections", "3"], cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| agent")]
    assert [cells[1].strip() for cells in rows] == ["plain", "tls", "tls+basic"], done.stdout
    for cells in rows:
        figures = [float(part) for cell in cells[2:] for part in cell.replace("KB", "").replace("ms", "").split("/")]
        # Body and latencies are positive; the CPU figure counts in 10 ms ticks, so 5 requests may show 0.
        assert all(f > 0 for f in figures[:-1]) and figures[-1] >= 0, cells


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_lean_bench_reports_both_agents_and_supervisord(tmp_path: Path) -> None:
    # --before names this same checkout: the path that runs another checkout's agent is exercised too.
    done = subprocess.run([sys.executable, "-m", "bench.lean", "--components", "5", "--scrapes", "3",
                           "--before", str(ROOT), "--out-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, f"bench.lean failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    doc = json.loads(next(tmp_path.glob("*-lean.json")).read_text())
    assert [(a["variant"], a["components"]) for a in doc["agents"]] == [("before", 5), ("after", 5)]
    for agent in doc["agents"]:
        assert agent["series"] > 0 and 0 < agent["series_per_component"] < agent["series"]
        assert agent["rss_idle"] > 0 and agent["rss_after"] >= agent["rss_idle"] * 0.9
        plain, gz = agent["scrapes"]
        assert (plain["encoding"], gz["encoding"]) == ("identity", "gzip")
        assert all(_number(s["latency_ms"][k]) for s in (plain, gz) for k in ("p50", "p99"))
        assert plain["wire_bytes"] == agent["body_bytes"]
    assert doc["supervisord_rss"]["5"] > 0
    assert "| 5 | before |" in done.stdout and "| 5 | after |" in done.stdout


def test_memory_bench_reports_imports_the_required_stack_and_both_supervisors(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, "-m", "bench.memory", "--components", "3", "--scrapes", "2",
                           "--settle", "0.5", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, f"bench.memory failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    doc = json.loads(out.read_text())
    costs = {c["label"]: c for c in doc["imports"]}
    assert doc["bare"] > 0
    stack, daemon = costs["the required stack, no agent code"], costs["agent.cli.main + agent.daemon.app (`agent run`)"]
    assert 0 < stack["rss"] < daemon["rss"], (stack, daemon)  # the agent's own code comes on top
    assert costs["httpx"]["over_daemon"] is not None and costs["uvloop"]["over_daemon"] is None
    rows = {r["kind"]: r for r in doc["resident"]}
    assert set(rows) == {"agent", "supervisord"} and all(r["n"] == 3 for r in rows.values())
    agent = rows["agent"]
    assert agent["idle"] > doc["bare"] + stack["rss"] and agent["scraped"] > 0 and agent["peak"] >= agent["idle"]
    assert agent["threads"] >= 1 and agent["scrape_ms"] > 0
    assert rows["supervisord"]["idle"] > 0 and rows["supervisord"]["scraped"] is None
    assert "the required stack, no agent code" in done.stdout and "supervisord" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scale_bench_runs_a_surge_on_the_real_stack_and_reports_every_measure(tmp_path: Path) -> None:
    from bench.scale import ROWS
    from tests.stackbin import require_binary

    require_binary("prometheus")
    require_binary("prometheus-alertmanager", "alertmanager")
    out = tmp_path / "scale.json"
    # --quiet 10: the idle state before t=0 held for 10 s, not the four evaluations (60 s) a measure needs.
    done = subprocess.run([sys.executable, "-m", "bench.scale", "--only", "surge-new", "--horizon", "1",
                           "--quiet", "10", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=580)
    assert done.returncode == 0, f"bench.scale failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    lines = done.stdout.splitlines()
    (head,) = [line for line in lines if line.startswith("measure ")]
    assert head.split() == ["measure", "surge-new"]
    for label, _ in ROWS:
        assert any(line.startswith(label + " ") for line in lines), (label, done.stdout)
    doc = json.loads(out.read_text())
    (scenario,) = doc["scenarios"]
    assert scenario["status"] == "ok" and scenario["rules"] == "new", scenario.get("error", scenario["status"])
    # Every todo of the surge reached the store and has a wait (claimed, or waiting at the horizon).
    assert scenario["arrivals"] == scenario["wait"]["todos"] == 600
    assert _number(scenario["wait"]["p50"]) and scenario["wait"]["p95"] >= scenario["wait"]["p50"]
    assert scenario["need_at"] is not None and scenario["need_at"] < 5  # 600 todos are 300 s of work for one
    assert _number(scenario["replica_minutes"]) and scenario["timeline"][0][0] < 5
    assert scenario["at_t0"]["desired"] is not None
