"""The loop watches itself, end to end on the shipped files: Prometheus fires OrchestratorWatchdog,
Alertmanager's heartbeat route delivers it to the agent, and the agent's `orchestrator_alert_pipeline_up`
says whether the chain still delivers. A wrong webhook token in Alertmanager breaks the chain: the
gauge turns 0 after `agent.webhook.heartbeat_timeout`, and the failed deliveries page the human receiver.
Restoring the token mends it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import wait_for
from tests.metricsutil import scrape, value
from tests.stack import Stack, running_stack

pytestmark = [pytest.mark.stack, pytest.mark.slow]

# Alertmanager repeats on this test's clock every 3 s (tests/stack.py alertmanager_config): a heartbeat
# every 3-4 s, so 10 s is two missed heartbeats and some.
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("pipeline"), agent={"webhook": {"heartbeat_timeout": f"{TIMEOUT:g}s"}},
                       only=set()) as s:
        yield s


def metric(stack: Stack, name: str, **labels: str) -> float | None:
    return value(scrape(stack.agent.url), name, **labels)


def use_token_file(stack: Stack, token: Path) -> None:
    """Point Alertmanager's agent-webhook receiver at another token file and reload Alertmanager."""
    path = stack.tmp / "alertmanager.yml"
    doc = yaml.safe_load(path.read_text())
    hooks = [hook for receiver in doc["receivers"] for hook in receiver.get("webhook_configs", [])
             if hook["url"].endswith("/webhook/alertmanager")]
    assert hooks, "no receiver delivers to the agent's webhook"
    for hook in hooks:
        hook["http_config"]["authorization"]["credentials_file"] = str(token)
    path.write_text(yaml.safe_dump(doc))
    r = httpx.post(stack.am + "/-/reload", timeout=10)
    assert r.status_code == 200, r.text


def test_the_heartbeat_keeps_the_pipeline_up_a_wrong_token_pages_a_human_and_the_fix_mends_it(stack: Stack) -> None:
    # 1. The heartbeat arrives through Prometheus -> Alertmanager -> webhook, and keeps the gauge at 1 over a
    #    window longer than the timeout (every scrape of it in Prometheus was 1).
    wait_for(lambda: (metric(stack, "orchestrator_alert_pipeline_heartbeats_total") or 0) >= 2, 60, 0.2,
             "two heartbeats")
    stack.note("heartbeats arrive")
    window = f"[{int(TIMEOUT * 2)}s]"
    wait_for(lambda: (stack.scalar(f"count_over_time(orchestrator_alert_pipeline_up{window})") or 0) >= TIMEOUT * 2 - 2,
             60, 0.5, "Prometheus to hold the gauge over twice the timeout")
    assert stack.scalar(f"min_over_time(orchestrator_alert_pipeline_up{window})") == 1
    assert stack.firing("OrchestratorWatchdog")
    pipeline = stack.agent.api("GET", "/api/v1/status")["alert_pipeline"]
    assert pipeline["up"] is True and pipeline["silent_since"] is None
    assert pipeline["timeout_seconds"] == TIMEOUT
    # A heartbeat is recorded and counted, never a history entry, never an action.
    history = stack.agent.api("GET", "/api/v1/history?all=1&limit=1000")["history"]
    assert not [e for e in history if e["alertname"] == "OrchestratorWatchdog"]
    assert not stack.received("OrchestratorWatchdog"), "the heartbeat never goes to people"
    assert not stack.firing("OrchestratorAlertPipelineSilent")

    # 2. Alertmanager gets a token the agent does not know: every delivery is refused with 401.
    wrong = stack.tmp / "wrong.token"
    wrong.write_text("not-the-agent's-token\n")
    wrong.chmod(0o600)
    heartbeats = metric(stack, "orchestrator_alert_pipeline_heartbeats_total") or 0
    use_token_file(stack, wrong)
    stack.note("Alertmanager reloaded with a wrong webhook token")
    wait_for(lambda: (metric(stack, "orchestrator_webhook_requests_total", code="401") or 0) >= 1, 30, 0.2,
             "the agent to refuse a delivery")
    stack.note("the agent answers 401")
    wait_for(lambda: metric(stack, "orchestrator_alert_pipeline_up") == 0, TIMEOUT + 30, 0.2,
             "the pipeline gauge to turn 0 after the timeout")
    stack.note("orchestrator_alert_pipeline_up 0")
    # Refused deliveries are not heartbeats (at most one was on its way when the token changed).
    assert (metric(stack, "orchestrator_alert_pipeline_heartbeats_total") or 0) <= heartbeats + 1
    pipeline = stack.agent.api("GET", "/api/v1/status")["alert_pipeline"]
    assert pipeline["up"] is False
    assert pipeline["silent_since"] is not None and pipeline["silent_since"] == pipeline["last_heartbeat"]

    # ... and people hear of it: Alertmanager's failed notifications, and the agent's silent pipeline.
    failed = wait_for(lambda: stack.received("OrchestratorAlertmanagerNotificationsFailing"), 90, 0.5,
                      "the failed-delivery alert to reach the human receiver")
    stack.note("OrchestratorAlertmanagerNotificationsFailing reached the human receiver")
    assert failed[0]["status"] == "firing" and failed[0]["receiver"] == "human"
    assert "action" not in failed[0]["labels"]
    silent = wait_for(lambda: stack.received("OrchestratorAlertPipelineSilent"), 90, 0.5,
                      "the silent-pipeline alert to reach the human receiver")
    stack.note("OrchestratorAlertPipelineSilent reached the human receiver")
    assert silent[0]["receiver"] == "human" and "action" not in silent[0]["labels"]
    in_am = stack.am_alerts("OrchestratorAlertmanagerNotificationsFailing")
    assert in_am and all([r["name"] for r in a["receivers"]] == ["human"] for a in in_am)

    # 3. The right token again: the next heartbeat brings the gauge back.
    use_token_file(stack, stack.agent.state_dir / "webhook.token")
    stack.note("Alertmanager reloaded with the agent's token")
    wait_for(lambda: metric(stack, "orchestrator_alert_pipeline_up") == 1, 60, 0.2, "the pipeline gauge back at 1")
    stack.note("orchestrator_alert_pipeline_up 1 again")
    after = stack.agent.api("GET", "/api/v1/status")["alert_pipeline"]
    assert after["up"] is True and after["silent_since"] is None
    assert after["last_heartbeat"] > pipeline["last_heartbeat"]
    assert (metric(stack, "orchestrator_alert_pipeline_silences_total") or 0) == 1
