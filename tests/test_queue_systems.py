"""docs/todos.md "Queue systems" and examples/rules/queue-exporters.yml: every config snippet loads as the
agent loads a config, the plain job table's query counts through the sql reader, and the exporter mapping
passes promtool's check and its unit test, which runs it with the shipped scaling rules."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import yaml

from agent.config.loader import load_config
from agent.config.sources import BacklogSource
from agent.observe.queues import read_sql
from tests.helpers import ROOT
from tests.stackbin import require_binary

SECTION = "## Queue systems"
RULES = ROOT / "examples" / "rules" / "queue-exporters.yml"
RULE_TEST = ROOT / "examples" / "rules" / "tests" / "queue-exporters_test.yml"


def section() -> str:
    text = (ROOT / "docs" / "todos.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end < 0 else text[start:end]


def snippets() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", section(), re.DOTALL | re.MULTILINE)


def loaded(tmp: Path, snippet: str) -> list[BacklogSource]:
    path = tmp / "config.yaml"
    path.write_text(snippet)
    return load_config(path, env={}).backlog.sources


def test_the_table_names_every_queue_system_the_issue_lists() -> None:
    rows = [line.split("|")[1].strip() for line in section().splitlines() if line.startswith("| ")]
    for system in ("Celery on Redis", "RQ", "Sidekiq", "procrastinate", "pgqueuer", "A plain job table", "RabbitMQ"):
        assert any(row.startswith(system) for row in rows), f"no row for {system}: {rows}"


def test_every_config_snippet_loads_through_the_agents_config(tmp_path: Path) -> None:
    found: dict[str, BacklogSource] = {}
    for snippet in snippets():
        sources = loaded(tmp_path, snippet)
        assert sources, snippet
        found.update((s.label, s) for s in sources)
    assert sorted(found) == ["celery", "jobs", "pgqueuer", "procrastinate", "rq", "sidekiq"]
    assert [k.key for k in found["celery"].keys or []] == ["celery", "reports"]
    assert [(k.key, k.type) for k in found["sidekiq"].keys or []] == [("queue:default", "list"), ("retry", "zset")]
    assert found["pgqueuer"].status_map == {"queued": "pending", "picked": "in_progress", "failed": "failed"}
    assert found["procrastinate"].status_map == {"todo": "pending", "doing": "in_progress"}


def test_the_plain_job_tables_query_counts_through_the_sql_reader(tmp_path: Path) -> None:
    (jobs,) = [s for snippet in snippets() for s in loaded(tmp_path, snippet) if s.label == "jobs"]
    db = tmp_path / "jobs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT, prio INTEGER, created_at REAL)")
        rows = [("new", 1)] * 3 + [("new", 20)] * 2 + [("running", 1)] + [("done", 1)] * 5
        conn.executemany("INSERT INTO jobs (state, prio, created_at) VALUES (?, ?, 1767261600)", rows)
    counts = read_sql(jobs.model_copy(update={"path": db}))
    assert counts.by_key == {("pending", "normal", "any"): 3, ("pending", "high", "any"): 2,
                             ("in_progress", "normal", "any"): 1}
    assert counts.invalid == 0


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def test_the_mapping_writes_only_series_the_agent_does_not() -> None:
    """The three series the scaling rules read, never at priority normal (the agent's own zero per served
    capability) and never critical; every mapping names its agent and its source."""
    rules = [r for g in rule_groups() for r in g["rules"]]
    written = {r["record"]: r.get("labels", {}) for r in rules if not r["record"].startswith("source:")}
    assert set(written) == {"orchestrator_todo_source_backlog", "orchestrator_todo_backlog",
                            "orchestrator_todo_source_up"}
    assert written["orchestrator_todo_backlog"]["priority"] == written["orchestrator_todo_source_backlog"]["priority"]
    assert written["orchestrator_todo_backlog"]["priority"] not in ("normal", "critical")
    for rule in rules:
        if rule["record"].startswith("source:"):
            assert rule["labels"]["job"] == "orchestrator-agent" and rule["labels"]["instance"], rule
            assert rule["labels"]["source"], rule


def test_promtool_checks_the_mapping_and_runs_its_test_with_the_shipped_rules() -> None:
    promtool = require_binary("promtool")
    test = yaml.safe_load(RULE_TEST.read_text())
    shipped = {(RULE_TEST.parent / f).resolve() for f in test["rule_files"]}
    assert {ROOT / "rules" / "orchestrator-backlog.yml", ROOT / "rules" / "orchestrator-components.yml",
            RULES} <= shipped
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The unit test asserts component:orchestrator_component_desired_replicas:backlog and
    # OrchestratorBacklogHigh from an exporter's metric alone.
    text = RULE_TEST.read_text()
    assert "component:orchestrator_component_desired_replicas:backlog" in text and "OrchestratorBacklogHigh" in text
    done = subprocess.run([promtool, "test", "rules", str(RULE_TEST)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
