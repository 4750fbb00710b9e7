"""The series budget per component (issue 20, "Lean at 1,000 components"), counted on a running agent's
/metrics against the table in docs/metrics.md ("Series per component")."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.helpers import ROOT, running_agent, wait_for
from tests.metricsutil import Sample, scrape, value

DOC = ROOT / "docs" / "metrics.md"
_ROW = re.compile(r"^\| (base|\+ per capability|\+ per probe|\+ when limits set) \| (\d+)\b", re.MULTILINE)


def budget() -> dict[str, int]:
    """The documented numbers: base, per capability, per probe (plus one per replica), with limits."""
    section = DOC.read_text(encoding="utf-8").split("### Series per component", 1)[1]
    found = {key: int(n) for key, n in _ROW.findall(section)}
    assert set(found) == {"base", "+ per capability", "+ per probe", "+ when limits set"}, found
    return found


def of_component(samples: dict[Sample, float], component: str) -> dict[Sample, float]:
    """The series that carry the component's label."""
    return {key: v for key, v in samples.items() if ("component", component) in key[1]}


def names(samples: dict[Sample, float]) -> list[str]:
    return sorted(name + "".join(f"{{{k}={v}}}" for k, v in sorted(labels) if k not in ("component",))
                  for name, labels in samples)


def test_budget_is_documented_as_decided() -> None:
    b = budget()
    # A single-replica component without probe, with one capability: at most 12 (issue 20).
    assert b["base"] + b["+ per capability"] <= 12
    assert b == {"base": 11, "+ per capability": 1, "+ per probe": 10, "+ when limits set": 2}


def test_a_component_without_probe_costs_the_base_and_its_capability(tmp_path: Path) -> None:
    cfg = {"agent": {"resources": {"interval": 0.1}},
           "components": {"lean": {"command": ["sleep", "1000"], "capabilities": ["todo_processing"]},
                          "limited": {"command": ["sleep", "1000"], "limits": {"memory_bytes": 500_000_000}}}}
    b = budget()
    with running_agent(tmp_path, cfg) as agent:
        # Steady state: running, and a resource sample has covered it.
        s = wait_for(lambda: (m := scrape(agent.url))
                     and value(m, "orchestrator_component_state", component="lean", state="running") == 1
                     and (value(m, "orchestrator_component_resident_memory_bytes", component="lean") or 0) > 0
                     and (value(m, "orchestrator_component_resident_memory_bytes", component="limited") or 0) > 0
                     and m, 15, 0.05, "lean and limited running and sampled")
        lean = of_component(s, "lean")
        assert names(lean) == sorted([
            "orchestrator_component_info{essential=false}{kind=process}",
            "orchestrator_component_capability{capability=todo_processing}",
            "orchestrator_component_state{state=running}",
            "orchestrator_component_up", "orchestrator_component_replicas",
            "orchestrator_component_desired_replicas", "orchestrator_component_min_replicas",
            "orchestrator_component_max_replicas", "orchestrator_component_restarts_total{reason=exit}",
            "orchestrator_component_cpu_seconds_total", "orchestrator_component_resident_memory_bytes",
            "orchestrator_component_open_fds"])
        assert len(lean) == b["base"] + b["+ per capability"] == 12
        limited = of_component(s, "limited")
        assert len(limited) == b["base"] + b["+ when limits set"]
        assert value(s, "orchestrator_component_restarts_total", component="limited", reason="resource") == 0
        assert value(s, "orchestrator_component_memory_limit_bytes", component="limited") == 500_000_000

        # Stopped by hand: manual_stop appears at 1 (and the state is the one current state) ...
        agent.api("POST", "/api/v1/components/lean/stop")
        s = wait_for(lambda: (m := scrape(agent.url))
                     and value(m, "orchestrator_component_state", component="lean", state="stopped") == 1 and m,
                     15, 0.05, "lean stopped")
        assert value(s, "orchestrator_component_manual_stop", component="lean") == 1
        assert [k for k in of_component(s, "lean") if k[0] == "orchestrator_component_state"] == [
            ("orchestrator_component_state", frozenset({("component", "lean"), ("state", "stopped")}))]
        # ... and goes with `agent start`; the stopped replica left its exit code, the only series added.
        agent.api("POST", "/api/v1/components/lean/start")
        s = wait_for(lambda: (m := scrape(agent.url))
                     and value(m, "orchestrator_component_state", component="lean", state="running") == 1 and m,
                     15, 0.05, "lean running again")
        assert value(s, "orchestrator_component_manual_stop", component="lean") is None
        assert value(s, "orchestrator_component_last_exit_code", component="lean") is not None
        assert len(of_component(s, "lean")) == 12 + 1
        # A restart reason that is not pre-created appears at its first restart, at 1.
        assert value(s, "orchestrator_component_restarts_total", component="lean", reason="manual") is None
        agent.api("POST", "/api/v1/components/lean/restart")
        s = wait_for(lambda: (m := scrape(agent.url))
                     and value(m, "orchestrator_component_restarts_total", component="lean", reason="manual") == 1
                     and m, 15, 0.05, "the manual restart counted")
        assert len(of_component(s, "lean")) == 12 + 2
        assert value(s, "orchestrator_remediation_actions_total", component="lean", action="restart",
                     result="executed") is None  # a control command, not a webhook decision


def test_a_probed_component_adds_the_probe_and_one_series_per_replica(tmp_path: Path) -> None:
    probe = {"exec": {"command": [sys.executable, "-c", "pass"]}, "interval": 0.2, "startup_grace": 0}
    cfg = {"components": {"probed": {"command": ["sleep", "1000"], "replicas": {"min": 2, "max": 2},
                                     "probe": probe}}}
    b = budget()
    with running_agent(tmp_path, cfg) as agent:
        s = wait_for(lambda: (m := scrape(agent.url))
                     and all(value(m, "orchestrator_component_probe_success", component="probed", replica=r) == 1
                             for r in ("0", "1"))
                     and (value(m, "orchestrator_probe_duration_seconds_count", component="probed",
                                probe="exec") or 0) >= 2
                     and m, 20, 0.05, "both replicas passing their probe")
        probed = of_component(s, "probed")
        assert len(probed) == b["base"] + b["+ per probe"] + 2 == 23, names(probed)
        assert value(s, "orchestrator_component_probe_error", component="probed", reason="none") == 1
        assert [k for k in probed if k[0] == "orchestrator_component_probe_error"] == [
            ("orchestrator_component_probe_error", frozenset({("component", "probed"), ("reason", "none")}))]
        assert value(s, "orchestrator_component_restarts_total", component="probed", reason="probe") == 0
        buckets = [dict(k[1])["le"] for k in probed if k[0] == "orchestrator_probe_duration_seconds_bucket"]
        assert buckets == ["0.005", "0.025", "0.1", "0.5", "2.5", "+Inf"]
