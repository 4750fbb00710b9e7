"""Webhook throughput: POST /webhook/alertmanager with Alertmanager v4 payloads and a bearer token.

The contract: 401 without `Authorization: Bearer <token>` (the token in agent.webhook.bearer_token_file),
200 with a JSON body of per-alert results otherwise. The load is a fixed list of requests sent once
over a few keep-alive connections: new firing alerts (a unique fingerprint each, `action: restart` on
one of the components; the remediation cooldown turns most into no-ops after the first), duplicates of
earlier ones (same fingerprint and startsAt), alerts the agent must reject (unknown component, an
action the component does not allow) and requests with a wrong token (401). When the endpoint answers
404 the row is reported as not available.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.configs import Setup
from bench.httpload import build_request, client_loop, run_load
from bench.launch import Fleet, start_and_wait
from bench.stats import summary_ms

# shared/ sits beside the repository (also in CI's fresh clone).
FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
PATH = "/webhook/alertmanager"
COMPONENTS = 4
MIX = {"new": 0.60, "duplicate": 0.25, "rejected": 0.10, "unauthorized": 0.05}

# Used when the shared fixture is not on this machine: the same shape (Alertmanager 0.25, version 4).
_FALLBACK: dict[str, Any] = {
    "receiver": "webhook", "status": "firing", "version": "4", "groupKey": "{}:{alertname=\"BenchAlert\"}",
    "truncatedAlerts": 0, "groupLabels": {"alertname": "BenchAlert"}, "commonLabels": {},
    "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
    "alerts": [{
        "status": "firing", "labels": {"alertname": "BenchAlert", "severity": "critical"},
        "annotations": {"summary": "bench"}, "startsAt": "2026-11-24T03:32:05.205Z",
        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": "0",
    }],
}


@dataclass
class WebhookResult:
    available: bool
    note: str = ""
    requests: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    throughput: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    alert_results: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    agent_rss: int = 0


def load_template() -> dict[str, Any]:
    path = FIXTURES / "alertmanager-0.25-webhook-firing.json"
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return copy.deepcopy(_FALLBACK)


def _payload(template: dict[str, Any], fingerprint: str, component: str, action: str) -> bytes:
    doc = copy.deepcopy(template)
    alert = doc["alerts"][0]
    alert["fingerprint"] = fingerprint
    alert["labels"] = {**alert["labels"], "alertname": "BenchAlert", "component": component, "action": action}
    doc["alerts"] = [alert]
    doc["commonLabels"] = dict(alert["labels"])
    return json.dumps(doc).encode()


def build_requests(count: int, host: str, token: str, seed: int) -> tuple[list[bytes], dict[str, int]]:
    """`count` requests in the MIX proportions; duplicates always come after their original."""
    rng = random.Random(seed)
    template = load_template()
    good = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bad = {"Authorization": "Bearer not-the-token", "Content-Type": "application/json"}
    bodies: list[bytes] = []
    requests: list[bytes] = []
    kinds: Counter[str] = Counter()
    names, weights = zip(*MIX.items(), strict=True)
    for i in range(count):
        kind = rng.choices(names, weights)[0]
        if kind == "duplicate" and not bodies:
            kind = "new"
        if kind == "new":
            body = _payload(template, f"{i:016x}", f"c{i % COMPONENTS}", "restart")
            bodies.append(body)
        elif kind == "duplicate":
            body = bodies[rng.randrange(max(0, len(bodies) - 500), len(bodies))]
        elif kind == "rejected":
            if rng.random() < 0.5:
                body = _payload(template, f"r{i:015x}", "no_such_component", "restart")
            else:
                body = _payload(template, f"r{i:015x}", f"c{i % COMPONENTS}", "scale_to")
        else:
            body = _payload(template, f"u{i:015x}", f"c{i % COMPONENTS}", "restart")
        kinds[kind] += 1
        requests.append(build_request("POST", PATH, host, body, bad if kind == "unauthorized" else good))
    return requests, dict(kinds)


def _alert_results(bodies: list[bytes]) -> dict[str, int]:
    """Count values of any "result" (or "outcome"/"status" inside per-alert lists) in the responses."""
    counts: Counter[str] = Counter()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key in ("result", "outcome"):
                if isinstance(value.get(key), str):
                    counts[value[key]] += 1
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for body in bodies:
        try:
            walk(json.loads(body))
        except ValueError:
            counts["(not JSON)"] += 1
    return dict(counts)


def webhook_load(root: Path, count: int, concurrency: int, time_limit: float, seed: int) -> WebhookResult:
    """Start an agent with a bearer token and send the mixed load; 404 means not available."""
    token = secrets.token_hex(16)
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "webhook.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)  # the agent refuses a token file others may read
    fleet = Fleet(root)
    try:
        setup = Setup("agent", COMPONENTS, webhook_token_file=token_file)
        inst = fleet.add(setup)
        # Only restart is allowed, so a scale_to alert is one the agent must reject.
        doc = json.loads(inst.config.read_text())
        for comp in doc["components"].values():
            comp["remediation"] = {"allowed_actions": ["restart"]}
        inst.config.write_text(json.dumps(doc, indent=1))
        start_and_wait([inst], timeout=60.0)
        probe = httpx.post(inst.url + PATH, content=b"{}", timeout=10.0)
        if probe.status_code in (404, 405):
            return WebhookResult(False, f"POST {PATH} answered {probe.status_code}: not available")
        note = "" if probe.status_code == 401 else f"without a token the endpoint answered {probe.status_code}, not 401"
        requests, kinds = build_requests(count, f"127.0.0.1:{inst.port}", token, seed)
        with asyncio.Runner(loop_factory=client_loop()) as runner:
            load = runner.run(run_load("127.0.0.1", inst.port, requests, concurrency, time_limit,
                                       keep_bodies=len(requests)))
        inst.check_alive()
        done = len(load.latencies)
        return WebhookResult(
            True, note, requests=done, kinds=kinds,
            throughput=done / load.elapsed if load.elapsed else 0.0,
            latency_ms=summary_ms(load.latencies),
            statuses={str(k): v for k, v in sorted(load.statuses.items())},
            alert_results=_alert_results([b for b in load.bodies if b.startswith(b"{")]),
            errors=load.errors,
            agent_rss=int(psutil.Process(inst.pid).memory_info().rss),
        )
    finally:
        fleet.close()
