"""The claim bench (bench/claims.py) end to end at its smallest: the agent's store and pgqueuer, each with its
own workers on one private PostgreSQL, every row with figures, every job completed exactly once.

It checks the shape and the counts of the output, not the figures (those are docs/benchmarks.md's).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pgserver import pg_bin

ROOT = Path(__file__).resolve().parent.parent
JOBS, TIMED = 1000, 10  # fewer jobs go too fast for pgqueuer's rate to be timed at the bench's 20 ms polls
SMALL = ["--quick", "--workers", "2", "--jobs", str(JOBS), "--latency-jobs", str(TIMED), "--rate", "50",
         "--agent-polls", "0.05"]


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_smallest_claim_bench_counts_every_job_once(tmp_path: Path) -> None:
    pg_bin("initdb"), pg_bin("postgres")  # missing: skip with what to install, or fail under CI=true
    done = subprocess.run([sys.executable, "-m", "bench.claims", *SMALL, "--out-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=160)
    assert done.returncode == 0, f"bench failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    files = list(tmp_path.glob("*-claims-quick.json"))
    assert len(files) == 1, files
    assert files[0].with_suffix(".md").exists()
    doc = json.loads(files[0].read_text())

    for key in ("cpu", "cores", "kernel", "python", "agent_revision", "postgresql", "pgqueuer"):
        assert doc["machine"][key], key
    assert doc["command"].startswith("python -m bench.claims --quick")
    keys = [s["key"] for s in doc["systems"]]
    assert keys == ["agent50ms", "pgqueuer"]

    # One round per system and worker count, each with every job completed once by both counts.
    rounds = {(r["system"], r["n"]): r for r in doc["rounds"]}
    assert set(rounds) == {(k, 2) for k in keys}
    for (system, n), r in rounds.items():
        assert r["error"] == "" and r["problems"] == [], (system, n, r["error"], r["problems"])
        assert r["counts"] == {"added": JOBS + TIMED, "completed_by_workers": JOBS + TIMED,
                               "distinct": JOBS + TIMED, "completed_in_db": JOBS + TIMED}, (system, n)
        assert r["latency_ms"]["count"] == TIMED, (system, n)

    # Every planned row of the one table has a figure in every column.
    measures = {row["id"].split(".")[0] for row in doc["rows"]}
    assert {"throughput", "throughput_all", "p50", "p95", "p99", "server_throughput"} <= measures
    assert len(doc["rows"]) == len(measures)
    for row in doc["rows"]:
        assert set(row["values"]) == set(keys), row
        for key, value in row["values"].items():
            assert isinstance(value, int | float) and math.isfinite(value) and value >= 0, (row["id"], key, value)
    assert "pgqueuer" in done.stdout and "add->claim p50" in done.stdout  # the table was printed
