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

import copy
import json
import random
import resource
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import httpload
from bench.configs import Setup
from bench.httpload import build_request
from bench.launch import Fleet, Instance, start_and_wait
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
    components: int = COMPONENTS
    kinds: dict[str, int] = field(default_factory=dict)
    throughput: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    alert_results: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    agent_rss: int = 0
    agent_cpu: float = 0.0  # cores the agent used during the load (1.0: one core busy throughout)
    client_cpu: float = 0.0  # cores the load client used meanwhile
    ceiling: float = 0.0  # req/s of the same client against a server that answers at once (bench/httpload.py)
    ceiling_latency_ms: dict[str, float] = field(default_factory=dict)


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


def write_token(root: Path) -> tuple[str, Path]:
    """A random bearer token in root/webhook.token, mode 0600 (the agent refuses one others may read)."""
    token = secrets.token_hex(16)
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "webhook.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return token, token_file


def start_agent(fleet: Fleet, root: Path, components: int = COMPONENTS) -> tuple[Instance, str]:
    """An agent with a bearer token whose components allow only `restart` (a `scale_to` alert is one it
    must reject); returns it once its components run, and the token."""
    token, token_file = write_token(root)
    inst = fleet.add(Setup("agent", components, webhook_token_file=token_file))
    doc = json.loads(inst.config.read_text())
    for comp in doc["components"].values():
        comp["remediation"] = {"allowed_actions": ["restart"]}
    inst.config.write_text(json.dumps(doc, indent=1))
    start_and_wait([inst], timeout=60.0)
    return inst, token


def webhook_load(root: Path, count: int, concurrency: int, time_limit: float, seed: int,
                 components: int = COMPONENTS) -> WebhookResult:
    """Start an agent with a bearer token and send the mixed load; 404 means not available.

    The agent runs `components` components; the alerts name the first COMPONENTS of them in turn.

    Then the same requests go to a server that answers each at once with a prepared response
    (bench/httpload.py): the most this client sends on this machine, reported beside the agent's figure.
    """
    fleet = Fleet(root)
    try:
        inst, token = start_agent(fleet, root, components)
        probe = httpx.post(inst.url + PATH, content=b"{}", timeout=10.0)
        if probe.status_code in (404, 405):
            return WebhookResult(False, f"POST {PATH} answered {probe.status_code}: not available")
        note = "" if probe.status_code == 401 else f"without a token the endpoint answered {probe.status_code}, not 401"
        requests, kinds = build_requests(count, f"127.0.0.1:{inst.port}", token, seed)
        agent = psutil.Process(inst.pid)
        agent_before, client_before = _cpu(agent.cpu_times()), _own_cpu()
        load = httpload.load(inst.port, requests, concurrency, time_limit, keep_bodies=len(requests))
        agent_cpu, client_cpu = _cpu(agent.cpu_times()) - agent_before, _own_cpu() - client_before
        inst.check_alive()
        rss = int(agent.memory_info().rss)
    finally:
        fleet.close()
    done = len(load.latencies)
    ceiling = httpload.ceiling(requests, concurrency, time_limit)
    return WebhookResult(
        True, note, requests=done, components=components, kinds=kinds,
        throughput=done / load.elapsed if load.elapsed else 0.0,
        latency_ms=summary_ms(load.latencies),
        statuses={str(k): v for k, v in sorted(load.statuses.items())},
        alert_results=_alert_results([b for b in load.bodies if b.startswith(b"{")]),
        errors=load.errors,
        agent_rss=rss,
        agent_cpu=agent_cpu / load.elapsed if load.elapsed else 0.0,
        client_cpu=client_cpu / load.elapsed if load.elapsed else 0.0,
        ceiling=len(ceiling.latencies) / ceiling.elapsed if ceiling.elapsed else 0.0,
        ceiling_latency_ms=summary_ms(ceiling.latencies),
    )


def _cpu(times: Any) -> float:
    return float(times.user + times.system)


def _own_cpu() -> float:
    """This process's CPU seconds (the load client runs in it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- burst: many deliveries of many alerts at once -------------------------------------------------

BURST_CONCURRENCY = 64


@dataclass
class BurstResult:
    available: bool
    note: str = ""
    requests: int = 0
    alerts: int = 0
    answered: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    alert_results: dict[str, int] = field(default_factory=dict)
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    dedupe_keys: float = -1.0
    dedupe_max_entries: int = 0
    journal_bytes: int = 0
    evictions: float = 0.0
    executed: float = 0.0


def build_burst(requests: int, alerts: int, host: str, token: str, seed: int) -> list[bytes]:
    """`alerts` distinct firing `start` alerts, each delivered requests/alerts times, in shuffled order.

    `start` acts on a running component too (it only makes sure its replicas run), so every distinct
    alert records a dedupe key and every later delivery of it must be a duplicate.
    """
    rng = random.Random(seed)
    template = load_template()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [_payload(template, f"b{i:015x}", f"c{i % COMPONENTS}", "start") for i in range(alerts)]
    order = [bodies[i % alerts] for i in range(requests)]
    rng.shuffle(order)
    return [build_request("POST", PATH, host, body, headers) for body in order]


def _scrape_value(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10.0).text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def burst_load(root: Path, requests: int, alerts: int, max_entries: int, time_limit: float,
               seed: int) -> BurstResult:
    """A burst of webhook deliveries over BURST_CONCURRENCY connections; RSS sampled throughout."""
    import threading

    token, token_file = write_token(root)
    fleet = Fleet(root)
    try:
        inst = fleet.add(Setup("agent", COMPONENTS, webhook_token_file=token_file))
        doc = json.loads(inst.config.read_text())
        doc["agent"]["webhook"]["dedupe_max_entries"] = max_entries
        for comp in doc["components"].values():
            comp["remediation"] = {"allowed_actions": ["start"], "cooldown": 0}
        inst.config.write_text(json.dumps(doc, indent=1))
        start_and_wait([inst], timeout=60.0)
        proc = psutil.Process(inst.pid)
        before = int(proc.memory_info().rss)
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], int(proc.memory_info().rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        prepared = build_burst(requests, alerts, f"127.0.0.1:{inst.port}", token, seed)
        try:
            load = httpload.load(inst.port, prepared, BURST_CONCURRENCY, time_limit, keep_bodies=len(prepared))
        finally:
            stop.set()
            sampler.join(5.0)
        inst.check_alive()
        pause = threading.Event()  # never set: paces the bounded wait below
        for _ in range(200):
            # Accepted actions are recorded when they finish, in the background: wait (bounded) until
            # every answered request's alert has its decision.
            if _scrape_value(inst.url, "orchestrator_remediation_actions_total", action="start") >= len(
                    load.latencies):
                break
            pause.wait(0.05)
        journal = Path(doc["agent"]["state_dir"]) / "dedupe.jsonl"
        return BurstResult(
            True, requests=len(prepared), alerts=alerts, answered=len(load.latencies), errors=load.errors,
            elapsed=load.elapsed, latency_ms=summary_ms(load.latencies),
            statuses={str(k): v for k, v in sorted(load.statuses.items())},
            alert_results=_alert_results([b for b in load.bodies if b.startswith(b"{")]),
            rss_before=before, rss_peak=peak[0], rss_after=int(proc.memory_info().rss),
            dedupe_keys=_scrape_value(inst.url, "orchestrator_dedupe_keys"), dedupe_max_entries=max_entries,
            journal_bytes=journal.stat().st_size if journal.exists() else 0,
            evictions=_scrape_value(inst.url, "orchestrator_dedupe_evictions_total"),
            executed=_scrape_value(inst.url, "orchestrator_remediation_actions_total", action="start",
                                   result="executed"),
        )
    finally:
        fleet.close()
