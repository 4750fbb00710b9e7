"""docker-compose.yml waits for health: every long-running service has a healthcheck that uses a tool its
image ships, every `depends_on` is gated on health (or on a one-shot job's success), and the checks'
commands really tell a healthy server from a missing one (run here against the same servers outside
Docker, since no Docker daemon is available to the tests). Schema conformance of the whole file is
tests/test_stack_static.py::test_compose_file_follows_the_compose_specification; here the vendored
schema is also shown to reject the gates' typical mistakes, so that test is not vacuous."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.helpers import free_port, http_ok, running_agent, wait_for
from tests.stackbin import require_binary

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"

# The health endpoint of each long-running service, and the executables its image is known to ship
# (prom/prometheus and prom/alertmanager are busybox images: wget, no curl; grafana/grafana installs
# curl, and its default Alpine base has busybox wget; the agent image is python:3.11-slim: no wget/curl).
HEALTH = {
    "agent": ("/-/healthy", {"python"}),
    "prometheus": ("/-/healthy", {"wget"}),
    "alertmanager": ("/-/healthy", {"wget"}),
    "grafana": ("/api/health", {"curl", "wget"}),
}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def one_shot(service: dict[str, Any]) -> bool:
    """A job that runs to completion (the token writer): it has nothing to be healthy about."""
    return service.get("restart") == "no"


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), f"short-form depends_on {deps!r} waits only for a started container"
    return deps


def check_url(service: str) -> str:
    """The URL a service's healthcheck command fetches."""
    urls = re.findall(r"https?://[^'\" ]+", " ".join(_argv(service)))
    assert len(urls) == 1, f"{service}: expected one URL in its healthcheck, found {urls}"
    return str(urls[0])


def _argv(service: str) -> list[str]:
    test = compose()["services"][service]["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD", f"{service}: use the exec form ['CMD', ...]: {test!r}"
    return list(test[1:])


def _duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(a + b for a, b in parts) == text, f"not a Compose duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- structure ------------------------------------------------------------------------------------

def test_every_long_running_service_has_a_healthcheck() -> None:
    services = compose()["services"]
    long_running = {name for name, svc in services.items() if not one_shot(svc)}
    assert long_running == set(HEALTH), "a new service needs an entry in HEALTH (and a healthcheck)"
    for name in long_running:
        check = services[name].get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        timeout, interval = _duration_seconds(check["timeout"]), _duration_seconds(check["interval"])
        assert 0 < timeout < interval, f"{name}: timeout {timeout}s must be shorter than interval {interval}s"
        assert int(check["retries"]) >= 1
        # A grace period, so a slow start (Grafana's migrations, Prometheus' WAL replay) is not "unhealthy".
        assert _duration_seconds(check["start_period"]) >= timeout


def test_every_depends_on_waits_for_health_or_a_finished_job() -> None:
    services = compose()["services"]
    edges = 0
    for name, svc in services.items():
        for dep, spec in depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            wanted = "service_completed_successfully" if one_shot(services[dep]) else "service_healthy"
            assert spec.get("condition") == wanted, f"{name} -> {dep}: condition must be {wanted}, is {spec}"
            if wanted == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which it never reports"
            edges += 1
    # The chain that matters: Grafana waits for Prometheus, which waits for the agent and Alertmanager.
    assert set(depends_on(services["grafana"])) == {"prometheus"}
    assert set(depends_on(services["prometheus"])) == {"agent", "alertmanager"}
    assert edges >= 5


def test_depends_on_has_no_cycle() -> None:
    services = compose()["services"]
    order: list[str] = []
    pending = {name: set(depends_on(svc)) for name, svc in services.items()}
    for _ in range(len(pending) + 1):  # bounded: one service leaves per round, or there is a cycle
        ready = sorted(n for n, deps in pending.items() if deps <= set(order))
        if not ready:
            break
        order += ready
        for n in ready:
            del pending[n]
    assert not pending, f"depends_on cycle among {sorted(pending)}"
    assert order.index("webhook-token") < order.index("agent") < order.index("prometheus") < order.index("grafana")


@pytest.mark.parametrize("service", sorted(HEALTH))
def test_healthcheck_uses_a_tool_of_its_image_on_its_own_port(service: str) -> None:
    svc = compose()["services"][service]
    path, tools = HEALTH[service]
    argv = _argv(service)
    assert argv[0] in tools, f"{service}'s image ({svc.get('image')}) has none of {argv[0]!r}; use one of {tools}"
    url = urlsplit(check_url(service))
    # Inside the container's own network namespace: loopback, the container port it publishes.
    assert url.hostname == "127.0.0.1" and url.path == path, url
    container_ports = {int(p.rsplit(":", 1)[1]) for p in svc["ports"]}
    assert url.port in container_ports, f"{service} checks port {url.port}, publishes {container_ports}"
    if argv[0] == "wget":
        # -q (no progress on the health log), -O (no file written in the image's working directory).
        assert argv[1] in ("-qO-", "-qO", "-q") and url.geturl() == argv[-1], argv
    if argv[0] == "curl":
        assert "-f" in argv[1] or "--fail" in argv, f"curl without --fail exits 0 on an HTTP error: {argv}"


def test_agent_healthcheck_is_the_dockerfiles() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    found = re.search(r"^HEALTHCHECK (.*?)\\\n\s+CMD (\[.*\])$", dockerfile, flags=re.MULTILINE)
    assert found, "the Dockerfile's HEALTHCHECK moved: keep docker-compose.yml's copy in step"
    assert json.loads(found.group(2)) == _argv("agent")
    options = dict(re.findall(r"--([\w-]+)=(\S+)", found.group(1)))
    check = compose()["services"]["agent"]["healthcheck"]
    assert {k.replace("-", "_"): v for k, v in options.items()} == {
        k: check[k] for k in ("interval", "timeout", "start_period")
    }


@pytest.mark.parametrize(("where", "bad"), [
    ("depends_on condition", {"condition": "service_ready"}),
    ("depends_on without condition", {"required": True}),
    ("healthcheck field", {"test": ["CMD", "true"], "intervall": "5s"}),
])
def test_schema_rejects_a_broken_gate(where: str, bad: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    doc = compose()
    assert not list(validator.iter_errors(doc))
    broken = copy.deepcopy(doc)
    if where.startswith("depends_on"):
        broken["services"]["grafana"]["depends_on"]["prometheus"] = bad
    else:
        broken["services"]["prometheus"]["healthcheck"] = bad
    assert list(validator.iter_errors(broken)), f"the schema accepted a broken {where}"


# --- the commands, run against the real servers ---------------------------------------------------

def run_check(service: str, port: int, executable: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `service`'s healthcheck command on this host, pointed at `port` instead of the container's."""
    argv = _argv(service)
    url = check_url(service)
    moved = urlsplit(url)._replace(netloc=f"127.0.0.1:{port}").geturl()
    argv = [a.replace(url, moved) for a in argv]
    if executable:
        argv[0] = executable
    return subprocess.run(argv, capture_output=True, timeout=30)


@pytest.fixture
def closed_port() -> int:
    return free_port()


def test_agent_healthcheck_command_tells_up_from_down(tmp_path: Path, closed_port: int) -> None:
    with running_agent(tmp_path, {"components": {}}) as agent:
        result = run_check("agent", agent.port, sys.executable)
        assert result.returncode == 0, result.stderr.decode()
    assert run_check("agent", closed_port, sys.executable).returncode != 0


@contextlib.contextmanager
def _server(argv: list[str], cwd: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    log = open(cwd / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=log)
    try:
        wait_for(lambda: proc.poll() is not None or http_ok(f"http://127.0.0.1:{port}/-/ready"), 30, 0.05,
                 f"{argv[0]} to get ready")
        assert proc.poll() is None, (cwd / "server.log").read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.mark.stack
@pytest.mark.parametrize("service", ["prometheus", "alertmanager"])
def test_prom_healthcheck_command_tells_up_from_down(service: str, tmp_path: Path, closed_port: int) -> None:
    # GNU wget here stands in for the image's busybox wget: both exit 0 only on a 2xx answer.
    require_binary("wget")
    port = free_port()
    if service == "prometheus":
        binary = require_binary("prometheus")
        (tmp_path / "p.yml").write_text("global: {scrape_interval: 1m}\n")
        argv = [binary, f"--config.file={tmp_path / 'p.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}"]
    else:
        binary = require_binary("prometheus-alertmanager", "alertmanager")
        (tmp_path / "a.yml").write_text("route: {receiver: r}\nreceivers: [{name: r}]\n")
        argv = [binary, f"--config.file={tmp_path / 'a.yml'}", f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    with _server(argv, tmp_path, port):
        result = run_check(service, port)
        assert result.returncode == 0, shlex.join(argv) + "\n" + result.stderr.decode()
    assert run_check(service, closed_port).returncode != 0
