"""The status page at a glance, in a real headless Chromium against real agents and a real Prometheus.

- What is about to act: the alerts pending and firing in Prometheus with an `action` label, read by the
  agent from `agent.status_page.prometheus_url` (`GET /api/v1/alerts`), in a panel and on each row.
- The banner when the alert pipeline has gone silent (`agent.webhook.heartbeat_timeout`).
- The row's last probe error and the end of its open circuit.
- At 1280 x 800, the 9 components of the embedded demo with examples/stack.yaml, the backlog summary and
  what is about to act fit on one screen.

The demo agent runs the component set of agent/demo/default.yaml + examples/stack.yaml, each command
replaced by a harmless one (what is measured is the page, not the demo's services).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.config.units import clock
from agent.observe.httpclient import HttpClient
from agent.observe.prometheus_alerts import AnswerError, PrometheusAlerts, about_to_act
from tests.browser import chromium, open_menu
from tests.helpers import AgentProcess, demo_sleepers, end_processes, free_port, run_async, running_agent, wait_for
from tests.stackbin import rules_prometheus

NODE = "page-node"
# Alerts that never resolve (vector(1)): one pending for an hour, one firing at once, and three the page
# must leave out (another node, no action, inactive).
RULES = {"groups": [{"name": "page", "interval": "1s", "rules": [
    {"alert": "PageRestartSoon", "expr": "vector(1)", "for": "1h",
     "labels": {"action": "restart", "component": "web", "severity": "warning"}},
    {"alert": "PageScaleNow", "expr": "vector(1)", "for": "0s",
     "labels": {"action": "scale_to", "component": "todo_worker", "node": NODE, "severity": "warning"},
     "annotations": {"desired_replicas": "3"}},
    {"alert": "PageOtherNode", "expr": "vector(1)", "for": "0s",
     "labels": {"action": "restart", "component": "ollama", "node": "another-node", "severity": "warning"}},
    {"alert": "PageNoAction", "expr": "vector(1)", "for": "0s",
     "labels": {"component": "ollama", "severity": "warning"}},
    {"alert": "PageNever", "expr": "vector(1) == 2", "for": "0s",
     "labels": {"action": "restart", "component": "ollama", "severity": "warning"}},
]}]}
NOTES = "circuit · probe error"  # the column of both
TODOS = [("index the wiki", "high", "todo_processing"), ("summarise the inbox", "normal", "todo_processing"),
         ("rotate the keys", "critical", "ops")]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus evaluating RULES every second; its base URL once both alerts are in their state."""
    tmp = tmp_path_factory.mktemp("prom")
    proc, url = rules_prometheus(tmp, RULES)
    try:
        def states() -> dict[str, str]:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                alerts = httpx.get(url + "/api/v1/alerts", timeout=2).json()["data"]["alerts"]
            except (httpx.HTTPError, ValueError):
                return {}
            return {a["labels"]["alertname"]: a["state"] for a in alerts}
        wait_for(lambda: {"PageRestartSoon": "pending", "PageScaleNow": "firing"}.items() <= states().items(),
                 60, 0.2, "Prometheus to hold PageRestartSoon pending and PageScaleNow firing")
        yield url
    finally:
        end_processes([proc])


def demo_components() -> dict[str, dict[str, Any]]:
    """The components of the embedded demo with examples/stack.yaml, each running `sleep` instead."""
    out = demo_sleepers(NODE)
    # A probe that keeps failing (marks the replica unhealthy, no restart), and a crash loop whose circuit
    # opens at the first exit and stays open for an hour.
    out["web"]["probe"] = {"exec": {"command": ["sh", "-c", "exit 7"]}, "interval": 0.5,
                           "failure_threshold": 1, "startup_grace": 0, "restart": False}
    out["ollama"]["command"] = ["sh", "-c", "exit 3"]
    out["ollama"]["restart"] = {"max_restarts": 1, "window": 60, "circuit_cooldown": 3600, "backoff": {"initial": 0.05}}
    return out


def token(agent: AgentProcess) -> str:
    return (agent.state_dir / "control.token").read_text().strip()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, prometheus: str) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("glance")
    db = tmp / "todos.db"
    config = {
        "agent": {"node": NODE, "resources": {"interval": "0.5s"},
                  "webhook": {"heartbeat_timeout": "1s"},  # and no Alertmanager: the pipeline goes silent
                  "status_page": {"prometheus_url": prometheus, "grafana_url": "http://grafana.test/d/c",
                                  "runbook_url": "http://docs.test/runbook.md"}},
        "components": demo_components(),
        "backlog": {"sources": [{"kind": "sqlite", "path": str(db), "name": "todos", "interval": "0.5s"}]},
    }
    with running_agent(tmp, config) as agent:
        for title, priority, cap in TODOS:
            subprocess.run([sys.executable, "-m", "agent", "todo", "--db", str(db), "add", title, "-p", priority,
                            "--capability", cap], check=True, capture_output=True, timeout=30)
        wait_for(lambda: agent.status()["ollama"]["circuit_until"] is not None, 20, what="ollama's circuit to open")
        wait_for(lambda: agent.status()["web"]["last_probe_error"] is not None, 20, what="web's probe to fail")
        yield agent


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(demo: AgentProcess, browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(f"{demo.url}/?token={token(demo)}")
    tab.wait_for_selector('tr[data-component="todo_worker"]')
    try:
        yield tab
    finally:
        context.close()
    assert errors == [], errors


def field(tab: Any, name: str, label: str) -> str:
    text: str = tab.locator(f'tr[data-component="{name}"] [data-field="{label}"]').inner_text()
    return text


# --- what Prometheus answers, parsed ---------------------------------------------------------------------

def test_only_pending_and_firing_alerts_with_an_action_for_this_node_are_kept() -> None:
    alert = {"labels": {"alertname": "A", "action": "restart", "component": "web"}, "annotations": {},
             "state": "pending", "activeAt": "2026-01-02T03:04:05.123456789Z", "value": "1e+00"}
    doc = {"status": "success", "data": {"alerts": [
        alert,
        {**alert, "labels": {**alert["labels"], "alertname": "B", "node": "n1", "replica": "2"}, "state": "firing",
         "annotations": {"desired_replicas": "4"}},
        {**alert, "labels": {**alert["labels"], "node": "n2"}},
        {**alert, "labels": {"alertname": "C", "component": "web"}},
        {**alert, "state": "inactive"},
    ]}}
    got = about_to_act(doc, "n1")
    assert [a["alertname"] for a in got] == ["B", "A"], "firing first, then pending"
    assert got[0] == {"alertname": "B", "component": "web", "action": "restart", "state": "firing",
                      "active_at": pytest.approx(1767323045.123456), "replica": "2", "desired_replicas": "4"}


@pytest.mark.parametrize(("answer", "says"), [
    ({"status": "error", "errorType": "unavailable", "error": "rule manager not ready"},
     "Prometheus answered an error: unavailable: rule manager not ready"),
    ({"status": "success", "data": {"alerts": [{"labels": {"a": 1}, "state": "firing"}]}},
     "first at data.alerts.0.labels.a"),
    ({"status": "success", "data": {"alerts": [{"labels": {}, "state": "sleeping"}]}}, "data.alerts.0.state"),
    ({"todos": []}, "not Prometheus's alerts API answer"),
    ([1, 2], "not Prometheus's alerts API answer"),
])
def test_an_answer_that_is_not_prometheus_alerts_is_an_error_message(answer: Any, says: str) -> None:
    with pytest.raises(AnswerError) as caught:
        about_to_act(answer, "n1")
    assert says in str(caught.value)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])  # the agent's loop, and its fallback
@pytest.mark.parametrize(("url", "says"), [
    ("http://[::1", "InvalidURL: "),  # httpx refuses the URL before any connection
    ("http://127.0.0.1:99999", ""),  # plain asyncio: an ExceptionGroup around an OverflowError; uvloop: ConnectError
])
def test_a_url_no_request_can_be_made_to_is_a_counted_error_naming_it(url: str, says: str, loop: str) -> None:
    # Config validation refuses both (tests/test_config.py); the reader does not rely on it.
    async def read() -> tuple[dict[str, Any], dict[str, Any]]:
        async with HttpClient() as client:
            reader = PrometheusAlerts(client)
            return await reader.document(url, NODE), reader.status(url)

    doc, status = run_async(read()) if loop == "uvloop" else asyncio.run(read())
    assert doc["alerts"] == [] and doc["error"].startswith(f"GET {url}/api/v1/alerts: {says}"), doc
    assert "Group" not in doc["error"], "what failed inside, not the group around it"
    assert status["alerts_error"] == doc["error"] and status["alerts_failures"] == doc["failures"] == 1
    assert status["alerts_checked_at"] == doc["checked_at"]


# --- the page ---------------------------------------------------------------------------------------------

def test_at_1280x800_the_9_demo_components_the_backlog_and_what_is_about_to_act_fit_on_one_screen(
        demo: AgentProcess, page: Any) -> None:
    names = set(demo_components())
    assert names == {"mcp_server", "todo_dashboard", "todo_worker", "ollama", "auto_restart_agents", "prometheus",
                     "alertmanager", "alert_receiver", "web"}
    wait_for(lambda: page.evaluate("document.querySelectorAll('#ahead li').length >= 2"
                                   " && document.querySelectorAll('#backlog li').length >= 2"), 20,
             what="the about-to-act panel and the backlog summary to fill")
    wait_for(lambda: not page.locator("#pipeline").is_hidden(), 10, what="the silent pipeline banner")
    boxes = page.evaluate("""() => {
        const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
        return {rows: Object.fromEntries([...document.querySelectorAll('#components tbody tr')]
                    .map(r => [r.dataset.component, box(r)])),
                backlog: box(document.getElementById('backlog-sources')),
                ahead: box(document.getElementById('ahead')),
                width: window.innerWidth, height: window.innerHeight,
                scrollWidth: document.documentElement.scrollWidth};
    }""")
    assert set(boxes["rows"]) == names
    for what, (left, top, right, bottom) in [*boxes["rows"].items(), ("backlog", boxes["backlog"]),
                                              ("about to act", boxes["ahead"])]:
        assert left >= 0 and top >= 0 and right <= boxes["width"] and bottom <= boxes["height"], (what, boxes)
    assert boxes["scrollWidth"] <= boxes["width"]
    # One line a row: every row as tall as the shortest (no row wraps into a second line of buttons).
    heights = [bottom - top for _, top, _, bottom in boxes["rows"].values()]
    assert max(heights) - min(heights) < 4 and max(heights) < 40, heights


def test_the_pending_and_the_firing_alert_show_on_their_rows_and_in_the_panel(page: Any) -> None:
    wait_for(lambda: field(page, "web", "about to act").startswith("restart pending"), 15,
             what=lambda: f"web's row to show the pending restart (shows {field(page, 'web', 'about to act')!r})")
    wait_for(lambda: field(page, "todo_worker", "about to act").startswith("scale_to → 3 firing"), 15,
             what=lambda: f"todo_worker's row to show the scale_to ({field(page, 'todo_worker', 'about to act')!r})")
    assert field(page, "ollama", "about to act") == "", "another node's, an action-less and an inactive alert"
    web = page.locator('#ahead li[data-component="web"]').inner_text()
    worker = page.locator('#ahead li[data-component="todo_worker"]').inner_text()
    assert web.startswith("web: restart (PageRestartSoon) pending for "), web
    assert worker.startswith("todo_worker: scale_to to 3 (PageScaleNow) firing for "), worker
    assert page.locator("#ahead li").count() == 2
    assert page.locator("#ahead-state").inner_text().startswith("From Prometheus at ")


def test_the_row_shows_the_last_probe_error_and_when_the_open_circuit_ends(demo: AgentProcess, page: Any) -> None:
    until = demo.status()["ollama"]["circuit_until"]
    assert until > time.time() + 3000
    wanted = clock(until)
    wait_for(lambda: field(page, "ollama", NOTES) == f"circuit open until {wanted}", 10,
             what=lambda: f"ollama's circuit end {wanted} (shows {field(page, 'ollama', NOTES)!r})")
    message = demo.status()["web"]["last_probe_error"]["message"]
    assert message == "sh exit code 7"
    wait_for(lambda: field(page, "web", NOTES).startswith(f"probe: {message} (at "), 10,
             what=lambda: f"web's probe error (shows {field(page, 'web', NOTES)!r})")


def test_the_banner_says_since_when_the_pipeline_is_silent(demo: AgentProcess, page: Any) -> None:
    pipeline = demo.api("GET", "/api/v1/status")["alert_pipeline"]
    assert pipeline["up"] is False and pipeline["heartbeats"] == 0
    since = clock(pipeline["silent_since"])  # as `agent status` says it
    wait_for(lambda: page.locator("#pipeline").is_visible(), 10, what="the banner")
    text = page.locator("#pipeline").inner_text()
    assert text.startswith(f"Alert pipeline silent since {since} — no heartbeat from Alertmanager for "), text
    assert "the agent acts on no alert meanwhile" in text and "When the alert pipeline goes silent" in text


def test_a_time_of_another_day_shows_its_date_as_agent_status_prints_it(demo: AgentProcess, browser: Any) -> None:
    tomorrow = time.time() + 86400  # the browser's clock a day on: today's times are yesterday's to it
    pipeline = demo.api("GET", "/api/v1/status")["alert_pipeline"]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    try:
        tab.clock.set_fixed_time(tomorrow)
        tab.goto(f"{demo.url}/?token={token(demo)}")
        wait_for(lambda: tab.locator("#pipeline").is_visible(), 10, what="the banner")
        since = clock(pipeline["silent_since"], tomorrow)
        assert since.count("-") == 2 and since.endswith(clock(pipeline["silent_since"])), since
        text = tab.locator("#pipeline").inner_text()
        assert text.startswith(f"Alert pipeline silent since {since} — "), text
    finally:
        context.close()


def test_a_running_component_has_no_start_and_a_stopped_one_no_stop(demo: AgentProcess, page: Any) -> None:
    items = open_menu(page, "mcp_server")
    assert "start" not in items and {"restart", "stop", "scale"} <= set(items), items
    demo.api("POST", "/api/v1/components/auto_restart_agents/stop", {})
    wait_for(lambda: field(page, "auto_restart_agents", "state").startswith("stopped"), 15,
             what="the page to show auto_restart_agents stopped")
    page.keyboard.press("Escape")
    items = open_menu(page, "auto_restart_agents")
    assert "stop" not in items and "restart" not in items and "start" in items, items
    # An open circuit: nothing runs, so start and restart (each closes the circuit first); it still wants a
    # replica, so stop stays (it holds the component down).
    page.keyboard.press("Escape")
    items = open_menu(page, "ollama")
    assert {"start", "restart", "stop"} <= set(items), items
    demo.api("POST", "/api/v1/components/auto_restart_agents/start", {})


def test_prometheus_down_shows_as_an_error_in_the_panel(browser: Any, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = {"agent": {"status_page": {"prometheus_url": f"http://127.0.0.1:{port}"}},
              "components": {"web": {"command": ["sleep", "1000"]}}}
    with running_agent(tmp_path, config) as agent:
        doc = agent.api("GET", "/api/v1/alerts")
        assert doc["alerts"] == [] and doc["error"].startswith(f"GET http://127.0.0.1:{port}/api/v1/alerts: Connect")
        assert doc["failures"] >= 1
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        tab = context.new_page()
        try:
            tab.goto(f"{agent.url}/?token={token(agent)}")
            state = tab.locator("#ahead-state")
            wait_for(lambda: state.inner_text().startswith("Cannot read the alerts from Prometheus: GET "), 10,
                     what=lambda: f"the panel to show the error (shows {state.inner_text()!r})")
            assert f"127.0.0.1:{port}" in state.inner_text() and "error" in (state.get_attribute("class") or "")
        finally:
            context.close()
        # Logged once while it lasts, not once per poll.
        warnings = [r for r in agent.log_records() if "cannot read alerts from Prometheus" in r["msg"]]
        assert len(warnings) == 1, warnings
        # ... and `agent status` says it too.
        page = agent.api("GET", "/api/v1/status")["status_page"]
        assert page["alerts_error"].startswith(f"GET http://127.0.0.1:{port}/api/v1/alerts")
        assert page["alerts_failures"] >= 1
        out = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(agent.config_path)],
                             capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "status page: cannot read alerts from Prometheus" in out.stdout and f"127.0.0.1:{port}" in out.stdout


def test_a_reload_that_removes_the_url_clears_the_error_and_the_status_says_when_it_read(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    config = {"agent": {"status_page": {"prometheus_url": url}}, "components": {}}
    with running_agent(tmp_path, config) as agent:
        before = time.time()
        doc = agent.api("GET", "/api/v1/alerts")
        page = agent.api("GET", "/api/v1/status")["status_page"]
        assert page["alerts_error"] == doc["error"] and page["alerts_failures"] == 1
        assert page["alerts_checked_at"] == doc["checked_at"] and before <= page["alerts_checked_at"] <= time.time()
        out = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(agent.config_path)],
                             capture_output=True, text=True, timeout=30, cwd=tmp_path)
        line = next(x for x in out.stdout.splitlines() if x.startswith("status page: cannot read alerts"))
        assert url in line and line.endswith("s ago)") and "(last read " in line, line
        # The URL removed: the old error is over, though no page has polled since.
        config["agent"].pop("status_page")
        agent.config_path.write_text(yaml.safe_dump(config))
        assert agent.api("POST", "/-/reload", {}, timeout=30)["status"] == "applied"
        page = agent.api("GET", "/api/v1/status")["status_page"]
        assert page == {"prometheus_url": None, "alerts_error": None, "alerts_checked_at": None, "alerts_failures": 1}
        assert agent.api("GET", "/api/v1/alerts")["error"] is None
        assert agent.api("GET", "/api/v1/status")["status_page"]["alerts_error"] is None
        out = subprocess.run([sys.executable, "-m", "agent", "status", "-c", str(agent.config_path)],
                             capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert out.returncode == 0 and "cannot read alerts" not in out.stdout, out.stdout


def test_a_url_that_is_not_prometheus_is_an_error_not_a_crash(tmp_path: Path) -> None:
    # The agent's own address: its /api/v1/alerts wants a credential, so the answer is a 401, not alerts.
    port = free_port()
    config = {"agent": {"listen": f"127.0.0.1:{port}", "status_page": {"prometheus_url": f"http://127.0.0.1:{port}/"}},
              "components": {}}
    with running_agent(tmp_path, config) as agent:
        doc = agent.api("GET", "/api/v1/alerts")
        assert doc["error"] == f"GET http://127.0.0.1:{port}/api/v1/alerts: status 401", doc
        assert agent.api("GET", "/api/v1/status")["components"] == []
