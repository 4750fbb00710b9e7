"""Bounded property-based fuzzing of the webhook and the control API: never a 5xx, never an action."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import AgentProcess, wait_for
from tests.metricsutil import scrape

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                                                        max_size=4), max_leaves=12)
label_text = st.text(max_size=30) | st.sampled_from(["restart", "scale_up", "web", "start", "../x", "$(id)", ""])
alert_like = st.fixed_dictionaries({
    "status": st.sampled_from(["firing", "resolved", "other"]) | st.text(max_size=5),
    "labels": st.dictionaries(st.sampled_from(["action", "component", "replica", "step", "node", "alertname"])
                              | st.text(max_size=8), label_text, max_size=5),
    "annotations": st.dictionaries(st.sampled_from(["desired_replicas", "summary"]), label_text, max_size=2),
    "startsAt": st.text(max_size=30), "fingerprint": st.text(max_size=20),
})
payload_like = st.fixed_dictionaries({
    "version": st.sampled_from(["4", "3", 4]), "status": st.sampled_from(["firing", "resolved", "x"]),
    "receiver": st.text(max_size=10), "groupKey": st.text(max_size=10),
    "alerts": st.lists(alert_like, max_size=4),
}) | json_value


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    # "web" allows no action at all: nothing the fuzzer sends may ever execute.
    proc = AgentProcess(tmp, {"components": {"web": {"command": ["sleep", "1000"],
                                                     "remediation": {"allowed_actions": []}}}})
    proc.start()
    wait_for(lambda: (proc.state_dir / "control.token").exists(), 5)
    yield proc
    proc.stop()


def executed(agent: AgentProcess) -> float:
    return sum(v for (name, labels), v in scrape(agent.url).items()
               if name == "orchestrator_remediation_actions_total" and ("result", "executed") in labels)


@FUZZ
@given(body=payload_like, raw=st.booleans())
def test_webhook_never_5xx_never_acts(agent: AgentProcess, body: Any, raw: bool) -> None:
    token = (agent.state_dir / "webhook.token").read_text().strip()
    content = json.dumps(body).encode()
    if raw:
        content = content[: max(1, len(content) // 2)]  # truncated JSON
    r = httpx.post(agent.url + "/webhook/alertmanager", content=content, timeout=10,
                   headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert r.status_code in (200, 400, 422), r.text
    assert executed(agent) == 0


@FUZZ
@given(path=st.sampled_from(["/api/v1/components/{}/restart", "/api/v1/components/{}/scale",
                             "/api/v1/components/{}/stop", "/api/v1/components/{}/start",
                             "/api/v1/autonomy", "/api/v1/simulate", "/api/v1/history", "/api/v1/status"]),
       name=st.text(min_size=1, max_size=20),
       body=json_value, with_token=st.booleans())
def test_control_api_never_5xx(agent: AgentProcess, path: str, name: str, body: Any, with_token: bool) -> None:
    token = (agent.state_dir / "control.token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"} if with_token else {}
    if name == "web":
        name = "web2"  # never touch the one real component
    url = agent.url + path.format(quote(name, safe=""))
    method = "GET" if path.endswith(("history", "status")) else "POST"
    if path.endswith("autonomy") and isinstance(body, dict) and body.get("mode") in ("off", "dry-run", "on"):
        body = {"mode": "on"}
    r = httpx.request(method, url, json=body, headers=headers, timeout=10)
    assert r.status_code < 500, r.text
    if not with_token:
        assert r.status_code == 401
    assert executed(agent) == 0
