"""Every route of the agent's HTTP app needs credentials, except the three public read-only ones.

The routes come from the app's own route table, so a route added later without a credential check
fails here, whatever its path.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.routing import BaseRoute, Mount, Route

from agent.config.loader import build_config
from tests.helpers import AgentProcess, app_routes, running_agent

# Health, readiness and metrics answer anyone (documented in docs/operations.md); nothing else may.
PUBLIC = frozenset({"/-/healthy", "/-/ready", "/metrics"})
PARAMS = {"name": "web", "verb": "restart"}


def endpoints(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path template, method) for every HTTP endpoint in a route table, mounts included."""
    for route in routes:
        if isinstance(route, Mount):
            yield from endpoints(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            for method in sorted(route.methods or ()):
                yield prefix + route.path, method
        else:
            raise AssertionError(f"a route of a kind this test does not know: {route!r}")


def concrete(template: str) -> str:
    """A template's path with each `{param}` (or `{param:convertor}`) filled in."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PARAMS.get(m.group(1), "x"), template)


def route_table(config: dict[str, Any], state_dir: Path) -> list[tuple[str, str]]:
    """The endpoints of the app the agent serves for this config (built here, not run)."""
    document = {**config, "agent": {**config["agent"], "state_dir": str(state_dir)}}
    return sorted(set(endpoints(app_routes(build_config(document)))))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("auth")
    config = {"components": {"web": {"command": ["sleep", "1000"]}}}
    with running_agent(tmp, config) as proc:
        yield proc


@pytest.fixture(scope="module")
def table(agent: AgentProcess, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    config = yaml.safe_load(agent.config_path.read_text())
    return route_table(config, tmp_path_factory.mktemp("routes-state"))


def test_the_table_holds_the_known_routes(table: list[tuple[str, str]]) -> None:
    paths = {path for path, _ in table}
    assert {"/webhook/alertmanager", "/api/v1/status", "/api/v1/components/{name}/{verb}", "/api/v1/autonomy",
            "/api/v1/emergency-stop", "/api/v1/history", "/api/v1/simulate"} <= paths
    assert paths >= PUBLIC


def test_every_non_public_route_answers_401_without_or_with_wrong_credentials(
        agent: AgentProcess, table: list[tuple[str, str]]) -> None:
    webhook_token = (agent.state_dir / "webhook.token").read_text().strip()
    control_token = (agent.state_dir / "control.token").read_text().strip()
    pids = agent.status()["web"]["pids"]
    for template, method in table:
        if template in PUBLIC:
            continue
        # The other route's token is a wrong credential too: each token opens only its own routes.
        other = control_token if template == "/webhook/alertmanager" else webhook_token
        for header in (None, "Bearer wrong-token-0123456789", f"Bearer {other}", basic("admin", "admin"),
                       "Bearer", "Token " + other):
            headers = {"Authorization": header} if header is not None else {}
            r = httpx.request(method, agent.url + concrete(template), headers=headers, json={}, timeout=10)
            assert r.status_code == 401, (method, template, header, r.status_code, r.text)
            assert "WWW-Authenticate" in r.headers, (method, template)
    # Nothing was done on the way: the replica was not restarted, autonomy is as configured.
    assert agent.status()["web"]["pids"] == pids
    assert agent.api("GET", "/api/v1/autonomy") == {"autonomy": "on", "emergency_stop": False}
