"""Build Alertmanager version 4 payloads like Alertmanager 0.25 sends them (see shared fixtures)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.helpers import AgentProcess

FIXTURES = Path(__file__).resolve().parent / "data" / "alertmanager"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def alert(labels: dict[str, str], *, status: str = "firing", annotations: dict[str, str] | None = None,
          fingerprint: str | None = None, starts_at: str = "2026-11-24T03:32:05.205Z") -> dict[str, Any]:
    """One alert, built on the real 0.25 fixture's shape."""
    base = copy.deepcopy(fixture("alertmanager-0.25-webhook-firing.json")["alerts"][0])
    base["status"] = status
    base["labels"] = {"alertname": "OrchestratorTest", "severity": "warning", **labels}
    base["annotations"] = {"summary": "test", **(annotations or {})}
    base["fingerprint"] = fingerprint or uuid.uuid4().hex[:16]
    base["startsAt"] = starts_at
    if status == "resolved":
        base["endsAt"] = "2026-11-24T03:40:05.205Z"
    return base


def payload(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    body = fixture("alertmanager-0.25-webhook-firing.json")
    body["alerts"] = list(alerts)
    body["status"] = status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved")
    common = dict(alerts[0]["labels"]) if alerts else {}
    body["commonLabels"] = common
    body["groupLabels"] = {"alertname": common.get("alertname", "")}
    return body


def deliver(agent: AgentProcess, *alerts: dict[str, Any]) -> list[dict[str, Any]]:
    """POST one payload of `alerts` to a running agent's webhook with its token; the per-alert results."""
    token = (agent.state_dir / "webhook.token").read_text().strip()
    r = httpx.post(agent.url + "/webhook/alertmanager", json=payload(*alerts), timeout=10,
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    return results
