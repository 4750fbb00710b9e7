"""docker-compose.yml runs Prometheus 3 and Alertmanager 0.28, while promtool/amtool/prometheus in these
tests are Debian's 2.42/0.25 (no newer binaries are reachable here). What the 2.x tools accept but
Prometheus 3 removed or changed (https://prometheus.io/docs/prometheus/latest/migration/) is checked
statically, over the Prometheus/Alertmanager configs, the rules and their tests, the dashboards' queries
and every command line that starts Prometheus; the README states the version gap."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import running_agent

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROM_CONFIGS = [ROOT / "prometheus" / "prometheus.yml", ROOT / "prometheus" / "prometheus.docker.yml"]
AM_CONFIGS = [ROOT / "prometheus" / "alertmanager.yml", ROOT / "prometheus" / "alertmanager.docker.yml"]

# Feature flags Prometheus 3 removed (their behaviour is now the default, or a dedicated flag replaced
# them: agent -> --agent, remote-write-receiver -> --web.enable-remote-write-receiver,
# otlp-write-receiver -> --web.enable-otlp-receiver). Prometheus 3 refuses to start on an unknown flag.
REMOVED_FEATURES = frozenset({
    "promql-at-modifier", "promql-negative-offset", "remote-write-receiver", "new-service-discovery-manager",
    "expand-external-labels", "no-default-scrape-port", "agent", "auto-gomemlimit", "auto-gomaxprocs",
    "utf8-names", "otlp-write-receiver",
})
# Command-line flags removed in 3.0 (deprecated in 2.x).
REMOVED_FLAGS = frozenset({
    "--storage.tsdb.retention", "--storage.tsdb.allow-overlapping-blocks", "--alertmanager.timeout",
})
# Scrape-config keys renamed in 3.0.
RENAMED_KEYS = {"scrape_classic_histograms": "always_scrape_classic_histograms"}
# Labels the regex matchers may test. In Prometheus 3 a regex `.` also matches a newline; that changes
# nothing for labels whose values never hold one: alert names, HTTP codes, the agent's own enumerations
# (reason, result, state, action), and names from config (component), host:port (instance), job, node.
NEWLINE_FREE_LABELS = frozenset({
    "alertname", "code", "reason", "result", "state", "action", "component", "instance", "job", "node",
    "severity", "priority", "mode", "source", "capability",
})
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|=|!=)\s*"((?:[^"\\]|\\.)*)"')
RANGE_FUNCTIONS = ("rate", "irate", "increase", "delta", "idelta", "deriv", "resets", "changes")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def promql() -> Iterator[tuple[str, str]]:
    """(where, expression) for every PromQL expression this repository ships or tests with."""
    for path in sorted((ROOT / "rules").glob("*.yml")):
        for group in load(path)["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]
    for path in sorted((ROOT / "rules" / "tests").glob("*.yml")):
        for case in load(path).get("tests", []):
            for test in case.get("promql_expr_test", []):
                yield f"{path.name}: promql_expr_test", test["expr"]
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        # Anywhere in the dashboard (rows nest panels): targets' and annotations' `expr`, variables' `query`.
        for node in _dicts(json.loads(path.read_text())):
            if isinstance(node.get("expr"), str):
                yield f"{path.name}: {node.get('refId') or node.get('name') or 'expr'}", node["expr"]
            if node.get("type") == "query" and "query" in node:
                yield f"{path.name}: variable {node.get('name')}", "\n".join(_strings(node["query"]))


def _dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dicts(value)


def prometheus_command_lines() -> Iterator[tuple[str, list[str]]]:
    """Every argv that starts a Prometheus: the compose service and the native stack's component."""
    yield "docker-compose.yml", [str(a) for a in load(COMPOSE)["services"]["prometheus"]["command"]]
    for name, component in load(ROOT / "examples" / "stack.yaml")["components"].items():
        argv = [str(a) for a in component.get("command", [])]
        if any("prometheus.yml" in a for a in argv):
            yield f"examples/stack.yaml: {name}", argv


def test_compose_pins_the_versions_the_readme_names() -> None:
    services = load(COMPOSE)["services"]
    prom, am = services["prometheus"]["image"], services["alertmanager"]["image"]
    prom_version = re.fullmatch(r"prom/prometheus:v(3\.\d+\.\d+)", prom)
    am_version = re.fullmatch(r"prom/alertmanager:v(0\.(\d+)\.\d+)", am)
    assert prom_version, f"expected a pinned Prometheus 3 image, got {prom}: revisit this file's checks"
    assert am_version and int(am_version.group(2)) >= 27, am
    readme = (ROOT / "README.md").read_text()
    for version in (prom_version.group(1), am_version.group(1)):
        assert version in readme, f"README must say the compose file runs {version} (and that tests use 2.42/0.25)"
    assert "2.42" in readme and "0.25" in readme


@pytest.mark.parametrize(("where", "argv"), list(prometheus_command_lines()), ids=lambda v: str(v)[:40])
def test_no_removed_flag_or_feature(where: str, argv: list[str]) -> None:
    features = {f for a in argv if a.startswith("--enable-feature=") for f in a.split("=", 1)[1].split(",")}
    assert not features & REMOVED_FEATURES, f"{where}: Prometheus 3 removed {features & REMOVED_FEATURES}"
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    assert not flags & REMOVED_FLAGS, f"{where}: Prometheus 3 removed {flags & REMOVED_FLAGS}"


@pytest.mark.parametrize("path", PROM_CONFIGS, ids=lambda p: p.name)
def test_prometheus_config_has_nothing_3_removed(path: Path) -> None:
    config = load(path)
    for key, new in RENAMED_KEYS.items():
        assert key not in path.read_text(), f"{path.name}: Prometheus 3 renamed {key} to {new}"
    for am in config.get("alerting", {}).get("alertmanagers", []):
        # Prometheus 3 speaks only the Alertmanager v2 API (and Alertmanager >= 0.27 serves only v2).
        assert am.get("api_version", "v2") == "v2", f"{path.name}: api_version {am['api_version']}"
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                # Prometheus 3 no longer adds :80/:443 from the scheme: every target names its port.
                assert re.fullmatch(r"[\w.-]+:\d+", target), f"{path.name}: {job['job_name']} target {target}"
        if "scrape_protocols" in job or "scrape_protocols" in config.get("global", {}):
            pytest.fail(f"{path.name}: scrape_protocols set; check it against Prometheus 3's defaults")


@pytest.mark.parametrize("path", AM_CONFIGS, ids=lambda p: p.name)
def test_alertmanager_config_uses_matchers_both_parsers_read(path: Path) -> None:
    # Alertmanager 0.27+ parses matchers with a UTF-8 parser (falling back to the classic one, with a
    # warning); the deprecated match/match_re/source_match forms are on their way out. Quoted values
    # with plain label names read the same in both parsers.
    text = path.read_text()
    for old in ("match:", "match_re:", "source_match:", "source_match_re:", "target_match:", "target_match_re:"):
        assert not re.search(rf"^\s*-?\s*{old}", text, flags=re.MULTILINE), f"{path.name}: deprecated {old}"
    config = load(path)
    matchers: list[str] = []

    def walk(route: dict[str, Any]) -> None:
        matchers.extend(route.get("matchers", []))
        for child in route.get("routes", []):
            walk(child)

    walk(config["route"])
    for rule in config.get("inhibit_rules", []):
        matchers += rule.get("source_matchers", []) + rule.get("target_matchers", [])
    assert matchers
    for matcher in matchers:
        assert MATCHER.fullmatch(matcher), f"{path.name}: matcher {matcher!r} is not label<op>\"value\""


def test_promql_avoids_what_prometheus_3_changed() -> None:
    exprs = list(promql())
    assert len(exprs) > 50
    scrape = min(float(load(p)["global"]["scrape_interval"].rstrip("s")) for p in PROM_CONFIGS)
    units = {"s": 1, "m": 60, "h": 3600}
    windows = 0
    for where, expr in exprs:
        # holt_winters is double_exponential_smoothing in 3, and only behind a feature flag.
        assert "holt_winters" not in expr, where
        for label, op, value in MATCHER.findall(expr):
            if op in ("=~", "!~"):
                assert label in NEWLINE_FREE_LABELS, f"{where}: regex on {label}: `.` matches newlines in 3"
            # Classic histograms' le and summaries' quantile are normalised to floats ("1" -> "1.0").
            if label in ("le", "quantile"):
                assert "." in value or value in ("+Inf", "NaN"), f"{where}: {label}=\"{value}\""
        # Range selectors are left-open in 3: a window must hold two scrapes without the sample on its
        # start boundary, i.e. be longer than two scrape intervals (Grafana's $__rate_interval is 4x).
        for fn, window in re.findall(rf"\b({'|'.join(RANGE_FUNCTIONS)})\s*\([^\[]*\[(\d+[smh])\]", expr):
            seconds = int(window[:-1]) * units[window[-1]]
            assert seconds > 2 * scrape, f"{where}: {fn}(...[{window}]) with a {scrape:.0f}s scrape interval"
            windows += 1
    assert windows >= 5, "no fixed range window found: the pattern above no longer matches the rules"


def test_agent_answers_prometheus_3_content_negotiation(tmp_path: Path) -> None:
    # Prometheus 3 fails a scrape whose Content-Type it cannot parse (unless fallback_scrape_protocol is
    # set, which our configs do not); this is the Accept header it sends by default.
    accept = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
              "application/openmetrics-text;version=0.0.1;q=0.4,"
              "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
              "text/plain;version=0.0.4;q=0.2,*/*;q=0.1")
    with running_agent(tmp_path, {"components": {}}) as agent:
        for header in (accept, "text/plain;version=0.0.4;q=1,*/*;q=0.1"):
            r = httpx.get(agent.url + "/metrics", headers={"Accept": header}, timeout=10)
            assert r.status_code == 200
            media, _, params = r.headers["content-type"].partition(";")
            version = dict(p.strip().split("=", 1) for p in params.split(";") if "=" in p).get("version")
            assert (media.strip(), version) in {
                ("application/openmetrics-text", "1.0.0"), ("application/openmetrics-text", "0.0.1"),
                ("text/plain", "0.0.4"), ("text/plain", "1.0.0"),
            }, r.headers["content-type"]
            assert "orchestrator_build_info" in r.text
