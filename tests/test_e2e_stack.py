"""End to end with the real binaries on loopback: fault -> rule -> Alertmanager -> webhook -> action."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import httpx
import pytest

from agent.todos import transactions as todos
from agent.todos.store import open_store
from tests.helpers import http_ok, wait_for
from tests.metricsutil import scrape, value
from tests.stack import Stack, running_stack

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("e2e")) as s:
        yield s


def counter(stack: Stack, component: str, action: str, result: str) -> float:
    return value(scrape(stack.agent.url), "orchestrator_remediation_actions_total", component=component,
                 action=action, result=result) or 0.0


def test_hung_component_is_restarted_through_alertmanager(stack: Stack) -> None:
    # Not pre-created: the reason appears at its first restart (docs/metrics.md, "Series per component").
    before = value(scrape(stack.agent.url), "orchestrator_component_restarts_total", component="hungry",
                   reason="alert")
    assert before is None
    assert httpx.post(f"http://127.0.0.1:{stack.demo_port}/hang", timeout=2).status_code == 200
    stack.note("hungry told to hang")
    wait_for(lambda: stack.firing("OrchestratorComponentDown", component="hungry"), 60, 0.2, "the alert to fire")
    stack.note("OrchestratorComponentDown firing in Prometheus")
    seen = wait_for(lambda: [a for a in stack.am_alerts("OrchestratorComponentDown")
                             if a["labels"].get("component") == "hungry"], 30, 0.2, "Alertmanager to have it")
    assert seen[0]["labels"]["action"] == "restart"
    assert "agent-webhook" in [r["name"] for r in seen[0]["receivers"]]
    wait_for(lambda: counter(stack, "hungry", "restart", "executed") == 1, 60, 0.2, "the webhook restart")
    stack.note("agent executed restart of hungry")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{stack.demo_port}/health"), 30, 0.2, "the new replica")
    assert value(scrape(stack.agent.url), "orchestrator_component_restarts_total", component="hungry",
                 reason="alert") == 1
    assert value(scrape(stack.agent.url), "orchestrator_component_restarts_total", component="hungry",
                 reason="probe") == 0
    wait_for(lambda: not stack.firing("OrchestratorComponentDown", component="hungry"), 60, 0.2, "it to resolve")
    stack.note("OrchestratorComponentDown resolved")
    assert counter(stack, "hungry", "restart", "executed") == 1, "acted exactly once"


def test_crash_loop_opens_the_circuit_and_pages_a_human(stack: Stack) -> None:
    wait_for(lambda: stack.firing("OrchestratorComponentCircuitOpen", component="crashy"), 60, 0.2)
    stack.note("OrchestratorComponentCircuitOpen firing for crashy")
    alerts = wait_for(lambda: stack.am_alerts("OrchestratorComponentCircuitOpen"), 30, 0.2)
    assert alerts[0]["labels"]["severity"] == "critical"
    assert "action" not in alerts[0]["labels"]
    assert [r["name"] for r in alerts[0]["receivers"]] == ["human"]
    # ... and the page reaches the human receiver, once per group however often Prometheus resends.
    got = wait_for(lambda: stack.received("OrchestratorComponentCircuitOpen", component="crashy"), 30, 0.2,
                   "the human receiver to get the page")
    stack.note("OrchestratorComponentCircuitOpen reached the human receiver")
    assert got[0]["status"] == "firing" and got[0]["receiver"] == "human"
    assert got[0]["labels"]["severity"] == "critical" and "action" not in got[0]["labels"]
    assert got[0]["annotations"]["runbook_url"].endswith("#orchestratorcomponentcircuitopen")
    assert not stack.received("OrchestratorComponentDown", action="restart"), "actions go to the agent only"
    for action in ("restart", "start", "scale_up", "scale_to"):
        assert counter(stack, "crashy", action, "executed") == 0
    assert value(scrape(stack.agent.url), "orchestrator_component_state", component="crashy",
                 state="circuit_open") == 1


def test_a_surge_reaches_capacity_in_two_deliveries_and_scales_down_after_the_stabilisation(stack: Stack) -> None:
    """400 todos in one transaction: the rules ask for more than max at once, and the agent goes 1 -> 5 -> 8
    (max(max_step 4, 100 %) per delivery) while most of the surge still waits. Down again only after the
    stabilisation (50 s) since the last scale-up, never leaving more todos than the remaining replicas work
    off within the drain target (10 s at 0.25 s a todo: 40 per replica), back to min; the direction
    changes once."""
    def desired() -> int:
        got = value(scrape(stack.agent.url), "orchestrator_component_desired_replicas", component="todo_worker")
        return int(got or 0)

    def pending() -> int:
        return len(todos.list_todos(stack.db, "pending", 10_000))

    seen: list[tuple[int, float, int]] = []  # (desired, monotonic time, pending) at each change

    def track() -> int:
        d = desired()
        if not seen or seen[-1][0] != d:
            p = pending()
            seen.append((d, time.monotonic(), p))
            stack.note(f"todo_worker desired={d} pending={p}")
        return d

    assert track() == 1
    store = open_store(str(stack.db))
    try:
        store.add_many([f"job {i}" for i in range(400)], "normal", ["todo_processing"])
    finally:
        store.close()
    stack.note("400 todos added")
    wait_for(lambda: track() == 8, 120, 0.1, "the worker to reach its max")
    at_capacity = seen[-1][2]
    wait_for(lambda: track() == 1, 300, 0.2, "the scale-down to min")
    counts = [d for d, _, _ in seen]
    assert counts[:3] == [1, 5, 8], f"1 -> 5 -> 8: two deliveries: {seen}"
    assert at_capacity >= 100, f"capacity while a quarter of the surge still waits: {at_capacity} pending"
    downs = seen[3:]
    assert downs and all(b[0] < a[0] for a, b in itertools.pairwise(seen[2:])), f"one change of direction: {seen}"
    assert downs[0][1] - seen[2][1] >= 50, "not before the stabilisation after the last scale-up"
    for count, _, waiting in downs:
        assert waiting <= count * 40, f"scaled down to {count} with {waiting} pending: more than the drain target"
    # An action is counted when it is done: a scale-down after its replicas stopped (grace 3 s), after the
    # desired count the test saw changed.
    wait_for(lambda: counter(stack, "todo_worker", "scale_to", "executed") >= len(seen) - 1, 30, 0.2,
             "the last scale's action to be counted")
    assert counter(stack, "todo_worker", "scale_to", "executed") == len(seen) - 1
    assert counter(stack, "todo_worker", "scale_down", "executed") == 0


def test_every_dashboard_and_rule_query_runs_on_the_live_prometheus(stack: Stack) -> None:
    from tests.queries import dashboard_queries, rule_queries

    errors, empty = [], []
    for source, expr, must_have_data in [*dashboard_queries(), *rule_queries()]:
        try:
            result = stack.query(expr)
        except AssertionError as exc:
            errors.append(f"{source}: {exc}")
            continue
        if must_have_data and not result:
            empty.append(f"{source}: {expr}")
    assert not errors, "\n".join(errors)
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_the_overviews_firing_alerts_leave_out_the_heartbeat(stack: Stack) -> None:
    # OrchestratorWatchdog always fires (the alert pipeline's heartbeat): counted, the panel never read 0.
    import json

    from tests.helpers import ROOT

    overview = json.loads((ROOT / "grafana" / "dashboards" / "orchestrator-overview.json").read_text())
    panel = next(p for p in overview["panels"] if p.get("title") == "Firing orchestrator alerts")
    expr = panel["targets"][0]["expr"]
    wait_for(lambda: stack.firing("OrchestratorWatchdog"), 30, 0.1, "the heartbeat to fire")
    others = 'count(ALERTS{alertname=~"Orchestrator.*",alertname!="OrchestratorWatchdog",alertstate="firing"})'
    # One query, one evaluation time: the panel minus every other firing orchestrator alert.
    assert stack.scalar(f"({expr}) - ({others} or vector(0))") == 0.0


def test_promql_cookbook_runs_on_the_live_prometheus(stack: Stack) -> None:
    """Every ```promql block of docs/promql.md runs; those marked `# must have data` answer after the scenarios.

    The doc's 15 s scrape interval (subquery steps, offsets, samples -> seconds) is made the stack's 1 s;
    its [1h] / [24h] windows stay: they cover the whole short run.
    """
    import math

    from tests.test_promql_doc import cookbook_queries

    queries = cookbook_queries()
    assert queries, "no ```promql block in docs/promql.md"
    errors, empty = [], []
    for q in queries:
        try:
            result = stack.query(q.short_clock)
        except AssertionError as exc:
            errors.append(f"docs/promql.md:{q.line}: {exc}")
            continue
        if q.must_have_data and not any(math.isfinite(float(r["value"][1])) for r in result):
            empty.append(f"docs/promql.md:{q.line}:\n{q.short_clock}")
    assert not errors, "\n".join(errors)
    assert not empty, "marked `# must have data` but no finite value:\n" + "\n".join(empty)


def test_every_panel_link_resolves_and_drill_down_opens_a_populated_component_dashboard(stack: Stack) -> None:
    """Runbook links and drill-down targets exist; the labels a drill-down link reads are on the live
    series, and the component dashboard with those variables set shows that component."""
    import json
    import re

    from agent.stack.dashboards import DRILL_DOWN
    from tests.queries import _substitute
    from tests.stack_links import DASHBOARDS, link_problems, panel_links

    assert link_problems(panel_links()) == []
    overview = {p["title"]: p for p in json.loads((DASHBOARDS / "orchestrator-overview.json").read_text())["panels"]}
    component_dash = json.loads((DASHBOARDS / "orchestrator-component.json").read_text())
    (var,) = [v for v in component_dash["templating"]["list"] if v["name"] == "component"]
    match = re.fullmatch(r"label_values\((.+), component\)", var["definition"])
    assert match, var["definition"]
    offered = {r["metric"]["component"] for r in stack.query(_substitute(match.group(1)))}
    seen: dict[str, dict[str, str]] = {}
    for title in DRILL_DOWN:
        link = overview[title]["fieldConfig"]["defaults"]["links"][0]["url"]
        wanted = set(re.findall(r"\$\{__(?:field\.labels|data\.fields)\.(\w+)\}", link))
        assert wanted == {"component", "instance", "job"}, link
        for target in overview[title]["targets"]:
            for series in stack.query(_substitute(target["expr"])):
                labels = series["metric"]
                if "component" in labels:
                    assert wanted <= labels.keys(), f"{title}: {labels}"
                    assert labels["component"] in offered, f"{title}: {labels['component']} not in {offered}"
                    seen[labels["component"]] = labels
    assert {"hungry", "todo_worker"} <= seen.keys(), sorted(seen)
    labels = seen["hungry"]
    (replicas,) = [p for p in component_dash["panels"] if p["title"] == "Replicas: running, desired, min, max"]
    # The raw series (replicas, desired, min, max); the backlog's recordings exist only for components
    # with capabilities, which hungry has none of.
    raw = [t["expr"] for t in replicas["targets"] if t["expr"].startswith("orchestrator_")]
    assert len(raw) == 4, raw
    for expr in raw:
        expr = (expr.replace("$component", labels["component"]).replace("$instance", labels["instance"])
                .replace("$job", labels["job"]))
        assert stack.query(_substitute(expr)), f"component dashboard for hungry: no data for {expr}"
