"""agent/stack (and scripts/gen_stack.py, its wrapper for the repository's copy): rules, their tests'
expectations and dashboards come from one source, with a configurable selector and runbook URL; the
committed files are its output; every panel link resolves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from agent.stack import dashboards as gen_dashboards
from agent.stack import render
from agent.stack.settings import DEFAULT_RUNBOOK_URL_PATTERN, Settings
from agent.stack.source import SOURCE, alerts, render_rules, render_tests
from scripts import gen_stack
from tests.stack_links import link_problems, panel_links, runbook_anchors
from tests.stackbin import require_binary

ROOT = Path(__file__).resolve().parent.parent
# A raw series of the agent (not a recording rule: those have colons), optionally with its matchers.
RAW = re.compile(r'(?<![:\w"])(orchestrator_[a-z0-9_]+|up)(?![:\w(])(\{[^}]*\})?')


def exprs(rules: dict[str, str]) -> list[tuple[str, str]]:
    out = []
    for text in rules.values():
        for group in yaml.safe_load(text)["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


def promtool_check(tmp: Path, rules: dict[str, str]) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    for name, text in rules.items():
        (tmp / name).write_text(text)
    result = subprocess.run([require_binary("promtool"), "check", "rules", *sorted(map(str, tmp.glob("*.yml")))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_files_are_the_generators_output() -> None:
    assert gen_stack.main(["--check"]) == 0, "edit agent/stack/, then run python scripts/gen_stack.py"
    rendered = render()
    templates = {f"rules/{p.name}" for p in SOURCE.iterdir() if p.name.endswith(".yml")}
    assert templates == {k for k in rendered if k.startswith("rules/") and k.count("/") == 1}
    for rel, text in rendered.items():
        if not rel.endswith((".json", ".md")):  # JSON has no comments; the runbook is copied as written
            # Where it comes from and how an operator changes it (export again), not "edit the template".
            first = "# Written by `agent stack export` (orchestrator-agent) from its template"
            assert text.startswith(f"{first} {rel}:"), rel
            assert f"edit agent/stack/templates/{rel}, run scripts/gen_stack.py" in text.split("\n", 2)[1], rel


def test_check_reports_a_hand_edited_or_stray_file(tmp_path: Path, capsys: Any) -> None:
    assert gen_stack.main(["--out", str(tmp_path)]) == 0
    assert gen_stack.main(["--check", "--out", str(tmp_path)]) == 0
    edited = tmp_path / "rules" / "orchestrator-host.yml"
    edited.write_text(edited.read_text().replace("for: 5m", "for: 6m", 1))
    (tmp_path / "grafana" / "dashboards" / "hand-made.json").write_text("{}")
    capsys.readouterr()
    assert gen_stack.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "rules/orchestrator-host.yml" in err and "grafana/dashboards/hand-made.json (not generated" in err
    assert "rules/orchestrator-agent.yml" not in err


def test_every_raw_series_the_rules_read_carries_the_selector() -> None:
    found = 0
    for name, expr in exprs(render_rules()):
        for metric, matchers in RAW.findall(expr):
            found += 1
            assert matchers.startswith('{job="orchestrator-agent"'), f"{name}: {metric}{matchers}"
    assert found > 50
    # The one alert that used to hard-code it: both of its selectors come from the setting now.
    down = alerts(render_rules(Settings(selector='job="agents"')))["OrchestratorAgentDown"]["expr"]
    assert down.split() == ['up{job="agents"}', "==", "0", "or", 'absent(up{job="agents"})']


def test_prometheus_and_alertmanager_series_carry_their_own_selectors(tmp_path: Path) -> None:
    """The pipeline rules read Prometheus' and Alertmanager's own series under `job="prometheus"` and
    `job="alertmanager"` (the scrape jobs of prometheus/prometheus.yml), each from its own setting."""
    upstream = re.compile(r'(?<![:\w"])((prometheus|alertmanager)_[a-z0-9_]+)(?![:\w(])(\{[^}]*\})?')
    found = 0
    for name, expr in exprs(render_rules()):
        for metric, kind, matchers in upstream.findall(expr):
            found += 1
            assert matchers.startswith(f'{{job="{kind}"'), f"{name}: {metric}{matchers}"
    assert found >= 7
    prom = load_yaml_jobs()
    assert {"prometheus", "alertmanager"} <= prom
    other = render_rules(Settings(prometheus_selector='job="prom",env="prod"', alertmanager_selector='job="am"'))
    text = "".join(e for _, e in exprs(other))
    assert 'prometheus_rule_evaluation_failures_total{job="prom",env="prod"}' in text
    assert 'alertmanager_notifications_failed_total{job="am"}' in text
    assert 'job="prometheus"' not in text and 'job="alertmanager"' not in text
    promtool_check(tmp_path / "other", other)
    assert gen_stack.main(["--check", "--alertmanager-selector", 'job="am"']) == 1
    assert gen_stack.main(["--check", "--prometheus-selector", 'job="prometheus"']) == 0


def load_yaml_jobs() -> set[str]:
    """The scrape jobs of the shipped prometheus/prometheus.yml."""
    doc = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    return {job["job_name"] for job in doc["scrape_configs"]}


def test_another_selector_or_none_gives_valid_rules(tmp_path: Path) -> None:
    other = render_rules(Settings(selector='job=~"agents|edge",env="prod"'))
    assert "orchestrator-agent" not in "".join(e for _, e in exprs(other))
    assert all(m.startswith('{job=~"agents|edge",env="prod"') for _, e in exprs(other) for _, m in RAW.findall(e))
    promtool_check(tmp_path / "other", other)
    bare = render_rules(Settings(selector="", prometheus_selector="", alertmanager_selector=""))
    assert "{}" not in "".join(e for _, e in exprs(bare)) and "{," not in "".join(e for _, e in exprs(bare))
    promtool_check(tmp_path / "bare", bare)


def test_every_runbook_url_is_absolute_and_its_section_exists() -> None:
    anchors = runbook_anchors()
    rules = alerts(render_rules())
    assert len(rules) >= 20
    for name, rule in rules.items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"https://github.com/orchestrator-agent/orchestrator-agent/blob/main/docs/runbook.md#{name.lower()}"
        assert url.split("#", 1)[1] in anchors, f"docs/runbook.md has no section for {name}"
    custom = alerts(render_rules(Settings(runbook_url_pattern="https://wiki.example.com/ops/orchestrator#%s")))
    assert custom["OrchestratorAgentDown"]["annotations"]["runbook_url"] == (
        "https://wiki.example.com/ops/orchestrator#orchestratoragentdown")
    assert gen_stack.main(["--check", "--runbook-url-pattern", "https://wiki.example.com/ops#%s"]) == 1


def test_test_expectations_take_labels_and_fixed_annotations_from_the_rules() -> None:
    rules = render_rules(Settings(runbook_url_pattern="https://runbooks.test/%s"))
    by_name = alerts(rules)
    checked = 0
    for name, text in render_tests(rules).items():
        for case in yaml.safe_load(text)["tests"]:
            for check in case.get("alert_rule_test", []):
                rule = by_name[check["alertname"]]
                for expected in check.get("exp_alerts", []):
                    checked += 1
                    assert rule.get("labels", {}).items() <= expected["exp_labels"].items(), name
                    ann = expected["exp_annotations"]
                    assert ann["summary"] == rule["annotations"]["summary"], name
                    assert ann["runbook_url"] == f"https://runbooks.test/{check['alertname'].lower()}", name
    assert checked >= 30
    # ... and the templates do not repeat them, so a summary or severity is changed in one place.
    for src in (SOURCE / "tests").iterdir():
        assert not re.search(r"^\s+(summary|runbook_url|severity):", src.read_text(), re.MULTILINE), src.name


def test_fast_clock_keeps_the_selector_and_checks_its_thresholds(tmp_path: Path) -> None:
    fast = render_rules(Settings(fast=True, selector='job="e2e"',
                                 thresholds={"orchestrator:backlog_drain_target_seconds": 7}))
    text = "".join(fast.values())
    assert not re.search(r"for: \d+m\b", text) and not re.search(r"\[\d+m\]", text)
    assert 'orchestrator_component_max_replicas{job="e2e"} + 7' in text
    promtool_check(tmp_path, fast)


def test_dashboards_select_by_job_node_and_instance() -> None:
    for name, text in gen_dashboards.render().items():
        doc = yaml.safe_load(text)
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        assert list(variables)[:4] == ["datasource", "job", "node", "instance"], name
        assert variables["job"]["definition"] == 'label_values(orchestrator_build_info{job="orchestrator-agent"}, job)'
        assert variables["node"]["multi"] and variables["node"]["includeAll"] and variables["node"]["allValue"] == ".*"
        for panel in doc["panels"]:
            for target in panel.get("targets", []):
                for metric, matchers in RAW.findall(target["expr"]):
                    assert matchers.startswith('{job=~"$job",node=~"$node",instance=~"$instance"'), (
                        f"{name} {panel['title']}: {metric}{matchers}")
    other = gen_dashboards.render(Settings(selector='job="agents"'))["orchestrator-host.json"]
    assert 'orchestrator_build_info{job=\\"agents\\"}' in other


def test_threshold_panels_link_their_runbook_and_the_overview_drills_down() -> None:
    docs = {name: yaml.safe_load(text) for name, text in gen_dashboards.render().items()}
    titles = {p["title"] for d in docs.values() for p in d["panels"]}
    assert set(gen_dashboards.RUNBOOK_PANELS) <= titles
    overview = {p["title"]: p for p in docs["orchestrator-overview.json"]["panels"]}
    for title in gen_dashboards.DRILL_DOWN:
        (link,) = overview[title]["fieldConfig"]["defaults"]["links"]
        assert link["url"].startswith("/d/orchestrator-component/?var-component=${__"), title
        # A table's link reads the row's cells: none of them may be hidden.
        hidden = {k for t in overview[title].get("transformations", []) for k in t["options"].get("excludeByName", {})}
        assert not hidden & set(re.findall(r"\$\{__data\.fields\.(\w+)\}", link["url"])), title
    # Every panel drawing a threshold series names the alert it belongs to.
    for name, doc in docs.items():
        for panel in doc["panels"]:
            overrides = panel.get("fieldConfig", {}).get("overrides", [])
            if overrides and "Replicas" not in panel["title"]:
                assert any("Runbook" in link["title"] for link in panel.get("links", [])), f"{name}: {panel['title']}"


def test_every_panel_link_target_resolves() -> None:
    links = panel_links(ROOT / "grafana" / "dashboards")
    assert len(links) >= 20
    assert link_problems(links) == []
    broken = [*links, ("x.json: p", "/d/no-such-uid/?var-component=${__field.labels.component}"),
              ("x.json: p", "/d/orchestrator-component/?var-nope=1"),
              ("x.json: p", DEFAULT_RUNBOOK_URL_PATTERN % "orchestratornosuchalert")]
    assert len(link_problems(broken)) == 3
