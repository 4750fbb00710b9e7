"""`agent backtest`'s defaults come from the installed package, not from a checkout around it: the shipped rules
and Alertmanager config, and the evaluation interval of a group without `interval:` (the group's own first,
then --evaluation-interval, then the shipped prometheus.yml's 15 s; it was a silent 60 s wherever the
package had no prometheus/ directory two levels up, i.e. in every installed wheel)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT, end_processes
from tests.stackbin import rules_prometheus

pytestmark = [pytest.mark.stack]

# Two groups of always-firing alerts that act: one without an interval, one evaluated every 40 s.
RULES = {"groups": [
    {"name": "default-interval", "rules": [
        {"alert": "EveryDefault", "expr": "vector(1)", "labels": {"action": "restart", "component": "web"}}]},
    {"name": "own-interval", "interval": "40s", "rules": [
        {"alert": "EveryForty", "expr": "vector(1)", "labels": {"action": "restart", "component": "db"}}]},
]}
AGENT_CONFIG = {"components": {"web": {"command": ["sleep", "1000"]}, "db": {"command": ["sleep", "1000"]}}}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus with no data: `vector(1)` is all the rules read."""
    proc, url = rules_prometheus(tmp_path_factory.mktemp("prom"), {"groups": []})
    try:
        yield url
    finally:
        end_processes([proc])


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The agent package alone (no rules/ or prometheus/ of a checkout two levels up, as in a wheel's
    site-packages), imported first, and a working directory with a rule file, an agent config and an
    Alertmanager config (a copy of the shipped one)."""
    base = tmp_path_factory.mktemp("outside")
    shutil.copytree(ROOT / "agent", base / "site" / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    work = base / "work"
    work.mkdir()
    (work / "rules.yml").write_text(yaml.safe_dump(RULES))
    (work / "agent.yml").write_text(yaml.safe_dump(AGENT_CONFIG))
    shutil.copy(ROOT / "prometheus" / "alertmanager.yml", work / "alertmanager.yml")
    env = {k: v for k, v in os.environ.items() if k not in ("AGENT_CONFIG", "PYTHONPATH")}
    env["PYTHONPATH"] = str(base / "site")
    return work, env


def agent(work: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    code = ("import sys, agent; from agent.cli.main import main; print(agent.__file__, file=sys.stderr); "
            "sys.exit(main())")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=work,
                          env=env)
    assert done.stderr.startswith(str(work.parent / "site" / "agent")), f"not the copy that ran: {done.stderr}"
    return done


def window() -> tuple[float, float]:
    """Ten minutes from 5 s past the last full hour but one: each interval's grid gives another first evaluation."""
    start = (math.floor(time.time() / 3600) - 1) * 3600 + 5
    return start, start + 600


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def replay(work: Path, env: dict[str, str], url: str, *extra: str) -> dict[str, Any]:
    start, end = window()
    done = agent(work, env, "backtest", "--prometheus", url, "--start", iso(start), "--end", iso(end),
                 "-c", "agent.yml", "--json", *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def first_fired(doc: dict[str, Any], alert: str) -> str:
    """When the alert first fired (its startsAt): its group's first evaluation in the window."""
    rows = [r for r in doc["policies"][0]["timeline"] if r["alert"] == alert]
    assert rows, f"no decision on {alert}: {doc['policies'][0]['notes']}"
    return str(rows[0]["starts_at"])


def test_a_group_without_interval_evaluates_at_the_shipped_15s_outside_a_checkout(
        prometheus: str, outside: tuple[Path, dict[str, str]]) -> None:
    work, env = outside
    start, _ = window()
    # The rules and Alertmanager config given, the interval not: the case that evaluated every 60 s.
    doc = replay(work, env, prometheus, "--rules", "rules.yml", "--alertmanager-config", "alertmanager.yml")
    assert doc["window"]["evaluation_interval"] == 15.0, "the shipped prometheus.yml's, not 60 s"
    assert first_fired(doc, "EveryDefault") == iso(start + 10)  # hh:00:15, the first 15 s step after hh:00:05
    assert first_fired(doc, "EveryForty") == iso(start + 35)  # hh:00:40: the group's own interval


def test_evaluation_interval_applies_to_groups_without_their_own(
        prometheus: str, outside: tuple[Path, dict[str, str]]) -> None:
    work, env = outside
    start, _ = window()
    doc = replay(work, env, prometheus, "--rules", "rules.yml", "--alertmanager-config", "alertmanager.yml",
                 "--evaluation-interval", "20s")
    assert doc["window"]["evaluation_interval"] == 20.0
    assert first_fired(doc, "EveryDefault") == iso(start + 15)  # hh:00:20
    assert first_fired(doc, "EveryForty") == iso(start + 35)  # the group's 40 s still wins


def test_without_rules_it_replays_the_shipped_rules_and_alertmanager_config(
        prometheus: str, outside: tuple[Path, dict[str, str]]) -> None:
    from agent.stack import rule_names

    work, env = outside
    doc = replay(work, env, prometheus)
    policy = doc["policies"][0]
    assert [r.split(" ", 1)[0] for r in policy["rules"]] == [f"rules/{n}" for n in rule_names()]
    assert all("shipped with the agent" in r for r in policy["rules"]), policy["rules"]
    assert policy["alertmanager_config"].startswith("prometheus/alertmanager.yml (shipped with the agent")
    assert len(rule_names()) == 6


def test_help_names_the_shipped_rules_and_where_they_come_from(outside: tuple[Path, dict[str, str]]) -> None:
    from agent.backtest.run import shipped_evaluation_interval
    from agent.stack import rule_names

    work, env = outside
    done = agent(work, env, "backtest", "--help")
    assert done.returncode == 0, done.stderr
    # One line, the words argparse wrapped at a hyphen joined again.
    text = re.sub(r"(?<=\w-) (?=\w)", "", " ".join(done.stdout.split()))
    assert f"the rules this package ships ({', '.join(rule_names())};" in text, text
    assert "the prometheus/alertmanager.yml this package ships" in text
    # The help's 15s is the shipped prometheus.yml's, the default that is used.
    shipped = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]["evaluation_interval"]
    assert shipped == "15s" and shipped_evaluation_interval() == 15.0
    assert "evaluation_interval of the prometheus.yml this package ships (15s)" in text
