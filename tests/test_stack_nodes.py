"""`agent stack generate --nodes`: targets and routing for several agents from one list, checked by promtool
and amtool, then live: a real Prometheus discovers every agent with its node label, and a real
Alertmanager delivers a node's action to that node's receiver only, with its token.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import end_processes, free_port, wait_for
from tests.stackbin import require_binary, spawn_alertmanager, spawn_prometheus

ROOT = Path(__file__).resolve().parent.parent


def agent(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def node_list(tmp: Path, ports: dict[str, int], **extra: Any) -> Path:
    (tmp / "tokens").mkdir(exist_ok=True)
    for name in ports:
        (tmp / "tokens" / f"{name}.token").write_text(f"token-of-{name}-0123456789\n")
    doc = {"nodes": [{"name": n, "address": f"127.0.0.1:{p}", "webhook_token_file": f"tokens/{n}.token"}
                     for n, p in ports.items()], **extra}
    path = tmp / "nodes.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def generate(tmp: Path, nodes: Path) -> Path:
    """The operator's way: the exported stack, then the list's configs into its prometheus/ folder (over the
    single-agent ones), from the base configs the package ships, run outside any checkout."""
    stack = tmp / "stack"
    if not stack.exists():
        done = agent("stack", "export", str(stack), cwd=tmp)
        assert done.returncode == 0, done.stderr
    out = stack / "prometheus"
    done = agent("stack", "generate", "--nodes", str(nodes), "--out", str(out), cwd=tmp)
    assert done.returncode == 0, done.stderr
    return out


def test_the_generated_configs_pass_promtool_and_amtool_and_route_each_node_to_its_agent(tmp_path: Path) -> None:
    promtool, amtool = require_binary("promtool"), require_binary("amtool")
    (tmp_path / "tls").mkdir()
    for name in ("ca.crt", "client.crt", "client.key", "metrics.password"):
        (tmp_path / "tls" / name).write_text("x")
    nodes = node_list(tmp_path, {"a": 9471, "b": 9472, "c": 9473},
                      tls={"ca_file": "tls/ca.crt", "cert_file": "tls/client.crt", "key_file": "tls/client.key"},
                      basic_auth={"username": "prometheus", "password_file": "tls/metrics.password"},
                      alertmanagers=["127.0.0.1:9093", "127.0.0.1:9094"])
    out = generate(tmp_path, nodes)

    check = subprocess.run([promtool, "check", "config", str(out / "prometheus.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    check = subprocess.run([amtool, "check-config", str(out / "alertmanager.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    def route(*labels: str) -> str:
        done = subprocess.run([amtool, "config", "routes", "test", f"--config.file={out / 'alertmanager.yml'}",
                               *labels], capture_output=True, text=True)
        return done.stdout.strip()

    assert route("action=restart", "node=b") == "agent-b"
    assert route("action=scale_down", "node=c") == "agent-c"
    assert route("action=restart", "node=a", "defer=off_peak") == "agent-a"  # the base's deferrals, per node
    assert route("action=restart", "node=zz") == "human"  # a node nobody runs: for people
    assert route("action=restart") == "human"
    assert route("alertname=OrchestratorAgentDown", "node=a") == "human"  # no action: for people
    # The placement alerts name the chosen node: only that node's agent gets them.
    assert route("alertname=OrchestratorPlacementScaleUp", "action=scale_up", "component=worker", "node=b") == "agent-b"
    assert route("alertname=OrchestratorPlacementScaleDown", "action=scale_down", "component=worker",
                 "node=c") == "agent-c"
    # The heartbeat has no node: it goes to every agent (never to people), a node label or not.
    assert route("alertname=OrchestratorWatchdog", "heartbeat=true", "severity=none") == "agent-heartbeat"
    assert route("alertname=OrchestratorWatchdog", "heartbeat=true", "node=b") == "agent-heartbeat"
    assert route("alertname=OrchestratorAlertPipelineSilent", "severity=critical", "node=b") == "human"

    prom = yaml.safe_load((out / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "orchestrator-agent")
    assert job["scheme"] == "https" and (out / job["tls_config"]["ca_file"]).resolve() == tmp_path / "tls/ca.crt"
    assert (out / job["basic_auth"]["password_file"]).resolve() == tmp_path / "tls/metrics.password"
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093", "127.0.0.1:9094"]
    for rule_file in prom["rule_files"]:  # the shipped rules, from wherever the output lives
        assert list((out).glob(rule_file)), rule_file
    am = yaml.safe_load((out / "alertmanager.yml").read_text())
    hook = next(r for r in am["receivers"] if r["name"] == "agent-b")["webhook_configs"][0]
    assert hook["url"] == "https://127.0.0.1:9472/webhook/alertmanager"
    assert (out / hook["http_config"]["authorization"]["credentials_file"]).resolve() == tmp_path / "tokens/b.token"
    assert (out / hook["http_config"]["tls_config"]["cert_file"]).resolve() == tmp_path / "tls/client.crt"
    # One heartbeat webhook per node, each exactly that node's own receiver's (address, token, TLS).
    beats = next(r for r in am["receivers"] if r["name"] == "agent-heartbeat")["webhook_configs"]
    assert beats == [next(r for r in am["receivers"] if r["name"] == f"agent-{n}")["webhook_configs"][0]
                     for n in "abc"]
    assert am["route"]["routes"][0]["matchers"] == ['heartbeat="true"']
    assert "agent-webhook" not in (out / "alertmanager.yml").read_text()  # the base's receiver is gone
    assert json.loads((out / "orchestrator-agents.json").read_text()) == [
        {"targets": [f"127.0.0.1:{p}"], "labels": {"node": n}} for n, p in (("a", 9471), ("b", 9472), ("c", 9473))]

    # Generating again from the same list writes the same files.
    before = {p.name: p.read_text() for p in out.iterdir()}
    generate(tmp_path, nodes)
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_the_node_order_rule_file_ranks_nodes_by_name_and_breaks_the_placement_tie(tmp_path: Path) -> None:
    """orchestrator-nodes.yml: one constant series per node, its rank by name (not its place in the list);
    prometheus.yml loads it; with the shipped rules it makes the placement tie go to the first name."""
    promtool = require_binary("promtool")
    out = generate(tmp_path, node_list(tmp_path, {"c": 9473, "b": 9472, "a": 9471}))
    doc = yaml.safe_load((out / "orchestrator-nodes.yml").read_text())
    assert doc == {"groups": [{"name": "orchestrator-nodes.rules", "rules": [
        {"record": "orchestrator:node_order", "expr": str(i), "labels": {"node": n}} for i, n in enumerate("abc")]}]}
    check = subprocess.run([promtool, "check", "rules", str(out / "orchestrator-nodes.yml")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    prom = yaml.safe_load((out / "prometheus.yml").read_text())
    assert "orchestrator-nodes.yml" in prom["rule_files"]
    check = subprocess.run([promtool, "check", "config", str(out / "prometheus.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # The shipped tie case (a and b in the same headroom step), with the generated file instead of its
    # hand-written node order: the list says c, b, a, and a still wins (b would, ranked by list position).
    shipped = yaml.safe_load((ROOT / "rules" / "tests" / "orchestrator-placement_test.yml").read_text())
    [tie] = [t for t in shipped["tests"] if t["name"].startswith("equal headroom breaks on node order")]
    tie["input_series"] = [s for s in tie["input_series"] if not s["series"].startswith("orchestrator:node_order")]
    assert any(c["exp_alerts"] and c["exp_alerts"][0]["exp_labels"]["node"] == "a" for c in tie["alert_rule_test"])
    test = {"rule_files": [str(out / "orchestrator-nodes.yml")]
            + [str(ROOT / "rules" / "tests" / f) for f in shipped["rule_files"]],
            "evaluation_interval": shipped["evaluation_interval"],
            "group_eval_order": ["orchestrator-nodes.rules", *shipped["group_eval_order"]], "tests": [tie]}
    (tmp_path / "tie_test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    done = subprocess.run([promtool, "test", "rules", str(tmp_path / "tie_test.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("doc", "words"), [
    ({"nodes": [{"name": "a", "address": "h:1", "webhook_token_file": "t"},
                {"name": "a", "address": "h:2", "webhook_token_file": "t"}]}, "two nodes with the name 'a'"),
    ({"nodes": [{"name": "a", "address": "no-port"}], "webhook_token_file": "t"}, "nodes.0.address"),
    ({"nodes": [{"name": "a b", "address": "h:1"}], "webhook_token_file": "t"}, "nodes.0.name"),
    ({"nodes": [{"name": "a", "address": "h:1"}]}, "no webhook_token_file for a"),
    ({"nodes": [{"name": "a", "address": "h:1", "token": "t"}], "webhook_token_file": "t"}, "nodes.0.token"),
    ({"nodes": []}, "nodes"),
    ({"nodes": [{"name": "a", "address": "h:1"}], "webhook_token_file": "t", "tls": {"ca_file": "c",
                                                                                   "cert_file": "x"}},
     "cert_file and key_file go together"),
    ({"nodes": [{"name": "a", "address": "h:1"}], "webhook_token_file": "t", "alertmanagers": ["am"]},
     "alertmanagers"),
])
def test_a_bad_list_of_nodes_is_refused_with_where_and_nothing_is_written(
        tmp_path: Path, doc: dict[str, Any], words: str) -> None:
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(doc))
    done = agent("stack", "generate", "--nodes", str(tmp_path / "nodes.yaml"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_node_given_twice_as_a_key_is_refused_as_promtool_would(tmp_path: Path) -> None:
    (tmp_path / "nodes.yaml").write_text("nodes:\n- name: a\n  address: h:1\n  address: h:2\n"
                                         "webhook_token_file: t\n")
    done = agent("stack", "generate", "--nodes", str(tmp_path / "nodes.yaml"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "duplicate key 'address'" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_base_config_says_which_option_gives_it(tmp_path: Path) -> None:
    nodes = node_list(tmp_path, {"a": 9471})
    done = agent("stack", "generate", "--nodes", str(nodes), "--out", str(tmp_path / "out"),
                 "--prometheus-config", "base/prometheus.yml", cwd=tmp_path)
    assert done.returncode == 2 and "--prometheus-config" in done.stderr, done.stderr
    assert str(tmp_path / "base" / "prometheus.yml") in done.stderr, "the absolute path it tried"
    assert not (tmp_path / "out").exists()


def test_without_a_checkout_the_shipped_configs_are_the_base(tmp_path: Path) -> None:
    """Outside a checkout (an empty directory, no prometheus/ beside it) the base configs are the package's:
    the output keeps their relative paths as an exported stack's prometheus/ folder has them."""
    promtool, amtool = require_binary("promtool"), require_binary("amtool")
    nodes = node_list(tmp_path, {"a": 9471, "b": 9472})
    out = tmp_path / "out"
    done = agent("stack", "generate", "--nodes", "nodes.yaml", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"wrote out/{name}" for name in (
        "prometheus.yml", "alertmanager.yml", "orchestrator-agents.json", "orchestrator-nodes.yml")]
    prom_text = (out / "prometheus.yml").read_text()
    assert "from the prometheus/prometheus.yml this package ships" in prom_text.splitlines()[0]
    prom = yaml.safe_load(prom_text)
    assert prom["rule_files"] == ["../rules/*.yml", "orchestrator-nodes.yml"]
    assert prom["global"]["evaluation_interval"] == "15s"
    am = yaml.safe_load((out / "alertmanager.yml").read_text())
    hook = next(r for r in am["receivers"] if r["name"] == "agent-b")["webhook_configs"][0]
    assert (out / hook["http_config"]["authorization"]["credentials_file"]).resolve() == nodes.parent / "tokens/b.token"
    check = subprocess.run([amtool, "check-config", str(out / "alertmanager.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # With the rules beside it, as `agent stack export` puts them, Prometheus accepts it.
    assert agent("stack", "export", str(tmp_path), cwd=tmp_path).returncode == 0
    check = subprocess.run([promtool, "check", "config", "prometheus.yml"], capture_output=True, text=True, cwd=out)
    assert check.returncode == 0, check.stdout + check.stderr


def _recorder(got: list[tuple[str, dict[str, Any]]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append((self.headers.get("Authorization", ""), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class Hooks:
    """Three stand-in agents: each records the webhook deliveries it gets, with their Authorization header."""

    def __init__(self, names: list[str]) -> None:
        self.got: dict[str, list[tuple[str, dict[str, Any]]]] = {n: [] for n in names}
        self.servers: dict[str, ThreadingHTTPServer] = {}
        for name in names:
            self.servers[name] = ThreadingHTTPServer(("127.0.0.1", 0), _recorder(self.got[name]))
            threading.Thread(target=self.servers[name].serve_forever, daemon=True).start()

    def ports(self) -> dict[str, int]:
        return {n: s.server_address[1] for n, s in self.servers.items()}

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks(["a", "b", "c"])
    yield h
    h.close()


def test_a_real_alertmanager_delivers_a_nodes_action_to_that_node_only_and_prometheus_finds_every_node(
        tmp_path: Path, hooks: Hooks) -> None:
    out = generate(tmp_path, node_list(tmp_path, hooks.ports()))
    am_port, prom_port = free_port(), free_port()
    procs = [spawn_alertmanager(out / "alertmanager.yml", tmp_path / "am", am_port),
             spawn_prometheus(out / "prometheus.yml", tmp_path / "prom", prom_port)]
    try:
        am, prom = f"http://127.0.0.1:{am_port}", f"http://127.0.0.1:{prom_port}"

        def ready(url: str) -> bool:
            try:
                return httpx.get(url + "/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(lambda: ready(am) and ready(prom), 60, 0.2, "Alertmanager and Prometheus to be ready")
        alert = [{"labels": {"alertname": "OrchestratorComponentUnhealthy", "action": "restart", "node": "b",
                             "component": "web", "instance": "x"}}]
        assert httpx.post(am + "/api/v2/alerts", json=alert, timeout=5).status_code == 200
        # group_wait of the agent route is 5 s in the shipped config.
        wait_for(lambda: hooks.got["b"], 30, 0.1, "node b's agent to get the alert")
        auth, payload = hooks.got["b"][0]
        assert auth == "Bearer token-of-b-0123456789"
        assert [a["labels"]["node"] for a in payload["alerts"]] == ["b"]

        def discovered() -> dict[str, str] | None:
            targets = httpx.get(prom + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            found = {t["labels"]["node"]: t["labels"]["instance"] for t in targets
                     if t["labels"].get("job") == "orchestrator-agent"}
            return found if len(found) == 3 else None

        found = wait_for(discovered, 30, 0.2, "Prometheus to discover the three agents from the file_sd targets")
        assert found == {n: f"127.0.0.1:{p}" for n, p in hooks.ports().items()}
        assert not hooks.got["a"] and not hooks.got["c"], "another node's agent got node b's action"

        # The heartbeat reaches every node's agent, each with its own token (group_wait 5 s).
        beat = [{"labels": {"alertname": "OrchestratorWatchdog", "heartbeat": "true", "severity": "none"}}]
        assert httpx.post(am + "/api/v2/alerts", json=beat, timeout=5).status_code == 200

        def heartbeats(name: str) -> list[str]:
            return [auth for auth, body in hooks.got[name]
                    if any(a["labels"].get("heartbeat") == "true" for a in body["alerts"])]

        wait_for(lambda: all(heartbeats(n) for n in "abc"), 30, 0.1, "every node's agent to get the heartbeat")
        assert {n: heartbeats(n)[0] for n in "abc"} == {n: f"Bearer token-of-{n}-0123456789" for n in "abc"}
    finally:
        end_processes(procs)
