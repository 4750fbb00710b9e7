"""The static monitoring stack: rules, their promtool tests, Prometheus/Alertmanager configs, dashboards,
docker-compose.yml and the runbook, checked with the real tools and against the metric contract."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from agent.cli.stack_nodes import NODE_ORDER
from agent.config.loader import load_config
from agent.stack.settings import DEFAULT_RUNBOOK_URL_PATTERN
from tests.helpers import end_processes, free_port, wait_for
from tests.stackbin import require_binary, spawn_alertmanager, spawn_prometheus

ROOT = Path(__file__).resolve().parent.parent
RULES = sorted((ROOT / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "rules" / "tests").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RUNBOOK = ROOT / "docs" / "runbook.md"
COMPOSE = ROOT / "docker-compose.yml"
# The Compose Specification schema, vendored from the check-jsonschema 0.39.0 wheel on PyPI
# (check_jsonschema/builtin_schemas/vendor/compose-spec.json, upstream github.com/compose-spec/compose-spec,
# Apache-2.0: tests/data/LICENSE.compose-spec).
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"

# The metric contract: what the agent exports and all that rules and dashboards may use.
# It must match docs/metrics.md (and agent/export/collectors.py and events.py).
CONTRACT_METRICS = frozenset({
    # components
    "orchestrator_component_info",
    "orchestrator_component_capability",
    "orchestrator_component_state",
    "orchestrator_component_up",
    "orchestrator_component_replicas",
    "orchestrator_component_desired_replicas",
    "orchestrator_component_min_replicas",
    "orchestrator_component_max_replicas",
    "orchestrator_component_restarts_total",
    "orchestrator_component_probe_success",
    "orchestrator_probe_duration_seconds",
    "orchestrator_component_cpu_seconds_total",
    "orchestrator_component_resident_memory_bytes",
    "orchestrator_component_open_fds",
    "orchestrator_component_memory_limit_bytes",
    "orchestrator_component_last_exit_code",
    "orchestrator_component_probe_error",
    "orchestrator_component_manual_stop",
    # host
    "orchestrator_host_cpu_usage_ratio",
    "orchestrator_host_memory_available_bytes",
    "orchestrator_host_memory_total_bytes",
    "orchestrator_host_disk_free_bytes",
    "orchestrator_host_disk_total_bytes",
    "orchestrator_host_load1",
    "orchestrator_host_load5",
    "orchestrator_host_load15",
    # backlog
    "orchestrator_todo_backlog",
    "orchestrator_todo_oldest_pending_age_seconds",
    "orchestrator_todo_source_up",
    "orchestrator_todo_source_last_success_timestamp_seconds",
    "orchestrator_todo_source_read_duration_seconds",
    "orchestrator_todo_source_backlog",
    "orchestrator_todo_leases_expired_total",
    "orchestrator_todo_completions_rejected_total",
    "orchestrator_todo_source_created_total",
    "orchestrator_todo_source_completed_total",
    "orchestrator_todo_source_work_seconds_total",
    # remediation and the agent
    "orchestrator_webhook_requests_total",
    "orchestrator_remediation_actions_total",
    "orchestrator_remediation_duration_seconds",
    "orchestrator_component_scale_down_not_before_timestamp_seconds",
    "orchestrator_autonomy_mode",
    "orchestrator_emergency_stop",
    "orchestrator_build_info",
    "orchestrator_agent_start_time_seconds",
    # config reloads and rolling restarts
    "orchestrator_config_last_reload_successful",
    "orchestrator_insecure_listener",
    "orchestrator_config_last_reload_success_timestamp_seconds",
    "orchestrator_config_hash",
    "orchestrator_rollout_halted_total",
    # the alert pipeline's heartbeat (agent.webhook.heartbeat_timeout)
    "orchestrator_alert_pipeline_up",
    "orchestrator_alert_pipeline_last_heartbeat_timestamp_seconds",
    "orchestrator_alert_pipeline_heartbeats_total",
})
# Prometheus' and Alertmanager's own series the pipeline rules read (rules/orchestrator-pipeline.yml),
# checked against the real binaries' /metrics below.
UPSTREAM_METRICS = frozenset({
    "prometheus_notifications_errors_total",
    "prometheus_notifications_sent_total",
    "prometheus_notifications_dropped_total",
    "prometheus_notifications_alertmanagers_discovered",
    "prometheus_rule_evaluation_failures_total",
    "alertmanager_notifications_total",
    "alertmanager_notifications_failed_total",
})
HISTOGRAMS = frozenset({"orchestrator_probe_duration_seconds", "orchestrator_remediation_duration_seconds"})
ACTIONS = frozenset({"restart", "scale_up", "scale_down", "scale_to", "start"})
SEVERITIES = frozenset({"critical", "warning", "info"})
# The heartbeat (OrchestratorWatchdog) is the one alert with `heartbeat: "true"` and severity `none`: it
# always fires, pages nobody, and the agent counts it instead of acting on it.
HEARTBEAT_SEVERITY = "none"
# What the Docker variants of the configs may change: addresses and the token path, nothing else.
DOCKER_SUBSTITUTIONS = {
    "prometheus": [("127.0.0.1:9469", "agent:9469"), ("127.0.0.1:9093", "alertmanager:9093"),
                   ("127.0.0.1:9090", "localhost:9090")],
    "alertmanager": [("http://127.0.0.1:9469/", "http://agent:9469/"),
                     ("http://127.0.0.1:9095/", "http://agent:9095/"),
                     ("../.agent/webhook.token", "/etc/secrets/alertmanager/webhook.token")],
}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root; its output is kept for assertion messages."""
    return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, timeout=120)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules_of(kind: str) -> Iterator[dict[str, Any]]:
    """Every rule with an `alert` (kind="alert") or `record` (kind="record") key, across rules/*.yml."""
    for path in RULES:
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                if kind in rule:
                    yield rule


ALERTS = list(rules_of("alert"))
RECORDS = list(rules_of("record"))
# Recorded by the rule file `agent stack generate --nodes` writes for a list of nodes (not in rules/):
# the placement rules' tie-break, one constant series per node.
GENERATED_RECORDS = frozenset({NODE_ORDER})
RECORD_NAMES = frozenset(r["record"] for r in RECORDS) | GENERATED_RECORDS


def promql_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression, string literals (label values) removed."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target, template variable query and annotation of a dashboard."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target.get("expr", "")
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield f"variable {var['name']}", query
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]


def load_dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in DASHBOARDS}


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


# --- the real tools -----------------------------------------------------------------------------

def test_promtool_check_rules() -> None:
    promtool = require_binary("promtool")
    assert RULES, "no rule files in rules/"
    result = run(promtool, "check", "rules", *[str(p.relative_to(ROOT)) for p in RULES])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    assert RULE_TESTS, "no promtool tests in rules/tests/"
    result = run(promtool, "test", "rules", *[str(p.relative_to(ROOT)) for p in RULE_TESTS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pipeline_rules_read_series_that_prometheus_and_alertmanager_export(tmp_path: Path) -> None:
    """Every prometheus_* and alertmanager_* series a rule reads is on the real binaries' /metrics (a
    Prometheus with a rule group and an Alertmanager to send to: the series exist before any failure)."""
    read = {n for rule in [*ALERTS, *RECORDS] for n in promql_names(rule["expr"])
            if n.startswith(("prometheus_", "alertmanager_"))}
    assert read == UPSTREAM_METRICS, sorted(read ^ UPSTREAM_METRICS)
    am_port, prom_port = free_port(), free_port()
    (tmp_path / "am.yml").write_text(yaml.safe_dump(
        {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "rules" / "orchestrator-pipeline.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]}}))
    procs = [spawn_alertmanager(tmp_path / "am.yml", tmp_path / "am", am_port),
             spawn_prometheus(tmp_path / "prometheus.yml", tmp_path / "prom", prom_port)]
    try:
        def exported(port: int) -> set[str]:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return set()
            return set(re.findall(r"^([a-z_:][a-z0-9_:]*)(?:\{| )", text, flags=re.MULTILINE))

        def missing_names() -> set[str]:
            return UPSTREAM_METRICS - exported(prom_port) - exported(am_port)

        wait_for(lambda: not missing_names(), 60, 0.2,
                 "Prometheus and Alertmanager to export the series the pipeline rules read")
    finally:
        end_processes(procs)


@pytest.mark.parametrize("config", ["prometheus/prometheus.yml", "prometheus/prometheus.docker.yml"])
def test_promtool_check_config(config: str) -> None:
    promtool = require_binary("promtool")
    result = run(promtool, "check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    # The config loads every rule file of rules/ (and nothing from rules/tests/).
    assert f"SUCCESS: {len(RULES)} rule files found" in result.stdout, result.stdout


@pytest.mark.parametrize("config", ["prometheus/alertmanager.yml", "prometheus/alertmanager.docker.yml"])
def test_amtool_check_config(config: str) -> None:
    amtool = require_binary("amtool")
    result = run(amtool, "check-config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=OrchestratorComponentDown", "action=restart", "component=web", "severity=warning"],
     "agent-webhook"),
    (["alertname=OrchestratorBacklogLow", "action=scale_to", "direction=down", "component=w", "severity=info"],
     "agent-webhook"),
    (["alertname=OrchestratorBacklogHigh", "action=scale_to", "component=w", "severity=info"], "agent-webhook"),
    (["alertname=OrchestratorComponentMemoryGrowth", "action=restart", "defer=off_peak", "component=w"],
     "agent-webhook"),
    (["alertname=OrchestratorComponentCircuitOpen", "component=web", "severity=critical"], "human"),
    (["alertname=OrchestratorAgentDown", "severity=critical"], "human"),
    (["alertname=OrchestratorConfigReloadFailed", "severity=warning"], "human"),
    (["alertname=OrchestratorRolloutHalted", "component=web", "severity=warning"], "human"),
    # The heartbeat goes to the agent only, also with a node label (a Prometheus's external label).
    (["alertname=OrchestratorWatchdog", "heartbeat=true", "severity=none"], "agent-webhook"),
    (["alertname=OrchestratorWatchdog", "heartbeat=true", "severity=none", "node=a"], "agent-webhook"),
    (["alertname=OrchestratorAlertPipelineSilent", "severity=critical", "instance=h1"], "human"),
    (["alertname=OrchestratorAlertmanagerNotificationsFailing", "integration=webhook", "severity=warning"],
     "human"),
])
def test_alertmanager_routes_actions_to_the_agent_and_the_rest_to_humans(labels: list[str], receiver: str) -> None:
    amtool = require_binary("amtool")
    result = run(amtool, "config", "routes", "test", "--config.file=prometheus/alertmanager.yml",
                 f"--verify.receivers={receiver}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", ["prometheus/alertmanager.yml", "prometheus/alertmanager.docker.yml"])
def test_every_shipped_alert_reaches_the_agent_or_people_never_both(config: str) -> None:
    """Each rule's static labels (with a component and a node, as the alerts carry them): an action or the
    heartbeat goes to the agent's webhook only, everything else to `human` only."""
    amtool = require_binary("amtool")
    for rule in ALERTS:
        labels = {"alertname": rule["alert"], **rule["labels"]}
        if "heartbeat" not in labels:
            labels |= {"component": "web", "node": "a"}
        want = "agent-webhook" if "action" in labels or "heartbeat" in labels else "human"
        result = run(amtool, "config", "routes", "test", f"--config.file={config}",
                     *[f"{k}={v}" for k, v in labels.items()])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == want, f"{rule['alert']} goes to {result.stdout.strip()!r}, not {want!r}"


def test_the_heartbeat_route_comes_first_delivers_within_30s_and_repeats_within_90s() -> None:
    config = load_yaml(ROOT / "prometheus" / "alertmanager.yml")
    first = config["route"]["routes"][0]
    assert first["matchers"] == ['heartbeat="true"']
    assert first["receiver"] == "agent-webhook" and "routes" not in first and not first.get("continue")
    # Never held: a muted heartbeat would read as a broken pipeline.
    assert "mute_time_intervals" not in first and "active_time_intervals" not in first

    def seconds(value: str) -> int:
        found = re.fullmatch(r"(\d+)([sm])", value)
        assert found, value
        return int(found.group(1)) * {"s": 1, "m": 60}[found.group(2)]

    assert seconds(first["group_wait"]) <= 30
    # An unchanged group is resent at the first group_interval tick after repeat_interval: the gap the
    # comment above the route states, and what the examples' heartbeat_timeout is chosen against.
    gap = seconds(first["repeat_interval"]) + seconds(first["group_interval"])
    assert gap == 90
    assert "worst-case gap between two deliveries is 90 s" in (ROOT / "prometheus" / "alertmanager.yml").read_text()


# --- rules and their tests ------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ALERTS, ids=[a["alert"] for a in ALERTS])
def test_alert_follows_the_conventions(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"Orchestrator[A-Z][A-Za-z0-9]+", name), name
    # Whole minutes, or whole seconds where a target needs them (scaling): the fast clock of the
    # end-to-end tests makes a minute a second and a second 1/60 s (agent/stack/source.py).
    assert re.fullmatch(r"[1-9][0-9]*m|[0-9]+s", str(rule.get("for", ""))), f"{name}: for: {rule.get('for')!r}"
    labels = rule.get("labels", {})
    annotations = rule.get("annotations", {})
    heartbeat = "heartbeat" in labels
    if heartbeat:
        # Fixed text: it says the same thing every time, and carries no label a template could use.
        assert labels == {"heartbeat": "true", "severity": HEARTBEAT_SEVERITY}, f"{name}: {labels}"
        assert rule["expr"].strip() == "vector(1)", f"{name}: a heartbeat always fires"
    else:
        assert labels.get("severity") in SEVERITIES, f"{name}: severity {labels.get('severity')!r}"
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{name}: annotation {key} missing"
    assert "{{" not in annotations["summary"], f"{name}: summary must be fixed text"
    assert heartbeat or "{{" in annotations["description"], f"{name}: description should be templated"
    assert annotations["runbook_url"] == DEFAULT_RUNBOOK_URL_PATTERN % name.lower(), annotations["runbook_url"]
    if "action" in labels:
        assert labels["action"] in ACTIONS, f"{name}: unknown action {labels['action']!r}"
        assert "component" in rule["expr"], f"{name}: an action needs a component label from its expression"
    if labels.get("action") == "scale_to":
        assert annotations.get("desired_replicas"), f"{name}: scale_to needs annotation desired_replicas"
    assert labels.get("severity") != "critical" or "action" not in labels, f"{name}: critical is for humans"


def test_every_alert_has_a_runbook_section() -> None:
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    anchors = {github_anchor(h) for h in headings}
    for rule in ALERTS:
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"docs/runbook.md has no section for {rule['alert']} (#{anchor})"
    alert_names = {r["alert"] for r in ALERTS}
    orphans = [h for h in headings if h.startswith("Orchestrator") and h not in alert_names]
    assert not orphans, f"runbook sections without an alert: {orphans}"


@pytest.mark.parametrize("rule", RECORDS, ids=[r["record"] for r in RECORDS])
def test_recording_rule_is_named_level_metric_operations(rule: dict[str, Any]) -> None:
    name = rule["record"]
    assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+(:[a-z0-9_]+)?", name), name
    assert name.split(":")[1].startswith("orchestrator_") or name.startswith("orchestrator:"), name
    assert "labels" not in rule or not rule["labels"], f"{name}: recording rules keep their series' labels"


def _rule_tests() -> dict[str, Any]:
    return {p.name: load_yaml(p) for p in RULE_TESTS}


def test_every_rule_file_has_a_test_file_that_loads_it() -> None:
    tests = _rule_tests()
    for path in RULES:
        name = f"{path.stem}_test.yml"
        assert name in tests, f"rules/tests/{name} is missing"
        assert f"../{path.name}" in tests[name]["rule_files"], f"{name} does not load {path.name}"
    for name, doc in tests.items():
        for rule_file in doc["rule_files"]:
            assert (ROOT / "rules" / "tests" / rule_file).resolve().is_file(), f"{name}: {rule_file}"


def test_every_alert_has_named_firing_and_negative_cases() -> None:
    firing: dict[str, int] = {}
    negative: dict[str, int] = {}
    for name, doc in _rule_tests().items():
        for group in doc["tests"]:
            assert group.get("name"), f"{name}: every test group needs a name"
            for case in group.get("alert_rule_test", []):
                alert = case["alertname"]
                if case.get("exp_alerts"):
                    firing[alert] = firing.get(alert, 0) + 1
                    action = next((a for a in ALERTS if a["alert"] == alert), {}).get("labels", {}).get("action")
                    for exp in case["exp_alerts"]:
                        if action:
                            assert "component" in exp["exp_labels"], f"{alert}: fires without a component"
                else:
                    negative[alert] = negative.get(alert, 0) + 1
    for rule in ALERTS:
        assert firing.get(rule["alert"]), f"{rule['alert']}: no promtool case where it fires"
        if "heartbeat" in rule["labels"]:
            continue  # always fires: there is no case where it does not
        assert negative.get(rule["alert"]), f"{rule['alert']}: no promtool case where it does not fire (yet)"


def test_every_recording_rule_is_tested() -> None:
    tested: set[str] = set()
    for doc in _rule_tests().values():
        for group in doc["tests"]:
            for case in group.get("promql_expr_test", []):
                tested |= promql_names(case["expr"])
    missing = sorted(RECORD_NAMES - GENERATED_RECORDS - tested)
    assert not missing, f"recording rules without a promql_expr_test: {missing}"


def test_rules_use_only_contract_metrics_and_defined_recordings() -> None:
    for rule in [*ALERTS, *RECORDS]:
        names = promql_names(rule["expr"])
        unknown = sorted(n for n in names if n.startswith("orchestrator_") and n not in CONTRACT_METRICS)
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: not in the metric contract: {unknown}"
        undefined = sorted(n for n in names if ":" in n and n not in RECORD_NAMES)
        assert not undefined, f"{rule.get('alert') or rule.get('record')}: no such recording rule: {undefined}"


def test_contract_matches_docs_metrics_md() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    missing = sorted(m for m in CONTRACT_METRICS if m.removesuffix("_total") not in text)
    assert not missing, f"metrics in the test's contract but not in docs/metrics.md: {missing}"


# --- Prometheus / Alertmanager configs ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["prometheus", "alertmanager"])
def test_docker_variant_differs_only_in_addresses(kind: str) -> None:
    local = (ROOT / "prometheus" / f"{kind}.yml").read_text()
    for old, new in DOCKER_SUBSTITUTIONS[kind]:
        assert old in local, f"{kind}.yml: {old!r} not found"
        local = local.replace(old, new)
    docker = (ROOT / "prometheus" / f"{kind}.docker.yml").read_text()
    assert yaml.safe_load(local) == yaml.safe_load(docker)


def test_prometheus_scrapes_the_agent_and_loads_the_rules() -> None:
    config = load_yaml(ROOT / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    agent = jobs["orchestrator-agent"]
    assert agent["static_configs"][0]["targets"] == ["127.0.0.1:9469"]
    assert config["rule_files"] == ["../rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]


def test_alertmanager_sends_actions_to_the_agent_webhook_with_credentials() -> None:
    config = load_yaml(ROOT / "prometheus" / "alertmanager.yml")
    routes = config["route"]["routes"]
    agent_route = next(r for r in routes if r["matchers"] == ['action=~".+"'])
    assert agent_route["receiver"] == "agent-webhook"
    assert agent_route["group_by"] == ["alertname", "component", "node"]
    receiver = next(r for r in config["receivers"] if r["name"] == "agent-webhook")
    (hook,) = receiver["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9469/webhook/alertmanager"
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["type"] == "Bearer"
    assert hook["http_config"]["authorization"]["credentials_file"]
    names = {t["name"] for t in config["time_intervals"]}
    assert {"peak-hours", "maintenance"} <= names
    # Deferred restarts and scale-downs are muted in the windows, everything else acts at once.
    muted = {tuple(r["matchers"]): r["mute_time_intervals"] for r in agent_route["routes"]
             if "mute_time_intervals" in r}
    assert muted[('defer="off_peak"',)] == ["peak-hours", "maintenance"]
    assert muted[('action="scale_down"',)] == ["maintenance"]
    assert muted[('action="scale_to"', 'direction="down"')] == ["maintenance"]
    assert ('action="scale_to"',) not in muted
    # Every scale-down carries `direction: down`, so the maintenance mute holds it; no scale-up does.
    for rule in ALERTS:
        if rule["labels"].get("action") == "scale_to":
            down = rule["labels"].get("direction") == "down"
            assert down == (rule["alert"] == "OrchestratorBacklogLow"), rule["alert"]
    # scale_to converges over deliveries, and Alertmanager does not resend when only its
    # `desired_replicas` annotation changes: its repeat comes every 30 s, not every 2 minutes.
    for child in agent_route["routes"]:
        if 'action="scale_to"' in child["matchers"]:
            assert (child["group_interval"], child["repeat_interval"]) == ("15s", "30s"), child
    deferred = [a["alert"] for a in ALERTS if a["labels"].get("defer") == "off_peak"]
    assert deferred == ["OrchestratorComponentMemoryGrowth"]


# --- Grafana --------------------------------------------------------------------------------------

def test_dashboards_are_generated_from_the_script() -> None:
    from agent.stack.dashboards import DASHBOARDS as GENERATED
    from scripts.gen_stack import main as generate

    assert sorted(GENERATED) == [p.name for p in DASHBOARDS]
    assert generate(["--check"]) == 0, "rules/, grafana/, prometheus/ or systemd/ differ from scripts/gen_stack.py"


def test_dashboards_have_stable_unique_uids_and_the_datasource_variable() -> None:
    dashboards = load_dashboards()
    assert len(dashboards) >= 5
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids), uids
    for path, dash in dashboards.items():
        assert dash["uid"] == path.stem, f"{path.name}: uid {dash['uid']!r} should be the file name"
        assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"])
        (var,) = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
        assert var["type"] == "datasource" and var["query"] == "prometheus"
        for panel in dash["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
                assert target.get("expr", "").strip(), f"{path.name}: empty expr in {panel['title']!r}"


def test_dashboard_counters_use_rate_interval() -> None:
    for path, dash in load_dashboards().items():
        for where, expr in dashboard_exprs(dash):
            for window in re.findall(r"\b(?:rate|irate|increase)\([^\[]*\[([^\]]+)\]", expr):
                assert window in ("$__rate_interval", "$__range"), f"{path.name} {where}: [{window}]"


def test_dashboards_use_only_contract_metrics_and_defined_recordings() -> None:
    for path, dash in load_dashboards().items():
        for where, expr in dashboard_exprs(dash):
            for name in promql_names(expr):
                if name.startswith("orchestrator_"):
                    base = re.sub(r"_(bucket|sum|count)$", "", name)
                    ok = name in CONTRACT_METRICS or (base in HISTOGRAMS and base != name)
                    assert ok, f"{path.name} {where}: {name} is not in the metric contract"
                elif ":" in name:
                    assert name in RECORD_NAMES, f"{path.name} {where}: no recording rule {name}"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = []
    for path, dash in load_dashboards().items():
        for i, (_, expr) in enumerate(dashboard_exprs(dash)):
            if expr.startswith("label_values("):
                continue
            concrete = (expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
                        .replace("$instance", ".*").replace("$component", ".*")
                            .replace("$job", ".*").replace("$node", ".*"))
            assert "$" not in concrete, f"{path.name}: unhandled variable in {expr}"
            rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}_{i}:check", "expr": concrete})
    file = tmp_path / "dashboards.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provider = load_yaml(ROOT / "grafana" / "provisioning" / "dashboards" / "provider.yml")
    (prov,) = provider["providers"]
    assert prov["type"] == "file"
    compose = load_yaml(COMPOSE)
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{prov['options']['path']}:ro" in mounts
    datasources = load_yaml(ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"


# --- docker-compose.yml and the image -------------------------------------------------------------

def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.validate(load_yaml(COMPOSE), schema, cls=jsonschema.Draft202012Validator)


def _bind_sources(compose: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source = volume.split(":", 1)[0]
                if source.startswith((".", "/", "~")):
                    yield name, source
            elif volume.get("type") == "bind":
                yield name, volume["source"]
        build = service.get("build")
        if build is not None:
            yield name, build if isinstance(build, str) else build.get("context", ".")


def test_every_bind_mounted_path_exists() -> None:
    compose = load_yaml(COMPOSE)
    sources = list(_bind_sources(compose))
    assert sources
    missing = [(svc, src) for svc, src in sources if not (ROOT / src).exists()]
    assert not missing, f"bind-mounted paths missing from the repository: {missing}"


def test_compose_wires_the_stack_from_these_files() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert {"agent", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert "./examples/docker.yaml:/etc/agent/config.yaml:ro" in services["agent"]["volumes"]
    assert "./prometheus/prometheus.docker.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    assert "./rules:/etc/rules:ro" in services["prometheus"]["volumes"]
    assert ("./prometheus/alertmanager.docker.yml:/etc/alertmanager/alertmanager.yml:ro"
            in services["alertmanager"]["volumes"])
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    # The agent's Docker config is valid, and its webhook token file is the one Alertmanager sends.
    load_config(ROOT / "examples" / "docker.yaml")
    agent_config = load_yaml(ROOT / "examples" / "docker.yaml")
    token = agent_config["agent"]["webhook"]["bearer_token_file"]
    am = load_yaml(ROOT / "prometheus" / "alertmanager.docker.yml")
    hook = next(r for r in am["receivers"] if r["name"] == "agent-webhook")["webhook_configs"][0]
    sent = hook["http_config"]["authorization"]["credentials_file"]
    # One token, one 0600 copy per reader, each owned by the uid that reads it (the agent refuses a
    # token file that others may read): the agent's uid from the Dockerfile, Alertmanager's nobody.
    writer = "\n".join(services["webhook-token"]["command"])
    assert token == "/etc/secrets/agent/webhook.token" and sent == "/etc/secrets/alertmanager/webhook.token"
    assert "(agent, 10001), (am, 65534)" in writer and "0o600" in writer and "0o644" not in writer
    assert f'agent, am = "{token}", "{sent}"' in writer
    assert "--uid 10001" in (ROOT / "Dockerfile").read_text()
    assert agent_config["agent"]["listen"].startswith("0.0.0.0:9469")


def test_dockerfile_builds_the_agent_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, flags=re.MULTILINE)
    assert "pip install ." in text
    assert 'CMD ["run", "--config", "/etc/agent/config.yaml"]' in text
    assert 'ENTRYPOINT ["agent"]' in text


def test_fast_rules_make_every_minute_a_second(tmp_path: Path) -> None:
    from scripts.gen_stack import write_fast_rules as fast_rules

    promtool = require_binary("promtool")
    files = fast_rules(tmp_path, {"orchestrator:backlog_drain_target_seconds": 10})
    assert sorted(p.name for p in files) == [p.name for p in RULES]
    text = "\n".join(p.read_text() for p in files)
    assert not re.search(r"for: \d+m\b", text) and not re.search(r"\[\d+m\]", text)
    assert not re.search(r"\boffset \d+m\b", text) and "offset 15s" in text
    assert 'orchestrator_component_max_replicas{job="orchestrator-agent"} + 10' in text
    # The mixin-shaped reload alert keeps its shape on the short clock: a 5 s window, then 5 s of `for:`.
    reload = next(r for p in files for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]
                  if r.get("alert") == "OrchestratorConfigReloadFailed")
    assert reload["expr"].strip() == (
        'max_over_time(orchestrator_config_last_reload_successful{job="orchestrator-agent"}[5s]) == 0')
    assert reload["for"] == "5s"
    # Seconds of `for:` become sixtieths: the scale-up's 15 s is 250 ms, the scale-down's 0 s stays.
    fast = {r["alert"]: r for p in files for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]
            if "alert" in r}
    assert (fast["OrchestratorBacklogHigh"]["for"], fast["OrchestratorBacklogLow"]["for"]) == ("250ms", "0s")
    result = run(promtool, "check", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(KeyError):
        fast_rules(tmp_path / "other", {"orchestrator:no_such_threshold": 1})
    with pytest.raises(ValueError):
        fast_rules(tmp_path / "other", {"orchestrator:todo_oldest_pending_age_threshold_seconds": 1})


def test_rule_durations_are_whole_minutes() -> None:
    # The fast clock relies on this: any other unit would keep its production length on the short clock.
    for rule in [*ALERTS, *RECORDS]:
        for window in re.findall(r"\[([^\]]+)\]", rule["expr"]):
            assert re.fullmatch(r"\d+m|6h", window), f"{rule.get('alert') or rule.get('record')}: [{window}]"
        for offset in re.findall(r"\boffset\s+(\S+)", rule["expr"]):
            assert re.fullmatch(r"\d+m", offset), f"{rule.get('alert') or rule.get('record')}: offset {offset}"
