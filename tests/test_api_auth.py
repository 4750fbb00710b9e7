"""Every route of the agent's HTTP app needs credentials, except the three public read-only ones.

The routes come from the app's own route table, so a route added later without a credential check
fails here, whatever its path.
"""

from __future__ import annotations

import base64
import os
import re
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.routing import BaseRoute, Mount, Route

from agent.config.loader import build_config
from agent.http.credentials import Need
from agent.http.websecurity import OWN_CREDENTIALS
from tests.helpers import AgentProcess, app_routes, running_agent, wait_for

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


def need_of(route: BaseRoute) -> Need | None:
    """The credential a route's endpoint declares (agent/http/credentials.py `requires`, `public`)."""
    return getattr(getattr(route, "endpoint", None), "need", None)


# Endpoints that call `auth.authorize` themselves instead of through `requires`: the webhook (an ASGI app
# served past the router) and the status page (LOGIN with `?token=`, else SESSION).
OWN_CHECK = frozenset({"/webhook/alertmanager", "/"})


def test_every_route_declares_the_credential_it_takes(tmp_path: Path) -> None:
    config = {"agent": {"state_dir": str(tmp_path / "state")}, "components": {"web": {"command": ["sleep", "1"]}}}
    routes = app_routes(build_config(config))
    undeclared = [getattr(r, "path", r) for r in routes if need_of(r) is None]
    assert not undeclared, f"routes without a credential check: {undeclared}"
    paths = {r.path: need_of(r) for r in routes if isinstance(r, Route)}
    assert paths["/-/reexec"] is Need.CONTROL and paths["/-/reload"] is Need.CONTROL  # once read at start
    assert {p for p, n in paths.items() if n is Need.PUBLIC} == PUBLIC
    # A need written on by hand is a claim, not a check: only `requires` wraps the handler in the check.
    unchecked = [r.path for r in routes if isinstance(r, Route) and need_of(r) is not Need.PUBLIC
                 and not hasattr(r.endpoint, "__wrapped__") and r.path not in OWN_CHECK]
    assert not unchecked, f"routes whose need is not checked by `requires`: {unchecked}"


def _bcrypt(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def _secret(path: Path, text: str) -> None:
    path.write_text(text + "\n")
    path.chmod(0o600)


class Creds:
    """One generation of every credential: control and webhook tokens, a basic-auth password, a page session."""

    def __init__(self, control: str, webhook: str, password: str) -> None:
        self.control, self.webhook, self.password = control, webhook, password
        self.cookie = self.csrf = ""

    def write(self, tmp: Path) -> None:
        _secret(tmp / "control.token", self.control)
        _secret(tmp / "webhook.token", self.webhook)
        (tmp / "web.yml").write_text(yaml.safe_dump({"basic_auth_users": {"ops": _bcrypt(self.password)}}))

    def login(self, url: str) -> None:
        """Open a status page session with the control token (`/?token=`), as a browser would."""
        r = httpx.get(url + "/", params={"token": self.control}, auth=("ops", self.password), timeout=10)
        assert r.status_code == 303, r.text
        self.cookie = r.cookies["agent_session"]
        page = httpx.get(url + "/", cookies={"agent_session": self.cookie}, auth=("ops", self.password), timeout=10)
        found = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert page.status_code == 200 and found, page.text
        self.csrf = found.group(1)

    def request(self, url: str, method: str, template: str, need: Need, *, session: bool = False) -> httpx.Response:
        """One request to a route with this generation's credential for its need (and for the web config)."""
        path = concrete(template)
        headers: dict[str, str] = {}
        cookies: dict[str, str] = {}
        params: dict[str, str] = {}
        if not path.startswith(OWN_CREDENTIALS):
            headers["Authorization"] = basic("ops", self.password)
        if need is Need.WEBHOOK:
            headers["Authorization"] = f"Bearer {self.webhook}"
        elif need is Need.CONTROL and not session:
            headers["Authorization"] = f"Bearer {self.control}"
        elif need is Need.CONTROL:
            cookies["agent_session"] = self.cookie
            headers["X-CSRF-Token"] = self.csrf
        elif need is Need.SESSION:
            cookies["agent_session"] = self.cookie
        # A body each route takes without acting: an unknown verb, an empty payload, a dry-run reload.
        body: Any = {"dry_run": True} if template == "/-/reload" else {}
        if template == "/api/v1/components/{name}/{verb}":
            path = path.rsplit("/", 1)[0] + "/no-such-verb"
        return httpx.request(method, url + path, headers=headers, cookies=cookies, params=params,
                             json=body if method == "POST" else None, timeout=30, follow_redirects=False)


def answers(creds: Creds, url: str) -> bool:
    try:
        return creds.request(url, "GET", "/api/v1/status", Need.CONTROL).status_code == 200
    except httpx.TransportError:
        return False


def test_a_rotated_credential_is_refused_on_every_route_and_its_successor_accepted(tmp_path: Path) -> None:
    old = Creds("old-control-" + "a" * 20, "old-webhook-" + "b" * 20, "old password")
    new = Creds("new-control-" + "c" * 20, "new-webhook-" + "d" * 20, "new password")
    old.write(tmp_path)
    config = {"agent": {"control_token_file": str(tmp_path / "control.token"),
                        "web_config_file": str(tmp_path / "web.yml"),
                        "webhook": {"bearer_token_file": str(tmp_path / "webhook.token")}},
              "components": {"web": {"command": ["sleep", "1000"]}}}
    agent = AgentProcess(tmp_path, config)
    agent.basic = ("ops", old.password)  # /-/healthy is behind the web config's basic auth too
    try:
        agent.start()
        routes = app_routes(build_config(yaml.safe_load(agent.config_path.read_text())))
        table = [(r.path, m, need_of(r)) for r in routes if isinstance(r, Route) for m in sorted(r.methods or ())
                 if m != "HEAD"]
        old.login(agent.url)
        for template, method, need in table:  # the old generation is in force
            assert need is not None
            if template == "/-/reexec":
                continue  # accepted, it would re-execute the agent: once, at the end
            assert old.request(agent.url, method, template, need).status_code not in (401, 403), (method, template)

        new.write(tmp_path)
        os.kill(agent.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: new.request(agent.url, "GET", "/api/v1/status", Need.CONTROL).status_code == 200, 15,
                 what="the reload to put the new control token in force")
        new.login(agent.url)
        login = httpx.get(agent.url + "/", params={"token": old.control}, auth=("ops", new.password), timeout=10)
        assert login.status_code == 401 and "control token" in login.text
        # /-/reexec last: accepted, it replaces the agent's image (and the old token must stay refused after).
        table.sort(key=lambda row: row[0] == "/-/reexec")
        for template, method, need in table:
            assert need is not None
            refused = old.request(agent.url, method, template, need)
            wrong = "WWW-Authenticate" in refused.headers
            if need is Need.PUBLIC:  # no credential of its own: the web config's basic auth
                assert refused.status_code == 401 and wrong, (method, template, refused.status_code)
            else:
                assert refused.status_code == 401 and wrong, (method, template, refused.status_code, refused.text)
            if need is Need.CONTROL:  # the old page session ended with the old token
                cookie = old.request(agent.url, method, template, need, session=True)
                assert cookie.status_code == 401, (method, template, cookie.status_code)
            accepted = new.request(agent.url, method, template, need)
            assert accepted.status_code not in (401, 403), (method, template, accepted.status_code, accepted.text)
            if need is Need.CONTROL and template != "/-/reexec":  # accepted once: the agent re-executes
                cookie = new.request(agent.url, method, template, need, session=True)
                assert cookie.status_code not in (401, 403), (method, template, cookie.status_code)
        # The re-executed image reads the files again: still the new generation, never the old one.
        agent.basic = ("ops", new.password)
        wait_for(lambda: answers(new, agent.url), 30, what="the re-executed agent to answer")
        assert old.request(agent.url, "POST", "/-/reexec", Need.CONTROL).status_code == 401
    finally:
        agent.stop()
